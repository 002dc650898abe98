"""Launching across processes: cluster detection, launch scripts, SIGTERM, 2 processes = 1.

Every subprocess runs in its own session with a timeout; a test that fails kills the whole
process group, so a stuck jax.distributed start-up fails the test instead of hanging it.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_main import MICRO

from vlm_jax import parallel
from vlm_jax.data.tokenizer import load_tokenizer
from vlm_jax.preemption import PreemptionWatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_SH = os.path.join(ROOT, "launch", "local.sh")
SLURM_SBATCH = os.path.join(ROOT, "launch", "slurm.sbatch")
TPU_POD_SH = os.path.join(ROOT, "launch", "tpu_pod.sh")
CONFIG = "--config=configs/siglip.py:tiny"
# Few steps and no checkpoint but the last; one small eval checks evals across processes.
SHORT = [*MICRO, "--config.total_steps=6", "--config.checkpoint_every=100",
         "--config.evals.names=('retrieval',)"]


def _env(devices: int, **extra: str) -> dict[str, str]:
    """A subprocess environment with `devices` CPU devices per process.

    XLA's backend optimisation is turned down: these runs are dominated by compilation, and
    the runs compared with each other all compile with the same flags.
    """
    # Without the cluster variables of wherever pytest runs (a SLURM step would be joined).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "VLM_JAX_COORDINATOR", "VLM_JAX_NUM_PROCESSES",
                                "VLM_JAX_PROCESS_ID", "NUM_PROCESSES"))}
    env.update(JAX_NUM_CPU_DEVICES=str(devices), PYTHONUNBUFFERED="1", PYTHON=sys.executable,
               VLM_JAX_DISTRIBUTED_TIMEOUT="60")
    env.update(extra)
    env["XLA_FLAGS"] = " ".join(
        [f for f in env.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")]
        + ["--xla_backend_optimization_level=0"])
    return env


@contextlib.contextmanager
def _started(command, env):
    """Popen in a new session; on leaving, whatever of it still runs is killed."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _run(command, env, timeout) -> tuple[int, str]:
    with _started(command, env) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(map(str, command[:4]))}... still running after {timeout} s")
        return process.returncode, output


def _losses(workdir) -> dict[int, float]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def _checkpoint_steps(workdir) -> list[int]:
    return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))
                  if name.isdigit())


def _sigterm_after(process, workdir, steps: int, timeout: float, *,
                   ctrl_c: bool = False) -> str:
    """SIGTERM to `process` once `steps` steps are logged in `workdir`; returns its output.
    ctrl_c: SIGINT to its whole process group instead, as a terminal's Ctrl-C sends it."""
    deadline = time.time() + timeout
    while len(_losses(workdir)) < steps and process.poll() is None:
        if time.time() > deadline:
            pytest.fail(f"fewer than {steps} steps logged after {timeout} s")
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[0][-3000:]
    if ctrl_c:
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout} s after SIGTERM")


# --- which cluster a process belongs to --------------------------------------------------

SLURM_STEP = dict(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="node[001-002]", SLURM_NTASKS="2",
                  SLURM_PROCID="1", SLURM_LOCALID="0", SLURM_STEP_NUM_NODES="2")


@pytest.mark.parametrize("environ,on_tpu_vm,expected", [
    ({}, False, None),
    ({"VLM_JAX_COORDINATOR": "h:1"}, True, "explicit"),  # explicit wins over detection
    (SLURM_STEP, False, "slurm"),
    ({**SLURM_STEP, "SLURM_NTASKS": "1"}, False, None),  # one task: single process
    ({k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}, False, None),  # sbatch
    ({}, True, "tpu"),
])
def test_cluster_environment(environ, on_tpu_vm, expected):
    assert parallel.cluster_environment(environ, on_tpu_vm) == expected


@pytest.mark.parametrize("environ,expected", [
    ({}, None),
    ({"VLM_JAX_COORDINATOR": "localhost:5", "VLM_JAX_NUM_PROCESSES": "2",
      "VLM_JAX_PROCESS_ID": "1", "VLM_JAX_DISTRIBUTED_TIMEOUT": "7"},
     dict(coordinator_address="localhost:5", num_processes=2, process_id=1,
          initialization_timeout=7, heartbeat_timeout_seconds=7, shutdown_timeout_seconds=7)),
    # One task per node drives all the node's GPUs; one per GPU leaves jax its SLURM_LOCALID.
    ({**SLURM_STEP, "SLURM_GPUS_ON_NODE": "4"},
     dict(cluster_detection_method="slurm", local_device_ids=[0, 1, 2, 3])),
    ({**SLURM_STEP, "SLURM_NTASKS": "8", "SLURM_GPUS_ON_NODE": "4"},
     dict(cluster_detection_method="slurm", local_device_ids=None)),
])
def test_initialize_arguments(monkeypatch, environ, expected):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(parallel, "on_cloud_tpu_vm", lambda: False)
    parallel.maybe_initialize_distributed(environ)
    assert calls == ([] if expected is None else [expected])


def test_explicit_environment_must_be_complete(monkeypatch):
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: None)
    with pytest.raises(ValueError, match="VLM_JAX_PROCESS_ID must be set too"):
        parallel.maybe_initialize_distributed(
            {"VLM_JAX_COORDINATOR": "h:1", "VLM_JAX_NUM_PROCESSES": "2"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


JOIN = ("from vlm_jax import parallel; import jax; kind = parallel.maybe_initialize_distributed();"
        " print(kind, jax.process_index(), jax.process_count(), jax.device_count())")


@pytest.mark.multiprocess
def test_slurm_tasks_join_one_run():
    """Two tasks with the variables srun gives them (one node) become one jax run."""
    port = _free_port()
    outputs = []
    env = _env(2, SLURM_JOB_ID="7", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
               SLURM_STEP_NUM_NODES="1", JAX_COORDINATOR_PORT=str(port), JAX_PLATFORMS="cpu")
    commands = [[sys.executable, "-c", JOIN] for _ in range(2)]
    with contextlib.ExitStack() as stack:
        processes = [stack.enter_context(_started(
            command, {**env, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task)}))
            for task, command in enumerate(commands)]
        for process in processes:
            try:
                outputs.append(process.communicate(timeout=60)[0])
            except subprocess.TimeoutExpired:
                pytest.fail("jax.distributed did not start from the SLURM variables in 60 s")
    lines = [output.strip().splitlines()[-1] for output in outputs]
    assert lines == ["slurm 0 2 4", "slurm 1 2 4"], outputs


# --- launch scripts -----------------------------------------------------------------------

@pytest.mark.parametrize("script", [LOCAL_SH, TPU_POD_SH, SLURM_SBATCH])
def test_scripts_print_usage_without_arguments(script):
    result = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=30, env=dict(os.environ, SLURM_SUBMIT_DIR=ROOT))
    assert result.returncode == 2 and "Usage:" in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean():
    result = subprocess.run(["shellcheck", LOCAL_SH, TPU_POD_SH, SLURM_SBATCH],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def _fake_command(directory, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


# Odd characters on purpose: the arguments cross two shells (ssh's and the host's wrapper).
POD_ARGS = [CONFIG, "--workdir=/shared/run 1", "--config.evals.names=('retrieval',)",
            "--config.optim.lr=3e-3"]


def test_tpu_pod_runs_the_command_on_every_worker_and_stop_sends_sigterm(tmp_path):
    """A fake gcloud runs each ssh --command here, in a fake host home, as one worker would.

    The fake host's python records its arguments and waits for SIGTERM, then exits 0 the way
    vlm_jax.main does; `train` must pass the arguments intact and return that status.
    """
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    (home / "vlm_jax" / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    _fake_command(bin_dir, "gcloud", 'printf "%s\\n" "$*" >>"$FAKE_HOME/gcloud.log"\n'
                  'for arg in "$@"; do\n'
                  '  case $arg in --command=*) cmd=${arg#--command=};; esac\n'
                  'done\n'
                  'if [ -n "${cmd:-}" ]; then cd "$FAKE_HOME" && exec bash -c "$cmd"; fi\n')
    _fake_command(home / "vlm_jax" / ".venv" / "bin", "python",
                  'printf "%s\\n" "$@" >args.txt\necho "training on this host"\n'
                  'trap \'echo "stopped by SIGTERM"; exit 0\' TERM\n'
                  'while :; do sleep 0.1; done\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_HOME=str(home),
               TPU_NAME="pod", ZONE="us-central2-b")
    with _started([TPU_POD_SH, "train", *POD_ARGS], env) as train:
        deadline = time.time() + 30
        while not (home / "vlm_jax" / "train.pid").exists() and time.time() < deadline:
            time.sleep(0.05)
        again = subprocess.run([TPU_POD_SH, "train", *POD_ARGS], env=env, capture_output=True,
                               text=True, timeout=30)
        assert again.returncode != 0 and "a run is still going on" in again.stderr
        stop = subprocess.run([TPU_POD_SH, "stop"], env=env, capture_output=True, text=True,
                              timeout=30)
        assert stop.returncode == 0, stop.stderr
        output, _ = train.communicate(timeout=30)
    assert train.returncode == 0, output
    assert "training on this host" in output and "stopped by SIGTERM" in output
    args = (home / "vlm_jax" / "args.txt").read_text().splitlines()
    assert args == ["-m", "vlm_jax.main", *POD_ARGS]
    calls = (home / "gcloud.log").read_text().splitlines()
    assert calls[0].startswith("compute tpus tpu-vm ssh pod --worker=all --command=")
    assert calls[0].endswith("--zone=us-central2-b")
    assert calls[1].startswith("compute tpus tpu-vm ssh pod --worker=0 ")  # follows worker 0
    assert "--worker=all" in calls[3] and "kill -TERM" in calls[3]  # stop: every host


def test_tpu_pod_mounts_a_bucket_workdir_on_every_host(tmp_path):
    """gs://BUCKET/PATH becomes /mnt/gcs/BUCKET/PATH on the hosts, mounted there if needed."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    (home / "vlm_jax" / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    _fake_command(bin_dir, "gcloud", 'for arg in "$@"; do\n'
                  '  case $arg in --command=*) cmd=${arg#--command=};; esac\n'
                  'done\n'
                  'printf "%s\\n" "$cmd" >>"$FAKE_HOME/commands.log"\n'
                  'cd "$FAKE_HOME" && exec bash -c "$cmd"\n')
    _fake_command(bin_dir, "mountpoint", 'echo "$*" >>"$FAKE_HOME/mountpoint.log"\n')
    _fake_command(home / "vlm_jax" / ".venv" / "bin", "python", 'printf "%s\\n" "$@" >args.txt\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_HOME=str(home),
               TPU_NAME="pod", ZONE="z")
    result = subprocess.run([TPU_POD_SH, "train", CONFIG, "--workdir=gs://my-bucket/runs/a"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    args = (home / "vlm_jax" / "args.txt").read_text().splitlines()
    assert args == ["-m", "vlm_jax.main", CONFIG, "--workdir=/mnt/gcs/my-bucket/runs/a"]
    assert (home / "mountpoint.log").read_text().split() == ["-q", "/mnt/gcs/my-bucket"]
    first = (home / "commands.log").read_text()
    assert "gcsfuse --implicit-dirs my-bucket /mnt/gcs/my-bucket" in first


def test_tpu_pod_wants_a_folder_inside_the_bucket():
    env = dict(os.environ, TPU_NAME="pod", ZONE="z", PATH="/usr/bin:/bin")
    result = subprocess.run([TPU_POD_SH, "train", CONFIG, "--workdir=gs://bucket"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "name a folder inside the bucket" in result.stderr


@pytest.mark.parametrize("finished", [False, True])
def test_slurm_sbatch_sruns_main_and_requeues_a_stopped_run(tmp_path, finished):
    """A fake srun/scontrol record their arguments; a run without results.json is requeued."""
    bin_dir, workdir = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    workdir.mkdir()
    if finished:
        (workdir / "results.json").write_text("{}")
    for name in ("srun", "scontrol"):
        _fake_command(bin_dir, name, f'printf "%s\\n" "$@" >"{tmp_path}/{name}.args"\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=ROOT,
               SLURM_JOB_ID="99", PYTHON="/opt/python")
    args = [CONFIG, f"--workdir={workdir}", "--config.optim.lr=3e-3"]
    result = subprocess.run(["bash", SLURM_SBATCH, *args], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    srun = (tmp_path / "srun.args").read_text().splitlines()
    assert srun == ["--kill-on-bad-exit=1", "/opt/python", "-m", "vlm_jax.main", *args]
    requeued = (tmp_path / "scontrol.args").exists()
    assert requeued == (not finished)
    if requeued:
        assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "99"]


# --- preemption ---------------------------------------------------------------------------

def test_preemption_watch_notes_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    watch = PreemptionWatch()
    assert not watch.reached()
    os.kill(os.getpid(), signal.SIGTERM)  # handled by the watch: this process lives on
    assert watch.reached() and watch.reached()
    watch.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_saves_the_step_reached_exits_0_and_rerun_completes(tmp_path):
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "vlm_jax.main", CONFIG, f"--workdir={workdir}", *MICRO,
               "--config.total_steps=150", "--config.checkpoint_every=1000",
               "--config.evals.names=()"]
    with _started(command, _env(1)) as process:
        output = _sigterm_after(process, workdir, steps=3, timeout=120)
    assert process.returncode == 0, output[-3000:]
    reached = max(_losses(workdir))
    assert 3 <= reached < 150 and f"stopped by SIGTERM at step {reached}" in output
    assert _checkpoint_steps(workdir) == [reached]  # the only save: the one SIGTERM asked for
    assert not (workdir / "results.json").exists()

    code, output = _run(command, _env(1), timeout=120)
    assert code == 0, output[-3000:]
    assert f"resumed from {workdir / 'checkpoints'} at step {reached}" in output
    assert sorted(_losses(workdir)) == list(range(1, 151))
    assert json.loads((workdir / "results.json").read_text())["step"] == 150


def test_processes_share_one_data_position():
    """The checkpoint keeps process 0's iterator state for every process (loop.train): with
    the world source, each process's state is the same position, so process 1 restored from
    process 0's state continues with exactly its own next batch."""
    from vlm_jax import configlib
    from vlm_jax.data import pipeline

    config = configlib.load_config("configs/siglip.py:tiny")
    config.data.image_size = 16
    tokenizer = load_tokenizer(config.data)
    make = lambda process: pipeline.make_train_iterator(
        config.data, tokenizer, 16, seed=0, process_index=process, process_count=2)
    first, second = make(0), make(1)
    for _ in range(3):
        next(first), next(second)
    assert first.get_state() == second.get_state()
    resumed = make(1)
    resumed.set_state(first.get_state())
    want, got = next(second), next(resumed)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    for iterator in (first, second, resumed):
        iterator.close()


# --- two processes through launch/local.sh = one process over the same 8 devices -----------

@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """The reference: 1 process over 8 CPU devices (mesh data=8)."""
    workdir = tmp_path_factory.mktemp("one_process")
    code, output = _run([sys.executable, "-m", "vlm_jax.main", CONFIG, f"--workdir={workdir}",
                         *SHORT], _env(8), timeout=120)
    assert code == 0, output[-3000:]
    return workdir


def _two_processes(workdir, *extra):
    return [LOCAL_SH, CONFIG, f"--workdir={workdir}", *SHORT, *extra]


# Tolerance: both runs use the same global batches, mesh shape (data=8) and compiled step, but
# the gradient all-reduce runs over gloo across processes instead of in one process, so sums
# may associate differently: float32 rounding (~1e-7) that six steps of AdamW keep near 1e-6.
# 1e-5 relative catches any real difference (another batch, a missing shard, a wrong mean).
LOSS_RTOL = 1e-5


@pytest.mark.multiprocess
def test_two_process_run_logs_the_losses_of_one_process(tmp_path, one_process_run):
    workdir = tmp_path / "two_processes"
    code, output = _run(_two_processes(workdir), _env(4, NUM_PROCESSES="2"), timeout=180)
    assert code == 0, output[-3000:]
    assert "over 8 devices, 2 process(es)" in output
    want, got = _losses(one_process_run), _losses(workdir)
    assert sorted(got) == list(range(1, 7))
    assert list(got.values()) == pytest.approx(list(want.values()), rel=LOSS_RTOL)
    # Evals ran across both processes: the same recall, give or take one retrieved item
    # that a rounding-level difference in the embeddings could move.
    results = json.loads((workdir / "results.json").read_text())
    reference = json.loads((one_process_run / "results.json").read_text())
    assert results.keys() == reference.keys() and results["step"] == 6
    for name in reference:
        assert results[name] == pytest.approx(reference[name], abs=1 / 64 + 1e-9), name


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_sigterm_then_resume_logs_the_losses_of_one_process(tmp_path,
                                                                        one_process_run):
    """SIGTERM to local.sh reaches both processes; they agree on a step, save it and exit 0.

    The resumed run restores each process's data position from the one saved iterator state,
    so its losses still match the uninterrupted one-process run.
    """
    workdir = tmp_path / "two_processes"
    env = _env(4, NUM_PROCESSES="2")
    with _started(_two_processes(workdir), env) as process:
        output = _sigterm_after(process, workdir, steps=2, timeout=180)
    assert process.returncode == 0, output[-3000:]
    reached = max(_losses(workdir))
    assert reached < 6 and _checkpoint_steps(workdir) == [reached], output[-3000:]
    assert f"stopped by SIGTERM at step {reached}" in output

    code, output = _run(_two_processes(workdir), env, timeout=180)
    assert code == 0, output[-3000:]
    assert f"at step {reached}" in output
    want, got = _losses(one_process_run), _losses(workdir)
    assert sorted(got) == list(range(1, 7))
    assert list(got.values()) == pytest.approx(list(want.values()), rel=LOSS_RTOL)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_ctrl_c_saves_one_step_and_exits_0(tmp_path):
    """A terminal's Ctrl-C reaches local.sh and both trainers (one process group): they still
    agree on one step, save it and exit 0, as for SIGTERM."""
    workdir = tmp_path / "two_processes"
    command = _two_processes(workdir, "--config.total_steps=150", "--config.evals.names=()")
    with _started(command, _env(4, NUM_PROCESSES="2")) as process:
        output = _sigterm_after(process, workdir, steps=2, timeout=180, ctrl_c=True)
    assert process.returncode == 0, output[-3000:]
    reached = max(_losses(workdir))
    assert reached < 150 and _checkpoint_steps(workdir) == [reached], output[-3000:]
    assert f"at step {reached}" in output, output[-3000:]
    assert "Traceback" not in output + (workdir / "logs" / "process_1.log").read_text()


@pytest.mark.multiprocess
def test_failing_process_stops_the_run_with_its_status(tmp_path):
    """A process that fails (here both: a wrong config) ends local.sh with its status."""
    workdir = tmp_path / "run"
    env = _env(4, NUM_PROCESSES="2", VLM_JAX_DISTRIBUTED_TIMEOUT="20")
    command = [LOCAL_SH, "--config=configs/nope.py", f"--workdir={workdir}"]
    code, output = _run(command, env, timeout=60)
    assert code != 0 and "exited with status" in output and "not found" in output, output
