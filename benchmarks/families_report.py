"""Train (or load) every family's `:tiny` run on the world, evaluate each with the same eval
sets, and write docs/families.md: one table of what each family can do, "—" where it cannot.

    python benchmarks/families_report.py              # train what is missing, evaluate, write
    python benchmarks/families_report.py --retrain    # start every run over
    python benchmarks/families_report.py --micro --steps=2 --out=/tmp/families.md  # smoke

Runs live in --root (default runs/families; --micro: runs/families_micro), one folder per row of
FAMILIES. The contrastive and CoCa rows train at EQUAL_STEPS x EQUAL_BATCH, so the first-built
families compare at equal compute; every later row trains its `:tiny` config as it stands (the
run its time bar is measured on; the runs table gives its steps and batch). --steps / --batch
override every row. Runs that rows start from (the world LM) are trained first into the same
root (PREREQUISITES). A finished run is reused; one for other steps is refused (--retrain).
Each run is evaluated from its saved checkpoint with the evals its trainer can serve: embedding
evals (zero-shot, retrieval, probes) through a scorer, generative evals (captioning, VQA, POPE)
through a captioner, ITM evals through a matcher. CLIPScore uses the SigLIP run as the judge.
A new family adds its row to FAMILIES.
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
from vlm_jax import evals, restore  # noqa: E402
from vlm_jax.data import world  # noqa: E402

EQUAL_STEPS, EQUAL_BATCH = 300, 256  # the rows in EQUAL_COMPUTE, unless --steps / --batch
EQUAL_COMPUTE = ("clip_tiny", "siglip_tiny", "llip_tiny", "coca_tiny")
# Runs other rows start from: name -> config, trained into the root before the rows.
PREREQUISITES = {"lm_tiny": "configs/lm.py:tiny", "vq_tiny": "configs/vq.py:tiny"}
# run name -> (label, family, config); "{root}" is the runs folder. Order is the table's.
FAMILIES = {
    "clip_tiny": ("CLIP", "contrastive", "configs/clip.py:tiny"),
    "siglip_tiny": ("SigLIP", "contrastive", "configs/siglip.py:tiny"),
    "llip_tiny": ("Llip", "contrastive", "configs/llip.py:tiny"),
    "coca_tiny": ("CoCa", "generative", "configs/coca.py:tiny"),
    "flava_tiny": ("FLAVA", "masking", "configs/flava.py:tiny"),
    # No contrastive term: its scorer embeddings are untrained, so its embedding evals sit at
    # chance; it is scored through its ITM head (the matcher) where the report runs ITM evals.
    "visualbert_tiny": ("Single stream", "masking", "configs/visualbert.py:tiny"),
    # On the world LM (configs/lm.py:tiny, trained into runs/lm_tiny as docs/backbones.md says)
    # and, for LLaVA, SigLIP's tower of this report; stage 2 starts from stage 1's row.
    "frozen_tiny": ("Frozen", "pretrained backbone", "configs/frozen.py:tiny,lm={root}/lm_tiny"),
    "llava1_tiny": ("LLaVA stage 1", "pretrained backbone",
                    "configs/llava.py:tiny,stage=1,image={root}/siglip_tiny,"
                    "lm={root}/lm_tiny"),
    "llava_tiny": ("LLaVA", "pretrained backbone",
                   "configs/llava.py:tiny,stage=2,stage1={root}/llava1_tiny"),
    "maskvlm_tiny": ("MaskVLM", "masking", "configs/maskvlm.py:tiny"),
    # Its ViT is frozen at random init here (no init_from): the row shows the Q-Former's
    # mechanics at equal steps, not BLIP-2 on a trained encoder.
    "blip2_tiny": ("BLIP-2 stage 1", "pretrained backbone", "configs/blip2.py:tiny"),
    # On the row above (its image tower and Q-Former) and the world LM; MiniGPT-4's stage 2
    # starts from its stage 1 row.
    "blip2_2_tiny": ("BLIP-2 stage 2", "pretrained backbone",
                     "configs/blip2.py:tiny,stage=2,stage1={root}/blip2_tiny,"
                     "lm={root}/lm_tiny"),
    "minigpt4_1_tiny": ("MiniGPT-4 stage 1", "pretrained backbone",
                        "configs/minigpt4.py:tiny,stage=1,blip2={root}/blip2_tiny,"
                        "lm={root}/lm_tiny"),
    "minigpt4_tiny": ("MiniGPT-4", "pretrained backbone",
                      "configs/minigpt4.py:tiny,stage=2,stage1={root}/minigpt4_1_tiny"),
    # Early fusion on the VQ tokenizer's codes (the vq_tiny prerequisite).
    "chameleon_tiny": ("Chameleon", "generative (early fusion)",
                       "configs/chameleon.py:tiny,vq={root}/vq_tiny"),
}
# Evals a row's model serves but never trains for: the single stream has no contrastive and no
# MIM term, so its scorer embeddings (and the ITM candidates they pick) and its MIM head are
# its initial weights. Their numbers would be noise, so the row shows —.
UNTRAINED = {"visualbert_tiny": ("zeroshot", "retrieval", "compositional", "itm_retrieval",
                                 "reconstruction")}
JUDGE = "siglip_tiny"  # scores other runs' captions (CLIPScore)
VQA_SHOTS = 2  # k-shot VQA beside 0-shot, for captioners that take interleaved prompts
EMBEDDING_EVALS = ("zeroshot", "retrieval", "compositional")
GENERATIVE_EVALS = ("captioning", "vqa", "pope")
MATCHER_EVALS = ("itm_retrieval", "itm_compositional")
# (column, metric key): the table's score columns.
COLUMNS = (
    ("zero-shot", "zeroshot/single_object/top1"),
    ("held-out pairs", "zeroshot/heldout_single_object/top1"),
    ("R@1 i2t", "retrieval/val/i2t_r1"),
    ("R@1 t2i", "retrieval/val/t2i_r1"),
    *((f"{kind} acc2", f"compositional/{kind}/acc2") for kind in world.PROBE_KINDS),
    ("ITM R@1 i2t", "itm_retrieval/val/i2t_r1"),
    *((f"{kind} ITM acc2", f"itm_compositional/{kind}/acc2") for kind in world.PROBE_KINDS),
    ("CIDEr", "captioning/val/cider"),
    ("VQA", "vqa/val/overall"),
    (f"VQA {VQA_SHOTS}-shot", f"vqa/val/{VQA_SHOTS}shot_overall"),
    ("POPE F1 (adv.)", "pope/adversarial/f1"),
    ("masked-patch MSE", "reconstruction/val/masked_mse"),
)


def specs(root: str) -> dict:
    """{run name: config spec} of the prerequisites, then the rows, with `root` filled in."""
    return {**PREREQUISITES, **{name: spec.format(root=root)
                                for name, (_, _, spec) in FAMILIES.items()}}


def plan(specs: dict, steps: int, batch: int, micro: bool) -> dict:
    """{run name: config}: EQUAL_COMPUTE rows at EQUAL_STEPS x EQUAL_BATCH, the rest as their
    configs say; --steps / --batch (and --micro's batch 16) override every run. A config that
    reads a prerequisite run (Chameleon's VQ sizes) loads only once that run exists."""
    batch = batch or (16 if micro else 0)
    return {name: reports.run_config(
                spec, steps or (EQUAL_STEPS if name in EQUAL_COMPUTE else 0),
                batch or (EQUAL_BATCH if name in EQUAL_COMPUTE else 0), micro)
            for name, spec in specs.items()}


def evaluate(name: str, run: restore.RestoredRun, eval_config) -> dict[str, float]:
    """The evals this run's trainer can serve (its CAPABILITIES) less UNTRAINED[name]; the rest
    stay missing (— in the table)."""
    names = EMBEDDING_EVALS if "scorer" in run.trainer.CAPABILITIES else ()
    if "captioner" in run.trainer.CAPABILITIES:
        names += GENERATIVE_EVALS
    if "matcher" in run.trainer.CAPABILITIES:
        names += MATCHER_EVALS
    # FLAVA rebuilds pixels only when its MIM target is pixels (tiny: k-means codes).
    if "reconstructor" in run.trainer.CAPABILITIES and run.config.get(
            "mim", {"target": "pixels"})["target"] == "pixels":
        names += ("reconstruction",)
        eval_config = eval_config.copy_and_resolve_references()
        eval_config.output_dir = run.config.workdir  # its picture lands in the run's workdir
    names = tuple(n for n in names if n not in UNTRAINED.get(name, ()))
    return reports.evaluate(run, names, eval_config)


def trained_results(name: str, result: dict[str, float]) -> dict[str, float]:
    """`result` without the metrics of UNTRAINED[name] (for results saved before a change)."""
    return {key: value for key, value in result.items()
            if key.split("/")[0] not in UNTRAINED.get(name, ())}


def parameter_count(run: restore.RestoredRun) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(run.params))


def markdown(results: dict, configs: dict, parameters: dict, setup: dict) -> str:
    """docs/families.md from each row's results and parameter count, and every run's config
    and training outcome (`setup`)."""
    header = ["model", "family", "parameters"] + [name for name, _ in COLUMNS]
    rows = [[FAMILIES[name][0], FAMILIES[name][1], f"{parameters[name] / 1e6:.2f} M"]
            + [cell(result, key) for _, key in COLUMNS]
            for name, result in results.items()]
    pooled = {key: value for result in results.values() for key, value in result.items()}
    chance = {"zeroshot/single_object/top1": "zeroshot/single_object/chance",
              "zeroshot/heldout_single_object/top1": "zeroshot/heldout_single_object/chance",
              "retrieval/val/i2t_r1": "retrieval/val/chance_r1",
              "retrieval/val/t2i_r1": "retrieval/val/chance_r1",
              "vqa/val/overall": "vqa/val/chance"}
    rows.append(["chance", "", ""] + [
        cell(pooled, chance[key]) if key in chance else "0.500" if key.endswith("/acc2") else "—"
        for _, key in COLUMNS])
    # Blind baselines: the probes' image-free scores; VQA's answer prior (the most frequent
    # train answer per question kind); each masked patch filled with the visible mean colour.
    blind = {key: key.replace("/acc2", "/blind_acc2") for _, key in COLUMNS
             if key.endswith("/acc2")} | {"vqa/val/overall": "vqa/val/prior_overall",
                                         "reconstruction/val/masked_mse":
                                             "reconstruction/val/mean_colour_mse"}
    rows.append(["blind (no image)", "", ""] + [
        cell(pooled, blind[key]) if key in blind else "—" for _, key in COLUMNS])
    vqa_rows = [[FAMILIES[name][0]] + [cell(result, f"vqa/val/{kind}")
                                       for kind in world.QA_KINDS + ("overall",)]
                + [cell(result, f"vqa/val/{VQA_SHOTS}shot_overall")]
                for name, result in results.items() if "vqa/val/overall" in result]
    vqa_rows.append(["blind prior"] + [cell(pooled, f"vqa/val/prior_{kind}")
                                       for kind in world.QA_KINDS + ("overall",)] + ["—"])
    vqa_rows.append(["chance"] + [
        f"{chance:.3f}" for chance in reports.vqa_chance(setup["image_size"]).values()]
        + [cell(pooled, "vqa/val/chance"), "—"])
    vqa = table(["model"] + list(world.QA_KINDS) + ["overall", f"{VQA_SHOTS}-shot"], vqa_rows)
    runs = table(["run", "config", "steps × batch", "training"], [
        [name, f"`{setup['specs'][name]}`", f"{config.total_steps} × {config.batch_size}",
         reports.describe_training(setup["outcomes"][name])]
        for name, config in configs.items()])
    return TEMPLATE.format(command=setup["command"], runs=runs, scores=table(header, rows),
                           vqa=vqa, shots=VQA_SHOTS,
                           eval_sizes=", ".join(f"{k}={v}" for k, v in
                                                setup["eval_sizes"].items()))


TEMPLATE = """# The families side by side

Written by `benchmarks/families_report.py` (do not edit by hand; rerun it):

    {command}

{runs}

Every run trains its family's `:tiny` config on the synthetic world (CLIP, SigLIP, Llip and CoCa
at the same 300 steps × 256, the later families at their `:tiny` configs' own steps and batch:
the runs above), and is evaluated from its saved checkpoint with the same eval sets ({eval_sizes};
val split, seed 0). A cell is "—" where a family cannot do the task (a two-tower model has no
decoder to caption with). Training times are wall clock (and CPU seconds, all threads) on the
machine that ran the report (2 CPU cores for the committed page); the table below lists only the
rows, the runs table also the world LM they start from.

- **zero-shot / held-out pairs**: top-1 over the 24 colour × shape classes seen in training and
  the 28 pairs never captioned together in training (`vlm_jax/evals/zeroshot.py`).
- **R@1**: retrieval among the val eval set, image→text and text→image (`retrieval.py`).
- **probes acc2**: the two-way choice of the true caption against one with a relation,
  attribute binding or count changed (`compositional.py`); chance is 0.5.
- **CIDEr, VQA, POPE F1**: greedy captions against 5 references (`captioning.py`), closed-set
  VQA accuracy over the four question types (`vqa.py`), and F1 of yes/no polling about present
  and adversarially chosen absent objects (`pope.py`); see docs/generative.md.
- **masked-patch MSE**: pixels ([-1, 1]) of the masked patches rebuilt from the rest
  (`reconstruction.py`; MaskVLM's pixel decoder), against filling each with the image's visible
  mean colour (the blind row); the run's workdir gets the picture, mim_reconstructions.png.

{scores}

## VQA by question type

Accuracy of each captioner's likelihood-ranked answer among the kind's closed candidate set
(`vqa.py`), beside the blind prior (each kind's most frequent train answer, no image) and chance
(1 / candidates). {shots}-shot: the same questions after {shots} solved train questions of the same
kind, interleaved image / question / answer, for models that take such prompts.

{vqa}
"""


def main(argv: list[str] | None = None) -> None:
    parser = reports.arg_parser(__doc__.splitlines()[0], "families")
    parser.add_argument("--reuse_results", action="store_true",
                        help="rewrite the page from the root's report_results.json, no evals "
                             "(after a change to the page only)")
    args = parser.parse_args(argv)
    root = reports.root(args, "families")
    run_specs = specs(root)
    # Prerequisites first: a row's config may read them (Chameleon reads the VQ run's sizes).
    configs = plan({name: run_specs[name] for name in PREREQUISITES}, args.steps, args.batch,
                   args.micro)
    outcomes = reports.train_all(configs, run_specs, root, args.retrain)
    rows = plan({name: run_specs[name] for name in FAMILIES}, args.steps, args.batch, args.micro)
    outcomes |= reports.train_all(rows, run_specs, root, args.retrain)
    configs |= rows

    eval_config = configs["coca_tiny"].evals
    eval_config.clipscore_workdir = os.path.join(root, JUDGE)
    eval_config.vqa_shots = VQA_SHOTS
    started = time.perf_counter()
    results, parameters = {}, {}
    saved_path = os.path.join(root, "report_results.json")
    if args.reuse_results:
        with open(saved_path) as f:
            saved = json.load(f)
        results = {name: trained_results(name, saved["results"][name]) for name in FAMILIES}
        parameters = saved["parameters"]
    for name in FAMILIES:
        if name in results:
            continue
        run = restore.restore_run(os.path.join(root, name))
        results[name] = evaluate(name, run, eval_config)
        parameters[name] = parameter_count(run)
    print(f"evaluated in {time.perf_counter() - started:.0f} s")
    print(evals.format_table({f"{name}:{key}": value for name, result in results.items()
                              for key, value in result.items()}))

    command = "python benchmarks/families_report.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    sizes = {key: eval_config[key] for key in ("zeroshot_size", "retrieval_size", "probe_size",
                                               "captioning_size", "vqa_size", "pope_size")}
    with open(args.out, "w") as f:
        f.write(markdown(results, configs, parameters,
                         {"command": command.strip(), "eval_sizes": sizes, "specs": run_specs,
                          "image_size": eval_config.image_size,
                          "outcomes": outcomes}))
    with open(saved_path, "w") as f:
        json.dump({"results": results, "parameters": parameters, "training": outcomes},
                  f, indent=1, sort_keys=True)
    print(f"wrote {args.out} and {os.path.join(root, 'report_results.json')}")


if __name__ == "__main__":
    main()
