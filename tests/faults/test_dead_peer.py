"""A dead peer of a multi-process run is one vlm_jax line (vlm_jax/peers.py), not jax's abort."""

import os
import signal
import subprocess
import sys
import time

import pytest

from vlm_jax import peers
from vlm_jax.peers import DEAD_PEER_EXIT, PeerWatch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FakeStore:
    """The coordination service's key-value store, as the jax client shows it."""

    def __init__(self):
        self.values, self.reachable = {}, True

    def key_value_set(self, key, value, allow_overwrite=False):
        if not self.reachable:
            raise RuntimeError("UNAVAILABLE: failed to connect")
        assert allow_overwrite or key not in self.values
        self.values[key] = value

    def key_value_dir_get(self, prefix):
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]

    def key_value_try_get(self, key):
        if key not in self.values:
            raise RuntimeError(f"NOT_FOUND: {key}")
        return self.values[key]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _watches(store, clock, n=3, timeout=20.0):
    return [PeerWatch(store, k, n, timeout, clock=clock) for k in range(n)]


def test_a_peer_silent_for_half_the_timeout_is_named_by_every_process():
    store, clock = FakeStore(), Clock()
    coordinator, one, two = _watches(store, clock)
    for _ in range(5):  # all beating: no verdict, however long
        clock.now += 2.0
        assert [w.step() for w in (one, two, coordinator)] == [None, None, None]
    for _ in range(5):  # process 2 dies: 5 s of silence is exactly the patience, not beyond
        clock.now += 1.0
        assert one.step() is None and coordinator.step() is None
    clock.now += 1.0
    one.step()
    verdict = coordinator.step()
    assert verdict.startswith("process 2 of 3 stopped sending heartbeats 6 s ago"), verdict
    assert one.step() == verdict  # the others read process 0's verdict


def test_a_finished_peer_is_not_dead_and_a_lost_coordinator_is_named():
    store, clock = FakeStore(), Clock()
    coordinator, one, two = _watches(store, clock)
    for watch in (coordinator, one, two):
        watch.step()
    two.mark_finished()
    for _ in range(20):
        clock.now += 2.0
        assert one.step() is None and coordinator.step() is None
    store.reachable = False
    assert one.step().startswith("process 0 of 3 (the coordinator) cannot be reached")


def test_a_collective_that_lost_its_peer_is_one_line(monkeypatch):
    exits = []
    monkeypatch.setattr(peers, "_exit", exits.append)
    monkeypatch.setattr(peers, "_watch", object())  # a multi-process run
    peers.exit_if_peer_lost(RuntimeError("UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read "
                                         "error [127.0.0.1]:42384: Connection reset by peer"))
    peers.exit_if_peer_lost(ValueError("a bug in the model"))  # not a peer: left to raise
    assert len(exits) == 1 and exits[0].startswith("a collective with the other processes "
                                                   "failed (UNKNOWN: Gloo AllGather failed")
    monkeypatch.setattr(peers, "_watch", None)  # one process: every error is left to raise
    peers.exit_if_peer_lost(RuntimeError("Connection reset by peer"))
    assert len(exits) == 1


def _log_has_step(path, step):
    return os.path.exists(path) and f"step {step:6d}/" in open(path).read()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_kill_9_of_a_peer_ends_the_other_with_one_line(tmp_path):
    """Two processes joined without the launcher (as SLURM or TPU VMs start them); process 1
    is killed: process 0 exits DEAD_PEER_EXIT with the cause in one line, no C++ abort."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "VLM_JAX_"))}
    port = 20000 + os.getpid() % 20000
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", PYTHONUNBUFFERED="1",
               VLM_JAX_COORDINATOR=f"localhost:{port}", VLM_JAX_NUM_PROCESSES="2",
               VLM_JAX_DISTRIBUTED_TIMEOUT="20", PYTHONPATH=ROOT)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    command = [sys.executable, "-m", "vlm_jax.main", "--config=configs/siglip.py:tiny",
               f"--workdir={tmp_path / 'run'}", "--config.total_steps=400",
               "--config.batch_size=16", "--config.data.image_size=16", "--config.log_every=1",
               "--config.evals.names=()", "--config.checkpoint_every=1000"]
    logs = [tmp_path / f"process_{k}.log" for k in range(2)]
    processes = [subprocess.Popen(command, cwd=ROOT, env=dict(env, VLM_JAX_PROCESS_ID=str(k)),
                                  stdout=open(logs[k], "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True) for k in range(2)]
    try:
        deadline = time.time() + 240
        while not _log_has_step(logs[0], 3):
            assert time.time() < deadline and processes[0].poll() is None, logs[0].read_text()
            time.sleep(0.2)
        processes[1].kill()
        code = processes[0].wait(timeout=120)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    output = logs[0].read_text()
    assert code == DEAD_PEER_EXIT, output[-3000:]
    # Which comes first depends on timing: the watch's verdict, or a collective's lost socket.
    last = output.strip().splitlines()[-1]
    assert last.startswith(("error: process 1 of 2 stopped sending heartbeats",
                            "error: a collective with the other processes failed")), last
    assert last.endswith("restart every process with the same command to resume"), last
    assert "Check failure" not in output and "Fatal Python error" not in output
