"""Ablation sweeps: one config, a grid or list of settings, one table and plot of the results.

    python launch/sweep.py --config=configs/siglip.py:tiny --workdir=runs/lr_sweep \
        --grid config.optim.lr=1e-3,3e-3 --grid batch=64,128 [-- --config.total_steps=300]

A setting `config.a.b=v` becomes the override `--config.a.b=v`; any other `key=v` is added to the
config arg (`configs/siglip.py:tiny,batch=64`). `--grid KEY=V1,V2,...` options multiply (every
combination is a run); `--run 'KEY=V KEY=V'` adds one run. Arguments after `--` go to every run.
Each run trains in WORKDIR/<its settings>; a run whose results.json exists is skipped, so a
sweep that was stopped picks up where it was. Then every run's results.json (and last train
loss) is gathered into WORKDIR/sweep.md, sweep.csv and sweep.png.

    --launcher local     one run after another on this machine (launch/local.sh; NUM_PROCESSES
                         and JAX_NUM_CPU_DEVICES pass through)
    --launcher tpu_pod   one run after another on a TPU pod (launch/tpu_pod.sh train; needs
                         TPU_NAME and ZONE)
    --launcher slurm     submit every run (sbatch launch/slurm.sbatch); gather later with
                         --gather-only
    --dry-run            print the commands, run nothing
    --gather-only        rebuild the table and plot from the runs' results
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = {
    "local": [os.path.join(ROOT, "launch", "local.sh")],
    "tpu_pod": [os.path.join(ROOT, "launch", "tpu_pod.sh"), "train"],
    "slurm": ["sbatch", os.path.join(ROOT, "launch", "slurm.sbatch")],
}
LOSS = "train/loss"


@dataclass(frozen=True)
class Run:
    """One point of the sweep: its settings (key -> value text) in the order given."""

    settings: tuple[tuple[str, str], ...]
    name: str = field(init=False)

    def __post_init__(self):
        # Directory-safe and readable: "optim.lr=1e-3,batch=64" ("/" as in B/16 becomes "-").
        name = ",".join(f"{key.removeprefix('config.')}={value}" for key, value in self.settings)
        object.__setattr__(self, "name", name.replace("/", "-") or "base")

    def config_spec(self, config: str) -> str:
        """The --config value: the sweep's config with this run's config-arg settings added."""
        args = [f"{key}={value}" for key, value in self.settings if not key.startswith("config.")]
        if not args:
            return config
        return config + ("," if ":" in config else ":") + ",".join(args)

    def overrides(self) -> list[str]:
        return [f"--{key}={value}" for key, value in self.settings if key.startswith("config.")]


def parse_setting(text: str) -> tuple[str, str]:
    key, has_value, value = text.partition("=")
    if not has_value or not key:
        raise ValueError(f"setting {text!r} must be KEY=VALUE (config.a.b=v or a config arg)")
    return key.strip(), value.strip()


def plan(grids: list[str], runs: list[str]) -> list[Run]:
    """Every combination of the --grid values (in order), then each --run."""
    axes = []
    for grid in grids:
        key, values = parse_setting(grid)
        axes.append([(key, value) for value in values.split(",") if value])
    planned = [Run(tuple(combo)) for combo in itertools.product(*axes)] if axes else []
    planned += [Run(tuple(parse_setting(item) for item in shlex.split(run))) for run in runs]
    if not planned:
        planned = [Run(())]
    names = [run.name for run in planned]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"the sweep repeats a run: {repeated}")
    return planned


def command(run: Run, launcher: str, config: str, workdir: str, extra: list[str]) -> list[str]:
    return [*LAUNCHERS[launcher], f"--config={run.config_spec(config)}",
            # The run's own settings last, so that they win over the shared `extra`.
            f"--workdir={os.path.join(workdir, run.name)}", *extra, *run.overrides()]


def launch(runs: list[Run], launcher: str, config: str, workdir: str,
           extra: list[str]) -> list[str]:
    """Runs (or submits) every run not yet done; returns the names of those that failed."""
    env = dict(os.environ)
    env.setdefault("PYTHON", sys.executable)  # local.sh: the interpreter running the sweep
    failed = []
    for index, run in enumerate(runs, 1):
        if os.path.exists(os.path.join(workdir, run.name, "results.json")):
            print(f"[{index}/{len(runs)}] {run.name}: done, skipped", flush=True)
            continue
        argv = command(run, launcher, config, workdir, extra)
        print(f"[{index}/{len(runs)}] {run.name}: {shlex.join(argv)}", flush=True)
        if subprocess.run(argv, env=env).returncode != 0:
            print(f"[{index}/{len(runs)}] {run.name}: FAILED", flush=True)
            failed.append(run.name)
    return failed


def read_run(run_dir: str) -> tuple[dict[str, float] | None, list[tuple[int, float]]]:
    """(results.json of the run or None, [(step, train loss)] from metrics.jsonl)."""
    results = None
    if os.path.exists(path := os.path.join(run_dir, "results.json")):
        with open(path) as f:
            results = json.load(f)
    curve = []
    if os.path.exists(path := os.path.join(run_dir, "metrics.jsonl")):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        curve = [(row["step"], row[LOSS]) for row in rows if LOSS in row]
    return results, curve


def gather(runs: list[Run], workdir: str, patterns: list[str]):
    """The table (header, rows) and loss curves; metrics chosen by fnmatch `patterns`."""
    read = {run.name: read_run(os.path.join(workdir, run.name)) for run in runs}
    metrics = []  # in the order of the first run that has them
    for results, curve in read.values():
        names = ([LOSS] if curve else []) + [k for k in (results or {}) if k != "step"]
        metrics += [m for m in names if m not in metrics
                    and any(fnmatch.fnmatchcase(m, p) for p in patterns)]
    keys = list(dict.fromkeys(key for run in runs for key, _ in run.settings))
    header = ["run", *keys, "status", "step", *metrics]
    rows = []
    for run in runs:
        results, curve = read[run.name]
        values = {**(results or {}), **({LOSS: curve[-1][1]} if curve else {})}
        settings = dict(run.settings)
        status = "done" if results else ("partial" if curve else "missing")
        step = results["step"] if results else (curve[-1][0] if curve else "")
        rows.append([run.name, *(settings.get(k, "") for k in keys), status, step,
                     *(values.get(m, "") for m in metrics)])
    curves = {name: curve for name, (_, curve) in read.items() if curve}
    return header, rows, metrics, curves


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def markdown(header: list[str], rows: list[list]) -> str:
    """Runs as columns, settings and metrics as rows: a sweep has few runs and many metrics."""
    lines = ["| " + " | ".join(["", *(str(row[0]) for row in rows)]) + " |",
             "|" + "---|" * (1 + len(rows))]
    for column, label in enumerate(header[1:], 1):
        lines.append("| " + " | ".join([label, *(_cell(row[column]) for row in rows)]) + " |")
    return "\n".join(lines) + "\n"


def plot(path: str, header: list[str], rows: list[list], metrics: list[str], curves) -> None:
    """Loss curves of every run, then a bar chart (a bar per run) for each metric that differs
    between runs; the table has the rest."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("the sweep plot needs matplotlib: pip install -e '.[sweep]'") from None
    names = [row[0] for row in rows]
    values = {m: [row[header.index(m)] if row[header.index(m)] != "" else math.nan
                  for row in rows] for m in metrics}
    if len(rows) > 1:
        metrics = [m for m in metrics if len({str(v) for v in values[m]}) > 1]
    columns = 4
    panels = 1 + len(metrics)
    figure, axes = plt.subplots(math.ceil(panels / columns), columns, squeeze=False,
                                figsize=(4 * columns, 3 * math.ceil(panels / columns)))
    axes = axes.ravel()
    colors = {name: f"C{index % 10}" for index, name in enumerate(names)}  # one per run
    for name, curve in curves.items():
        steps, losses = zip(*curve)
        axes[0].plot(steps, losses, label=name, color=colors[name])
    axes[0].set(title=LOSS, xlabel="step")
    if curves:
        axes[0].legend(fontsize="x-small")
    for ax, metric in zip(axes[1:], metrics):
        ax.bar(range(len(names)), values[metric], color=[colors[name] for name in names])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize="x-small")
        ax.set_title(metric if metric != LOSS else f"{LOSS} (last)", fontsize="small")
    for ax in axes[panels:]:
        ax.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def report(runs: list[Run], workdir: str, patterns: list[str]) -> str:
    """Writes sweep.md, sweep.csv and sweep.png under `workdir`; returns the Markdown table."""
    header, rows, metrics, curves = gather(runs, workdir, patterns)
    table = markdown(header, rows)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "sweep.md"), "w") as f:
        f.write(table)
    with open(os.path.join(workdir, "sweep.csv"), "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    plot(os.path.join(workdir, "sweep.png"), header, rows, metrics, curves)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="launch/sweep.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file and arg, as for vlm_jax.main")
    parser.add_argument("--workdir", required=True, help="the sweep's directory (a run per dir)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="values of one setting; several --grid make every combination")
    parser.add_argument("--run", action="append", default=[], metavar="'KEY=V KEY=V'",
                        help="one more run with these settings")
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), default="local")
    parser.add_argument("--metrics", default="*",
                        help="comma-separated fnmatch patterns of the metrics to tabulate/plot")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--gather-only", action="store_true", help="only rebuild the table")
    args, extra = parser.parse_known_args(argv)
    extra = [item for item in extra if item != "--"]
    if bad := [item for item in extra if not item.startswith("--config.")]:
        parser.error(f"arguments for every run must be --config.KEY=VALUE overrides, got {bad}")
    try:
        runs = plan(args.grid, args.run)
    except ValueError as error:
        parser.error(str(error))

    if args.dry_run:
        for run in runs:
            print(shlex.join(command(run, args.launcher, args.config, args.workdir, extra)))
        return 0
    failed = []
    if not args.gather_only:
        failed = launch(runs, args.launcher, args.config, args.workdir, extra)
        if args.launcher == "slurm":
            print("submitted; when the jobs end, gather with the same command + --gather-only")
            return 0
    print(report(runs, args.workdir, [p.strip() for p in args.metrics.split(",") if p.strip()]))
    print(f"table: {args.workdir}/sweep.md, sweep.csv; plot: {args.workdir}/sweep.png")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
