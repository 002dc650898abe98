"""Whole runs through `python -m vlm_jax.main` under faults: signals at start-up and mid-run,
a failed build after a real run, and kill -9 at random moments during checkpoint writes."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from test_main import MICRO, _env, _losses  # noqa: E402  the micro SigLIP of the CLI tests


def _command(workdir, *extra):
    return [sys.executable, "-m", "vlm_jax.main", "--config=configs/siglip.py:tiny",
            f"--workdir={workdir}", *MICRO, "--config.eval_every=0", *extra]


def _popen(command):
    return subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_line(process, text, timeout=240):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never printed: {''.join(seen)[-2000:]}")


def _train_steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if "train/loss" in line]


def test_sigterm_during_start_up_exits_0_with_a_message(tmp_path):
    process = _popen(_command(tmp_path / "run"))
    _wait_for_line(process, "trainer")  # the config is printed: start-up, before any step
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "stopped by SIGTERM before or after the train steps" in out


@pytest.mark.slow  # two CLI runs; test_main's refused resume also checks the record is kept
def test_failed_build_never_rewrites_the_record_of_a_real_run(tmp_path):
    result = subprocess.run(_command(tmp_path, "--config.total_steps=2"), cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    record = (tmp_path / "config.json").read_text()
    # Same model, so the resume check passes; the loss variant only fails when it is built.
    result = subprocess.run(_command(tmp_path, "--config.total_steps=4",
                                     "--config.loss.variant=nope"),
                            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert (tmp_path / "config.json").read_text() == record


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_like_sigterm(tmp_path):
    process = _popen(_command(tmp_path, "--config.total_steps=400",
                              "--config.checkpoint_every=1000"))
    _wait_for_line(process, "step      3/400")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "stopped by SIGINT at step" in out
    steps = _train_steps(tmp_path)
    assert 3 <= steps[-1] < 400 and os.path.isdir(tmp_path / "checkpoints" / str(steps[-1]))


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_then_resume_is_bitwise_equal(tmp_path):
    """Several runs, each killed at a random moment while a checkpoint is being written."""
    args = ["--config.total_steps=24", "--config.checkpoint_every=2"]
    straight = tmp_path / "straight"
    result = subprocess.run(_command(straight, *args), cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    want_losses = _losses(straight)
    rng = random.Random(0)
    for run in range(3):
        killed = tmp_path / f"killed{run}"
        for _ in range(2):  # two kills per run, each while a step's temporary folder exists
            process = subprocess.Popen(_command(killed, *args), cwd=ROOT, env=_env(),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline, writing_seen = time.time() + 240, 0
            target = rng.randint(1, 4)  # kill during the target-th write seen
            while time.time() < deadline and process.poll() is None:
                folder = killed / "checkpoints"
                if folder.is_dir() and any("tmp" in name for name in os.listdir(folder)):
                    writing_seen += 1
                    if writing_seen >= target:
                        time.sleep(rng.random() * 0.05)
                        break
                time.sleep(0.002)
            process.send_signal(signal.SIGKILL)
            process.wait()
        result = subprocess.run(_command(killed, *args), cwd=ROOT, env=_env(),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert _train_steps(killed) == list(range(1, 25))  # each step once
        assert _losses(killed) == want_losses
        got = ocp.StandardCheckpointer().restore(killed / "checkpoints" / "24" / "state")
        want = ocp.StandardCheckpointer().restore(straight / "checkpoints" / "24" / "state")
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_array_equal(a, b)


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc), so grain's workers however deep."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                kids = []
            found += kids
            frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_data_workers_die_with_a_killed_trainer(tmp_path):
    process = _popen(_command(tmp_path, "--config.total_steps=400", "--config.data.workers=2"))
    _wait_for_line(process, "step      2/400")
    workers = _children(process.pid)
    assert len(workers) >= 2, workers
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)]
