"""Train (or load) SigLIP tiny, Llip tiny and LiT with a frozen MiniLM text tower, evaluate them
the same way and write docs/contrastive.md: zero-shot, retrieval and compositional probes.

    python benchmarks/contrastive_report.py              # train what is missing, evaluate, write
    python benchmarks/contrastive_report.py --retrain    # start every run over
    python benchmarks/contrastive_report.py --micro --steps=2 --out=/tmp/contrastive.md  # smoke

Four runs, in --root (default runs/contrastive; --micro: runs/contrastive_micro):
siglip_tiny/ and llip_tiny/ at the tiny configs' steps, lit_minilm/ (`configs/lit.py:minilm`,
fewer steps: its frozen 22M-parameter text tower's forward dominates a CPU step) and
siglip_tiny_short/, SigLIP tiny at LiT's steps and batch, so every model has a SigLIP beside it
at equal steps. `--steps`/`--batch` set every run's (the short SigLIP run is then the same as
the other and skipped). A finished run is reused; one for other steps is refused (--retrain).
Training wall times are measured here and kept in each run (report_timing.json).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import reports  # noqa: E402
from vlm_jax import evals, restore  # noqa: E402
from vlm_jax.data import world  # noqa: E402

EVALS = ("zeroshot", "retrieval", "compositional")
# name -> (label, config). siglip_tiny_short takes lit_minilm's steps and batch.
RUNS = {
    "siglip_tiny": ("SigLIP tiny", "configs/siglip.py:tiny"),
    "llip_tiny": ("Llip tiny", "configs/llip.py:tiny"),
    "siglip_tiny_short": ("SigLIP tiny", "configs/siglip.py:tiny"),
    "lit_minilm": ("LiT MiniLM", "configs/lit.py:minilm"),
}
RETRIEVAL = [(split, direction) for split in ("val", "heldout") for direction in ("i2t", "t2i")]


def plan(steps: int, batch: int, micro: bool) -> dict:
    """{run name: config} of the runs to make, in table order."""
    configs = {name: reports.run_config(spec, steps, batch, micro)
               for name, (_, spec) in RUNS.items() if name != "siglip_tiny_short"}
    lit = configs["lit_minilm"]
    short = reports.run_config(RUNS["siglip_tiny_short"][1], lit.total_steps, lit.batch_size,
                               micro)
    siglip = configs["siglip_tiny"]
    ordered = {name: configs[name] for name in ("siglip_tiny", "llip_tiny")}
    if (short.total_steps, short.batch_size) != (siglip.total_steps, siglip.batch_size):
        ordered["siglip_tiny_short"] = short
    ordered["lit_minilm"] = lit
    return ordered


def row_label(name: str, config) -> str:
    return f"{RUNS[name][0]} ({config.total_steps} × {config.batch_size})"


def markdown(results: dict, configs: dict, outcomes: dict, setup: dict) -> str:
    """docs/contrastive.md from each run's results (missing metrics show as —)."""
    cell = reports.cell
    first = next(iter(results.values()))
    runs = reports.table(["run", "config", "steps × batch", "text tower", "training"], [
        [name, f"`{RUNS[name][1]}`", f"{config.total_steps} × {config.batch_size}",
         text_tower(config), reports.describe_training(outcomes[name])]
        for name, config in configs.items()])
    scores = reports.table(
        ["model (steps × batch)", "zero-shot seen", "zero-shot held-out"]
        + [f"{split} {direction} R@1" for split, direction in RETRIEVAL],
        [[row_label(name, configs[name]),
          cell(result, "zeroshot/single_object/top1"),
          cell(result, "zeroshot/heldout_single_object/top1")]
         + [cell(result, f"retrieval/{split}/{direction}_r1") for split, direction in RETRIEVAL]
         for name, result in results.items()]
        + [["chance", cell(first, "zeroshot/single_object/chance"),
            cell(first, "zeroshot/heldout_single_object/chance")]
           + [cell(first, f"retrieval/{split}/chance_r1") for split, _ in RETRIEVAL]])
    kinds = world.PROBE_KINDS
    probes = reports.table(
        ["model (steps × batch)"] + [f"{kind} acc2" for kind in kinds]
        + [f"{kind} group" for kind in kinds],
        [[row_label(name, configs[name])]
         + [cell(result, f"compositional/{kind}/acc2") for kind in kinds]
         + [cell(result, f"compositional/{kind}/group") for kind in kinds]
         for name, result in results.items()]
        + [["blind (no image)"] + [cell(first, f"compositional/{kind}/blind_acc2")
                                   for kind in kinds]
           + [cell(first, f"compositional/{kind}/blind_group") for kind in kinds]])
    return TEMPLATE.format(command=setup["command"], runs=runs, scores=scores, probes=probes,
                           eval_sizes=", ".join(f"{k}={v}" for k, v in setup["eval_sizes"].items()))


def text_tower(config) -> str:
    text = config.model.text
    kind = "MiniLM (BERT), frozen" if text.get("type", "") == "bert" else "from scratch"
    return f"{text.depth} × {text.width}, {kind}"


TEMPLATE = """# Contrastive family: SigLIP, Llip and LiT with a pretrained text tower

Written by `benchmarks/contrastive_report.py` (do not edit by hand; rerun it):

    {command}

{runs}

Every run trains on the synthetic world (32 px, batch of image-caption pairs) and is evaluated
from its saved checkpoint with the same eval sets ({eval_sizes}; val and held-out splits, seed
0), so the numbers are reproducible on a CPU. Training times are wall clock on the machine that
ran the report (2 CPU cores for the committed page).

- **Zero-shot** (`vlm_jax/evals/zeroshot.py`): top-1 over the 24 colour × shape classes seen in
  training ("seen") and the 28 pairs never captioned in training ("held-out"), with a prompt
  ensemble. Llip scores each class with the image vector its prompt conditions.
- **Retrieval** (`retrieval.py`): R@1 image→text and text→image among the eval set.
- **Probes** (`compositional.py`): Winoground-style pairs that swap a relation, an attribute
  binding or a count. acc2 is the two-way choice of the right caption; group needs text and
  image choices right for both pairs; the blind baseline sees no image (acc2 ≤ 0.5).
- **LiT MiniLM** trains the image tower and both projections against all-MiniLM-L6-v2, frozen
  (`configs/lit.py:minilm`, docs/pretrained.md); a frozen tower costs its forward only, which
  still dominates its step on a CPU, so it trains fewer steps and has SigLIP tiny at the same
  steps and batch beside it.

## Zero-shot and retrieval

{scores}

## Compositional probes

{probes}
"""


def main(argv: list[str] | None = None) -> None:
    args = reports.arg_parser(__doc__.splitlines()[0], "contrastive").parse_args(argv)
    root = reports.root(args, "contrastive")
    configs = plan(args.steps, reports.batch(args), args.micro)
    specs = {name: spec for name, (_, spec) in RUNS.items()}
    outcomes = reports.train_all(configs, specs, root, args.retrain)

    eval_config = configs["siglip_tiny"].evals
    started = time.perf_counter()
    results = {name: reports.evaluate(restore.restore_run(os.path.join(root, name)), EVALS,
                                      eval_config)
               for name in configs}
    print(f"evaluated in {time.perf_counter() - started:.0f} s")
    print(evals.format_table({f"{name}:{key}": value for name, result in results.items()
                              for key, value in result.items()}))

    command = "python benchmarks/contrastive_report.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    sizes = {key: eval_config[key] for key in ("zeroshot_size", "retrieval_size", "probe_size")}
    setup = {"command": command.strip(), "eval_sizes": sizes}
    with open(args.out, "w") as f:
        f.write(markdown(results, configs, outcomes, setup))
    with open(os.path.join(root, "report_results.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(f"wrote {args.out} and {os.path.join(root, 'report_results.json')}")


if __name__ == "__main__":
    main()
