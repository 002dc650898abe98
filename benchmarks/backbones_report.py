"""The VLMs built on a pretrained LM side by side, and LLaVA on the real SmolLM2: train LLaVA
stages 1 -> 2 with SmolLM2-135M-Instruct as the LM within a CPU budget, evaluate it and the
families report's backbone runs (Frozen, BLIP-2 stage 2, MiniGPT-4, LLaVA, all on the world
LM and the same data) with the same evals, and write docs/backbones_results.md.

    python benchmarks/families_report.py     # first: the world-LM runs (runs/families)
    python benchmarks/backbones_report.py    # train the SmolLM2 runs, evaluate, write
    python benchmarks/backbones_report.py --micro --steps=2 --families=runs/families_micro \
        --out=/tmp/backbones.md              # smoke

The SmolLM2 runs live in --root (default runs/backbones_results) and train at their own steps
and batch (SMOLLM2_RUNS: sized so both stages together train in about 10 CPU minutes on
2 cores); --steps / --batch override them. The evals are smaller than the families report's
(EVAL_SIZES): a 135M-parameter LM scores every VQA candidate on the CPU.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import reports  # noqa: E402
from benchmarks.reports import cell, table  # noqa: E402
from vlm_jax import evals, optim, restore  # noqa: E402
from vlm_jax.data import world  # noqa: E402

# The families report's rows on the world LM: name -> (label, LM, what trains).
WORLD_LM_RUNS = {
    "frozen_tiny": ("Frozen", "world LM", "ViT + linear map to 2 prefix embeddings"),
    "blip2_2_tiny": ("BLIP-2 stage 2", "world LM", "Q-Former + projection"),
    "minigpt4_tiny": ("MiniGPT-4", "world LM", "one linear projection"),
    "llava_tiny": ("LLaVA", "world LM", "projector + LM"),
}
# SmolLM2 LLaVA: stage 1 (projector) then stage 2 (projector + LM) from stage 1's workdir;
# the image tower is the families report's SigLIP tiny. "{families}" / "{root}" are filled in.
SMOLLM2_RUNS = {
    "llava1_smollm2": ("configs/llava.py:tiny,stage=1,smollm2,image={families}/siglip_tiny,"
                       "steps=40,batch=8"),
    "llava_smollm2": "configs/llava.py:tiny,stage=2,smollm2,stage1={root}/llava1_smollm2,"
                     "steps=25,batch=8",
}
SMOLLM2_LABELS = {"llava1_smollm2": ("LLaVA stage 1", "SmolLM2-135M", "projector"),
                  "llava_smollm2": ("LLaVA", "SmolLM2-135M", "projector + LM")}
EVALS = ("vqa", "pope", "captioning")
EVAL_SIZES = dict(vqa_size=200, pope_size=100, captioning_size=100, vqa_shots=0, batch_size=32)


def specs(root: str, families: str) -> dict:
    return {name: spec.format(root=root, families=families)
            for name, spec in SMOLLM2_RUNS.items()}


def trained_parameters(run: restore.RestoredRun) -> tuple[int, int]:
    """(trained, total) parameter counts: `optim.param_rules` decides what is frozen."""
    groups = optim.param_groups(run.params, run.config.optim.get("param_rules", ()))
    sizes = [(int(np.prod(leaf.shape)), group) for leaf, group in zip(
        jax.tree_util.tree_leaves(run.params), jax.tree_util.tree_leaves(groups), strict=True)]
    return sum(n for n, group in sizes if group != optim.FREEZE), sum(n for n, _ in sizes)


def training_of(workdir: str) -> dict:
    """The run's steps x batch and the families report's / this report's timing file."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)["config"]
    timing = {"train_seconds": None}
    if os.path.exists(path := os.path.join(workdir, reports.TIMING_FILE)):
        with open(path) as f:
            timing = json.load(f)
    return {"steps": config["total_steps"], "batch": config["batch_size"], "done": "trained",
            "cpu_seconds": None, **timing}


def markdown(rows: dict, setup: dict) -> str:
    """docs/backbones_results.md from {name: (labels, facts, results)}."""
    kinds = world.QA_KINDS
    header = (["model", "LM", "trains", "trained / all parameters", "steps × batch",
               "training"] + [f"VQA {kind}" for kind in kinds]
              + ["VQA", "POPE F1 (adv.)", "CIDEr"])
    body = []
    for (label, lm, trains), facts, results in rows.values():
        body.append([label, lm, trains,
                     f"{facts['trained'] / 1e6:.3f} M / {facts['total'] / 1e6:.2f} M",
                     f"{facts['steps']} × {facts['batch']}", reports.describe_training(facts)]
                    + [cell(results, f"vqa/val/{kind}") for kind in kinds]
                    + [cell(results, "vqa/val/overall"), cell(results, "pope/adversarial/f1"),
                       cell(results, "captioning/val/cider")])
    pooled = {key: value for *_, results in rows.values() for key, value in results.items()}
    body.append(["blind prior", "", "", "", "", ""]
                + [cell(pooled, f"vqa/val/prior_{kind}") for kind in kinds]
                + [cell(pooled, "vqa/val/prior_overall"), "—", "—"])
    body.append(["chance", "", "", "", "", ""] + [
        f"{chance:.3f}" for chance in reports.vqa_chance(setup["image_size"]).values()]
        + [cell(pooled, "vqa/val/chance"), "—", "—"])
    return TEMPLATE.format(command=setup["command"], scores=table(header, body),
                           eval_sizes=", ".join(f"{k}={v}" for k, v in EVAL_SIZES.items()),
                           specs="\n".join(f"- `{name}`: `{spec}`"
                                           for name, spec in setup["specs"].items()))


TEMPLATE = """# Backbone VLMs side by side, and LLaVA on SmolLM2

Written by `benchmarks/backbones_report.py` (do not edit by hand; rerun it):

    {command}

The world-LM rows are the families report's runs (docs/families.md: each recipe's `:tiny`
config on the world LM `configs/lm.py:tiny` and the same world data); the SmolLM2 rows are
trained by this report:

{specs}

All rows are evaluated here with the same eval sets ({eval_sizes}; val split, seed 0): VQA
accuracy by question type (the likelihood-ranked answer among the kind's candidates), POPE F1
on adversarially chosen absent objects, and greedy-caption CIDEr-D against 5 references. The
blind prior answers each kind with its most frequent train answer, without the image.
Training time is wall clock (CPU seconds, all threads, in brackets) on the machine that ran the
report (2 CPU cores for the committed page); "trained elsewhere" is a run this report found
finished without a timing file.

{scores}
"""


def main(argv: list[str] | None = None) -> None:
    parser = reports.arg_parser(__doc__.splitlines()[0], "backbones_results")
    parser.add_argument("--families", default="runs/families",
                        help="the families report's runs folder (the world-LM rows)")
    args = parser.parse_args(argv)
    root = reports.root(args, "backbones_results")
    run_specs = specs(root, args.families)
    configs = {name: reports.run_config(spec, args.steps, reports.batch(args), args.micro)
               for name, spec in run_specs.items()}
    outcomes = reports.train_all(configs, run_specs, root, args.retrain)

    eval_config = configs["llava_smollm2"].evals
    eval_config.update(EVAL_SIZES if not args.micro else {"vqa_shots": 0})
    started = time.perf_counter()
    rows = {}
    workdirs = {name: os.path.join(args.families, name) for name in WORLD_LM_RUNS}
    workdirs |= {name: os.path.join(root, name) for name in SMOLLM2_RUNS}
    for name, workdir in workdirs.items():
        run = restore.restore_run(workdir)
        trained, total = trained_parameters(run)
        facts = {**training_of(workdir), **outcomes.get(name, {}), "trained": trained,
                 "total": total}
        labels = WORLD_LM_RUNS.get(name) or SMOLLM2_LABELS[name]
        print(f"== evaluating {name}", flush=True)
        rows[name] = (labels, facts, reports.evaluate(run, EVALS, eval_config))
    print(f"evaluated in {time.perf_counter() - started:.0f} s")
    print(evals.format_table({f"{name}:{key}": value for name, (_, _, result) in rows.items()
                              for key, value in result.items()}))

    command = "python benchmarks/backbones_report.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    with open(args.out, "w") as f:
        f.write(markdown(rows, {"command": command.strip(), "specs": run_specs,
                                "image_size": eval_config.image_size}))
    with open(os.path.join(root, "report_results.json"), "w") as f:
        json.dump({name: {"facts": facts, "results": results}
                   for name, (_, facts, results) in rows.items()}, f, indent=1, sort_keys=True)
    print(f"wrote {args.out} and {os.path.join(root, 'report_results.json')}")


if __name__ == "__main__":
    main()
