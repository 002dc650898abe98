"""launch/sweep.py: planning runs from grids, two tiny CPU runs, and the gathered table/plot."""

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from test_main import MICRO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "launch", "sweep.py")
_spec = importlib.util.spec_from_file_location("sweep", SWEEP)
sweep = sys.modules["sweep"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(sweep)

# Three steps, one small eval: a few seconds per run after compilation.
TINY = [*MICRO, "--config.total_steps=3", "--config.checkpoint_every=100",
        "--config.evals.names=('retrieval',)"]


def _env():
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = " ".join(
        [f for f in env.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")]
        + ["--xla_backend_optimization_level=0"])  # compile time dominates these runs
    return env


def _sweep(*args, timeout=240):
    return subprocess.run([sys.executable, SWEEP, *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_plan_multiplies_grids_then_adds_runs():
    runs = sweep.plan(["config.optim.lr=1e-3,3e-3", "batch=64,128"],
                      ["config.model.embed_dim=16 variant=B/16"])
    assert [run.name for run in runs] == [
        "optim.lr=1e-3,batch=64", "optim.lr=1e-3,batch=128", "optim.lr=3e-3,batch=64",
        "optim.lr=3e-3,batch=128", "model.embed_dim=16,variant=B-16"]
    assert runs[1].config_spec("configs/siglip.py:tiny") == "configs/siglip.py:tiny,batch=128"
    assert runs[1].overrides() == ["--config.optim.lr=1e-3"]
    assert runs[4].config_spec("configs/siglip.py") == "configs/siglip.py:variant=B/16"
    # The run's own settings come last, so they win over the arguments shared by every run.
    argv = sweep.command(runs[0], "slurm", "c.py", "out", ["--config.optim.lr=9"])
    assert argv[0] == "sbatch" and argv[-2:] == ["--config.optim.lr=9", "--config.optim.lr=1e-3"]
    assert sweep.plan([], []) == [sweep.Run(())]


@pytest.mark.parametrize("args,message", [
    (["--grid", "config.optim.lr"], "must be KEY=VALUE"),
    (["--grid", "batch=1,2", "--run", "batch=2"], "repeats a run"),
    (["--", "--total_steps=3"], "must be --config.KEY=VALUE overrides"),
])
def test_bad_sweeps_are_refused(tmp_path, args, message):
    result = _sweep("--config=configs/siglip.py:tiny", f"--workdir={tmp_path}", *args,
                    timeout=30)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_dry_run_prints_the_commands(tmp_path):
    result = _sweep("--config=configs/siglip.py:tiny", f"--workdir={tmp_path}/s", "--dry-run",
                    "--grid", "config.optim.lr=1e-3,3e-3", "--launcher", "tpu_pod", "--",
                    "--config.total_steps=3", timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and not (tmp_path / "s").exists()
    assert lines[1].endswith("tpu_pod.sh train --config=configs/siglip.py:tiny "
                             f"--workdir={tmp_path}/s/optim.lr=3e-3 --config.total_steps=3 "
                             "--config.optim.lr=3e-3")


# Slow: trains two runs (the plan, refusals and dry run stay in the default run).
@pytest.mark.slow
def test_two_tiny_runs_are_gathered_into_table_csv_and_plot(tmp_path):
    workdir = tmp_path / "sweep"
    args = ["--config=configs/siglip.py:tiny", f"--workdir={workdir}",
            "--grid", "config.optim.lr=1e-3,3e-3", "--", *TINY]
    result = _sweep(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    # The CSV holds each run's own results.json and last logged loss, untouched.
    with open(workdir / "sweep.csv") as f:
        header, *rows = list(csv.reader(f))
    assert header[:5] == ["run", "config.optim.lr", "status", "step", "train/loss"]
    assert [row[:4] for row in rows] == [["optim.lr=1e-3", "1e-3", "done", "3"],
                                         ["optim.lr=3e-3", "3e-3", "done", "3"]]
    for row in rows:
        run_dir = workdir / row[0]
        results = json.loads((run_dir / "results.json").read_text())
        losses = [json.loads(line) for line in open(run_dir / "metrics.jsonl")
                  if "train/loss" in line]
        assert float(row[4]) == losses[-1]["train/loss"]
        assert header[5:] == [k for k in results if k != "step"]
        assert [float(v) for v in row[5:]] == [results[k] for k in header[5:]]
    assert rows[0][4] != rows[1][4]  # the learning rate made a difference

    # Markdown: a column per run, a row per setting and metric.
    table = (workdir / "sweep.md").read_text()
    assert table.splitlines()[0] == "|  | optim.lr=1e-3 | optim.lr=3e-3 |"
    assert "| config.optim.lr | 1e-3 | 3e-3 |" in table and "| step | 3 | 3 |" in table
    assert len(table.splitlines()) == 2 + len(header) - 1 and table in result.stdout
    png = (workdir / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

    # --gather-only rebuilds the same table; running again skips the finished runs.
    (workdir / "sweep.md").unlink()
    result = _sweep(*args[:4], "--gather-only", "--metrics=train/loss,retrieval/val/*")
    assert result.returncode == 0, result.stderr
    labels = [line.split(" | ")[0] for line in (workdir / "sweep.md").read_text().splitlines()]
    assert labels[-8:] == ["| train/loss", *(f"| retrieval/val/{name}" for name in (
        "chance_r1", "i2t_r1", "i2t_r10", "i2t_r5", "t2i_r1", "t2i_r10", "t2i_r5"))]
    result = _sweep(*args)
    assert result.returncode == 0 and result.stdout.count("done, skipped") == 2
