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


# Checkpoints every 20 of 60 steps: the kill lands between two of them.
LONGER = ["--config.total_steps=60", "--config.checkpoint_every=20"]


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
    result = _run(_command(straight, *LONGER))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((straight / "results.json").read_text())
    assert results["step"] == 60 and "zeroshot/single_object/top1" in results
    assert (straight / "config.json").exists() and any((straight / "tensorboard").iterdir())

    process = subprocess.Popen(_command(killed, *LONGER), cwd=ROOT, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (killed / "checkpoints" / "20").is_dir():  # orbax renames it there once complete
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(_losses(killed))
    assert 20 <= killed_at < 60, f"killed at step {killed_at}, not mid-training"

    result = _run(_command(killed, *LONGER))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout
    straight_losses = _losses(straight)
    assert sorted(straight_losses) == list(range(1, 61))
    assert _losses(killed) == straight_losses  # every step, bit for bit
    # ... and each once: a dict of losses would hide rows the resume should have dropped.
    with open(killed / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == list(range(1, 61))
    got, want = _final_params(killed, 60), _final_params(straight, 60)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_resuming_a_workdir_of_another_model_is_refused(tmp_path):
    result = _run(_command(tmp_path, "--config.total_steps=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    record = (tmp_path / "config.json").read_text()
    result = _run(_command(tmp_path, "--config.total_steps=2", "--config.model.embed_dim=16"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "holds a run of a different model" in lines[-1]
    assert (tmp_path / "config.json").read_text() == record  # the refusal rewrites nothing


def test_corrupt_array_record_is_skipped_and_counted_in_metrics(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    from vlm_jax.data.sources import encode_example
    from vlm_jax.data.world import World

    world = World("train", image_size=16)
    writer = ArrayRecordWriter(str(tmp_path / "shard-00000.array_record"), "group_size:1")
    for index in range(40):
        writer.write(b"not an example" if index == 5 else encode_example(world[index]))
    writer.close()
    result = _run(_command(tmp_path / "run", "--config.total_steps=2", "--config.eval_every=0",
                           "--config.data.source=array_record", "--config.data.shuffle=False",
                           f"--config.data.array_record_pattern={tmp_path}/*.array_record"))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if "train/loss" in line]
    assert [row["data/corrupt_records"] for row in rows] == [1, 1]
