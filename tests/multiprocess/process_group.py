"""Run a script as N jax.distributed processes on this machine; never hang the test run.

Each process gets its own CPU devices (JAX_NUM_CPU_DEVICES), the same coordinator on a free
local port and its process id on the command line, and writes one JSON result file. The group
is watched: when any process exits non-zero, the others are killed at once (a peer stuck in a
gloo collective would otherwise wait for its heartbeat timeout or forever); when the group
outlives its deadline, all are killed. Either way the caller gets every process's output.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ProcessGroupError(AssertionError):
    """A process of the group failed or the group ran past its deadline (a test failure)."""


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it; tiny race until the coordinator binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(devices_per_process: int) -> dict[str, str]:
    """This environment with `devices_per_process` CPU devices and the repository importable.

    tests/conftest.py forces 8 host devices through XLA_FLAGS; that flag is dropped so
    JAX_NUM_CPU_DEVICES decides. XLA's backend optimisation is turned down: these runs are
    dominated by compilation, and the numbers are compared with tolerances, not bitwise.
    """
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices_per_process), JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["XLA_FLAGS"] = " ".join(
        [flag for flag in env.get("XLA_FLAGS", "").split()
         if not flag.startswith("--xla_force_host_platform_device_count")]
        + ["--xla_backend_optimization_level=0"])
    return env


def run_process_group(script: Path, num_processes: int, devices_per_process: int,
                      workdir: Path, timeout_s: float, extra_args=()) -> list[dict]:
    """Run `script` as processes 0..num_processes-1 of one job; their JSON results, in order.

    The script is called as `script --coordinator HOST:PORT --num-processes N --process-id I
    --output FILE [extra_args]` and must write FILE. Raises ProcessGroupError (with each
    process's exit status and output tail) if any process fails, writes nothing, or the group
    is still running after `timeout_s`.
    """
    coordinator = f"127.0.0.1:{free_port()}"
    env = process_env(devices_per_process)
    outputs = [workdir / f"process_{i}.json" for i in range(num_processes)]
    logs = [workdir / f"process_{i}.log" for i in range(num_processes)]
    processes = []
    try:
        for i in range(num_processes):
            command = [sys.executable, str(script), "--coordinator", coordinator,
                       "--num-processes", str(num_processes), "--process-id", str(i),
                       "--output", str(outputs[i]), *map(str, extra_args)]
            with open(logs[i], "w") as log:
                # Own session: the kill below reaches anything the process started.
                processes.append(subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))
        deadline = time.monotonic() + timeout_s
        while True:
            codes = [p.poll() for p in processes]
            if any(code not in (None, 0) for code in codes):
                _kill(processes)
                raise ProcessGroupError(_report("a process failed", processes, logs))
            if all(code == 0 for code in codes):
                break
            if time.monotonic() > deadline:
                _kill(processes)
                raise ProcessGroupError(_report(f"still running after {timeout_s:.0f} s",
                                                processes, logs))
            time.sleep(0.1)
    finally:
        _kill(processes)
    missing = [str(path) for path in outputs if not path.exists()]
    if missing:
        raise ProcessGroupError(_report(f"no result in {missing}", processes, logs))
    return [json.loads(path.read_text()) for path in outputs]


def _kill(processes) -> None:
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _report(problem: str, processes, logs, tail_chars: int = 3000) -> str:
    parts = [f"process group: {problem}"]
    for i, (process, log) in enumerate(zip(processes, logs)):
        text = log.read_text() if log.exists() else ""
        parts.append(f"--- process {i}: exit status {process.returncode}, output tail:\n"
                     f"{text[-tail_chars:]}")
    return "\n".join(parts)
