"""What the report scripts share: train a config or reuse its finished run, evaluate the
restored checkpoint, and write Markdown tables.

A report trains each run once into its own workdir and evaluates the saved checkpoint, so
rerunning a report after a docs change costs only the evals; `--retrain` starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from vlm_jax import configlib, evals, loop, restore
from vlm_jax.data import world

# Eval sets small enough for a --micro smoke run of the whole report in a few minutes.
MICRO_EVALS = dict(batch_size=32, zeroshot_size=48, retrieval_size=32, probe_size=8,
                   captioning_size=8, vqa_size=16, pope_size=8, pope_stats_size=200,
                   genzeroshot_size=24)
TIMING_FILE = "report_timing.json"  # the wall time of the training, kept beside the run


def arg_parser(description: str, name: str) -> argparse.ArgumentParser:
    """The options every report takes; `name` is its runs folder (runs/<name>) and page
    (docs/<name>.md). After parsing, `root(args, name)` is the runs folder to use and
    `batch(args)` the batch."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", default="", help=f"runs folder (default runs/{name})")
    parser.add_argument("--out", default=f"docs/{name}.md", help="Markdown file to write")
    parser.add_argument("--retrain", action="store_true", help="delete and retrain every run")
    parser.add_argument("--steps", type=int, default=0, help="every run's steps (0: configs')")
    parser.add_argument("--batch", type=int, default=0, help="every run's batch (0: configs')")
    parser.add_argument("--micro", action="store_true",
                        help="smoke run: batch 16 (unless --batch), tiny eval sets")
    return parser


def root(args: argparse.Namespace, name: str) -> str:
    return args.root or (f"runs/{name}_micro" if args.micro else f"runs/{name}")


def batch(args: argparse.Namespace) -> int:
    """The batch every run uses: --batch, 16 for --micro, else 0 (each config's own)."""
    return args.batch or (16 if args.micro else 0)


def run_config(spec: str, steps: int, batch: int, micro: bool):
    """The config of one run: `spec` with the report's step/batch overrides (0: keep)."""
    args = [arg for arg in (f"steps={steps}" if steps else "", f"batch={batch}" if batch else "")
            if arg]
    separator = "," if ":" in spec else ":"
    config = configlib.load_config(spec + (separator + ",".join(args) if args else ""))
    config.evals.names = ()  # the report evaluates the restored checkpoint itself
    if micro:
        config.log_every = 1
        config.evals.update(MICRO_EVALS)
    return config


def train_or_reuse(config, workdir: str, retrain: bool) -> dict:
    """Train the run in `workdir` unless it is complete there.

    Returns {"done": "trained" | "reused", "train_seconds": wall time of the training and
    "cpu_seconds": the process's CPU time over it, all threads (when this report trained it,
    now or earlier; None for a run trained otherwise)}. CPU seconds are what a loaded machine
    inflates least: wall time there counts the other jobs too.
    """
    if retrain and os.path.exists(workdir):
        shutil.rmtree(workdir)
    timing_path = os.path.join(workdir, TIMING_FILE)
    if os.path.exists(os.path.join(workdir, "results.json")):
        with open(os.path.join(workdir, "config.json")) as f:
            recorded = json.load(f)["config"]
        trained = (recorded["total_steps"], recorded["batch_size"])
        if trained != (config.total_steps, config.batch_size):
            raise SystemExit(f"{workdir} holds a run of {trained[0]} steps at batch {trained[1]}, "
                             f"not {config.total_steps} at {config.batch_size}; pass --retrain "
                             "or another --root")
        timing = {"train_seconds": None}
        if os.path.exists(timing_path):
            with open(timing_path) as f:
                timing = json.load(f)
        return {"done": "reused", "cpu_seconds": None, **timing}
    started, cpu_started = time.perf_counter(), time.process_time()
    loop.train(config, workdir)
    timing = {"train_seconds": round(time.perf_counter() - started, 1),
              "cpu_seconds": round(time.process_time() - cpu_started, 1)}
    with open(timing_path, "w") as f:
        json.dump(timing, f)
    return {"done": "trained", **timing}


def train_all(configs: dict, specs: dict, root: str, retrain: bool) -> dict:
    """`train_or_reuse` every {name: config} into root/<name>, announcing each with its config
    spec (`specs[name]`); returns {name: outcome}."""
    outcomes = {}
    for name, config in configs.items():
        print(f"== {name}: {specs[name]}, {config.total_steps} steps at batch "
              f"{config.batch_size}", flush=True)
        outcomes[name] = train_or_reuse(config, os.path.join(root, name), retrain)
    return outcomes


def describe_training(outcome: dict) -> str:
    """"trained in 412 s (690 CPU s)" / "reused the finished run (trained in 412 s)"."""
    seconds, cpu = outcome["train_seconds"], outcome.get("cpu_seconds")
    took = f"trained in {seconds:.0f} s" if seconds is not None else "trained elsewhere"
    took += f" ({cpu:.0f} CPU s)" if cpu is not None else ""
    return took if outcome["done"] == "trained" else f"reused the finished run ({took})"


def evaluate(run: restore.RestoredRun, names: tuple[str, ...], eval_config) -> dict[str, float]:
    """The evals `names` on a restored run."""
    return evals.run_served(names, run.served(names), eval_config,
                            judge=restore.clipscore_judge(eval_config, names))


def vqa_chance(image_size: int) -> dict[str, float]:
    """Each VQA question kind's chance accuracy: 1 / its number of answer candidates."""
    return {kind: 1 / len(evals.vqa.answer_candidates(kind, image_size))
            for kind in world.QA_KINDS}


def cell(results: dict, key: str) -> str:
    """One table cell: the metric to 3 decimals, or — when the run lacks it."""
    return f"{results[key]:.3f}" if key in results else "—"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
