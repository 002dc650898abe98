"""The command line end to end: config errors, a short run, and SIGKILL + resume."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A micro SigLIP on 16 px images: a few seconds per run after compilation.
MICRO = [
    "--config.total_steps=12", "--config.batch_size=16", "--config.log_every=1",
    "--config.checkpoint_every=4", "--config.optim.warmup_steps=2",
    "--config.data.image_size=16", "--config.data.text_length=24",
    "--config.model.embed_dim=32", "--config.model.image.patch_size=8",
    "--config.model.image.width=32", "--config.model.image.depth=1",
    "--config.model.image.mlp_dim=64", "--config.model.text.width=32",
    "--config.model.text.depth=1", "--config.model.text.mlp_dim=64",
    "--config.evals.batch_size=32", "--config.evals.zeroshot_size=64",
    "--config.evals.retrieval_size=64", "--config.evals.probe_size=16",
]


def _command(workdir, *extra, config="configs/siglip.py:tiny"):
    return [sys.executable, "-m", "vlm_jax.main", f"--config={config}",
            f"--workdir={workdir}", *MICRO, *extra]


def _env():
    # One CPU device: the SIGKILL comparison is about resumption, not layouts.
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "")
    return env


def _run(command, timeout=300):
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _final_params(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    return ocp.StandardCheckpointer().restore(path)["params"]


@pytest.mark.parametrize("args,expected", [
    (["--config.no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--config.total_steps=abc"], "expected a int"),
    (["--config.optim.warmup=3"], "unknown config key 'optim.warmup'"),
])
def test_bad_override_is_one_line_error(tmp_path, args, expected):
    result = _run(_command(tmp_path / "run", *args), timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines


@pytest.mark.parametrize("config,expected", [
    ("configs/siglip.py:tiny,bogus=1", "unknown config arg 'bogus'"),
    ("configs/siglip.py:batch=many", "config arg batch='many': expected a int"),
    ("configs/nope.py", "config file 'configs/nope.py' not found"),
])
def test_bad_config_arg_is_one_line_error(tmp_path, config, expected):
    result = _run(_command(tmp_path / "run", config=config), timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and expected in lines[0], lines


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
    """Bitwise on CPU: the same compiled step on the same state and data gives the same bits."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = _run(_command(straight))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((straight / "results.json").read_text())
    assert results["step"] == 12 and "zeroshot/single_object/top1" in results
    assert (straight / "config.json").exists() and any((straight / "tensorboard").iterdir())

    process = subprocess.Popen(_command(killed), cwd=ROOT, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (killed / "metrics.jsonl").exists() and max(_losses(killed), default=0) >= 6:
            break  # past the step-4 checkpoint and mid-way to the next
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists()

    result = _run(_command(killed))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout
    assert _losses(killed) == _losses(straight)  # every step, bit for bit
    got, want = _final_params(killed, 12), _final_params(straight, 12)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_resuming_a_workdir_of_another_model_is_refused(tmp_path):
    result = _run(_command(tmp_path, "--config.total_steps=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    result = _run(_command(tmp_path, "--config.total_steps=2", "--config.model.embed_dim=16"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "holds a run of a different model" in lines[-1]
