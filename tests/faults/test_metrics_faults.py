"""metrics.jsonl on resume: a torn last line is dropped, rows after the resume step go."""

import json

from vlm_jax.metrics import MetricWriter


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_torn_last_line_is_dropped_on_resume(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in (1, 2))
                    + '{"step": 3, "train/lo')  # killed mid-write
    writer = MetricWriter(str(tmp_path), resume_step=2)
    writer.write(3, {"train/loss": 0.5})
    writer.close()
    assert _steps(path) == [1, 2, 3]
    assert "torn last line" in capsys.readouterr().out


def test_rows_after_the_resume_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in range(1, 8)))
    writer = MetricWriter(str(tmp_path), resume_step=4)
    for step in range(5, 9):
        writer.write(step, {"train/loss": 0.5})
    writer.close()
    assert _steps(path) == list(range(1, 9))  # each step once
