"""Metrics: a JSON object per logged step in metrics.jsonl, TensorBoard events, a console line."""

from __future__ import annotations

import json
import math
import os
import time

import jax


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and `workdir/tensorboard` (process 0 only).

    On resume from `resume_step`, rows logged after that step by the interrupted run are dropped,
    so the file reads as one uninterrupted run; so is a last line torn by a kill mid-write.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                rows = [line for line in f if line.strip()]
            kept = [line for line in _whole_rows(rows, self.path)
                    if json.loads(line).get("step", 0) <= resume_step]
            with open(self.path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(self.path + ".tmp", self.path)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # TensorBoard is optional; JSONL is the record
            self._tb = None

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, float(value), int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _whole_rows(lines: list[str], path: str) -> list[str]:
    """`lines` less a last one cut short by a kill (appends are whole lines until then)."""
    if lines:
        try:
            json.loads(lines[-1])
        except ValueError:
            print(f"warning: dropped a torn last line of {path} (the run was killed while "
                  "writing it)", flush=True)
            lines = lines[:-1]
    return [line if line.endswith("\n") else line + "\n" for line in lines]


class Progress:
    """Console progress line: step, loss, examples/s, ETA (timed between log points)."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def line(self, step: int, loss: float) -> str:
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        seconds_per_step = (now - self._last_time) / steps
        self._last_step, self._last_time = step, now
        eta = seconds_per_step * (self.total_steps - step)
        return (
            f"step {step:>6}/{self.total_steps}  loss {loss:.4f}  "
            f"{self.batch_size / seconds_per_step:8.1f} examples/s  ETA {_clock(eta)}"
        )


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"
