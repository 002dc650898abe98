"""Shared by the report tests: run a report script end to end, as a user would."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def run_micro_report(tmp_path):
    """run(script, *args) -> (its Markdown page, its report_results.json): `--micro --steps=2`
    on one CPU device, the runs under tmp_path/runs given as a relative path."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "")
    out, runs = tmp_path / "report.md", tmp_path / "runs"

    def run(script: str, *args: str):
        command = [sys.executable, f"benchmarks/{script}", "--micro", "--steps=2",
                   f"--root={os.path.relpath(runs, ROOT)}", f"--out={out}", *args]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        return out.read_text(), json.loads((runs / "report_results.json").read_text())

    return run
