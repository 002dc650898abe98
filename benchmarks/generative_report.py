"""Train (or load) CoCa tiny and SigLIP tiny, evaluate both, and write docs/generative.md:
captioning (CIDEr-D, BLEU-4, CLIPScore), VQA accuracy by question type, POPE hallucination,
and zero-shot / compositional scores by embedding similarity against caption likelihood.

    python benchmarks/generative_report.py                  # train what is missing, evaluate, write
    python benchmarks/generative_report.py --retrain        # start both runs over
    python benchmarks/generative_report.py --micro --steps=5 --out=/tmp/generative.md  # smoke run

Runs live in --root (default runs/generative; --micro: runs/generative_micro): siglip_tiny/ and
coca_tiny/. A workdir whose results.json records the requested number of steps is reused; one
cut short resumes; one trained for another number of steps is refused (use --retrain or another
--root). The evals always run on the restored checkpoints; SigLIP is also CoCa's CLIPScore judge
(eval_config.clipscore_workdir), so captions are scored by a model that did not write them.
--micro shrinks the batch and every eval set to smoke-test the whole path in a few minutes.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import reports  # noqa: E402
from benchmarks.reports import cell, table  # noqa: E402
from vlm_jax import evals, restore  # noqa: E402
from vlm_jax.data import world  # noqa: E402

CONTRASTIVE_EVALS = ("zeroshot", "retrieval", "compositional")
GENERATIVE_EVALS = ("captioning", "vqa", "pope", "genzeroshot", "gencompositional")
RUNS = {"siglip_tiny": "configs/siglip.py:tiny", "coca_tiny": "configs/coca.py:tiny"}
def sample_captions(run: restore.RestoredRun, count: int, eval_config) -> list[tuple[str, str]]:
    """(dataset caption, generated caption) of the first `count` val images."""
    val = world.World("val", seed=eval_config.seed, image_size=eval_config.image_size)
    examples = [val[index] for index in range(count)]
    generated = run.caption_model().generate(np.stack([example["image"] for example in examples]))
    return [(example["caption"], caption)
            for example, caption in zip(examples, generated, strict=True)]


def markdown(siglip: dict, coca: dict, samples: list[tuple[str, str]], setup: dict) -> str:
    """docs/generative.md from the two runs' results (missing metrics show as —)."""
    kinds = world.PROBE_KINDS
    zeroshot = table(["model", "scoring", "top-1", "chance"], [
        ["SigLIP tiny", "embedding cosine", cell(siglip, "zeroshot/single_object/top1"),
         cell(siglip, "zeroshot/single_object/chance")],
        ["CoCa tiny", "embedding cosine", cell(coca, "zeroshot/single_object/top1"),
         cell(coca, "zeroshot/single_object/chance")],
        ["CoCa tiny", "caption likelihood", cell(coca, "genzeroshot/single_object/top1"),
         cell(coca, "genzeroshot/single_object/chance")],
    ])
    probe_rows = []
    for label, results, prefix in (("SigLIP tiny", siglip, "compositional"),
                                   ("CoCa tiny", coca, "compositional"),
                                   ("CoCa tiny (likelihood)", coca, "gencompositional")):
        for kind in kinds:
            probe_rows.append([label, kind] + [
                cell(results, f"{prefix}/{kind}/{metric}")
                for metric in ("acc2", "text", "image", "group")]
                + [cell(results, f"compositional/{kind}/blind_acc2")
                   if prefix == "compositional" else "—"])
    probes = table(["model", "probe", "acc2", "text", "image", "group", "blind acc2"],
                    probe_rows)
    captioning = table(["metric", "CoCa tiny"], [
        ["CIDEr-D", cell(coca, "captioning/val/cider")],
        ["BLEU-4", cell(coca, "captioning/val/bleu4")],
        ["CLIPScore (SigLIP judge)", cell(coca, "captioning/val/clipscore")],
        ["CLIPScore of the dataset captions", cell(coca, "captioning/val/clipscore_refs")],
    ])
    chance = reports.vqa_chance(setup["image_size"])
    vqa = table(["question type", "CoCa tiny", "chance"], [
        [kind, cell(coca, f"vqa/val/{kind}"), f"{chance[kind]:.3f}"] for kind in world.QA_KINDS
    ] + [["overall", cell(coca, "vqa/val/overall"), cell(coca, "vqa/val/chance")]])
    pope_metrics = ("accuracy", "precision", "recall", "f1", "yes_ratio", "auc")
    pope = table(["negatives"] + list(pope_metrics), [
        [sampling] + [cell(coca, f"pope/{sampling}/{metric}") for metric in pope_metrics]
        for sampling in evals.pope.SAMPLINGS])
    sample_table = table(["dataset caption", "CoCa tiny (greedy)"],
                          [[reference, generated or "(empty)"] for reference, generated in samples])
    return TEMPLATE.format(
        command=setup["command"], runs=setup["runs"], captioning=captioning, vqa=vqa, pope=pope,
        zeroshot=zeroshot, probes=probes, samples=sample_table, num_samples=len(samples),
        eval_sizes=", ".join(f"{k}={v}" for k, v in setup["eval_sizes"].items()))


TEMPLATE = """# Generative evaluations: CoCa against SigLIP

Written by `benchmarks/generative_report.py` (do not edit by hand; rerun it):

    {command}

Runs: {runs}. Eval sets ({eval_sizes}) are drawn from the synthetic world's val split with
seed 0, so every number here is reproducible on a CPU.

How each number is made (the module docstrings in `vlm_jax/evals/` say more):

- **Captioning** (`captioning.py`, `caption_metrics.py`): greedy captions of val images against
  5 true captions per image (different templates of the same scene). CIDEr-D and BLEU-4 are the
  COCO toolkit's (tested equal to `pycocoevalcap` to 1e-6). CLIPScore = 2.5·max(cos, 0) under
  the SigLIP run, which did not write the captions; the dataset's own captions, scored the
  same way, are the reference point (a judge can like a model's captions more than true ones).
- **VQA** (`vqa.py`): CoCa was trained on captions only, so it ranks the closed answer set of
  each question type by log p("question answer" | image); the question is a shared prefix, so
  this is log p(answer | image, question). Exact match, ties wrong.
- **POPE** (`pope.py`): "is there a <colour> <shape> in the image?" about up to 3 present and
  as many absent colour-shape pairs per image, absent ones drawn at random, by train frequency
  (popular), or sharing a colour or shape with a present object (adversarial). The answer is
  yes iff log p(question yes) > log p(question no). AUC: how often a present object's yes-no
  margin beats an absent one's, i.e. whether the model separates them at any threshold.
- **Zero-shot and probes**: the same model scored two ways, embedding cosine (contrastive
  towers) and caption likelihood log p(prompt | image) (`generative_zeroshot.py`,
  `generative_compositional.py`). Winoground-style text / image / group scores and ARO-style
  acc2, ties never correct; the blind baseline sees no image (acc2 ≤ 0.5 by construction).

## Captioning

{captioning}

## VQA accuracy by question type

{vqa}

## POPE hallucination (CoCa tiny)

{pope}

## Zero-shot classification (24 single-object classes)

{zeroshot}

## Compositional probes: embedding similarity vs caption likelihood

{probes}

## Sample captions (the first {num_samples} val images)

{samples}

## Generative models as classifiers (debiased and image-likelihood scores)

Two more ways to classify with a generative model, beside the caption likelihood above:

- `gendebiased` (`vlm_jax/evals/debiased_caption.py`, any captioner): VisualGPTScore's
  log P(t|i) − α·log P(t), with log P(t) the logmeanexp of log P(t|i) over the first
  `evals.prior_images` (16) train images, for each α of `evals.prior_alphas` (0, 0.5, 1; α = 0
  equals `genzeroshot` / `gencompositional` exactly) and the blind score log P(t) alone. A
  probe's image score does not move with α (the prior cancels when one caption picks between
  two images).
- `imgzeroshot` / `imgcompositional` (`vlm_jax/evals/image_likelihood_zeroshot.py`, the
  `image_likelihood` capability the early_fusion trainer serves): log p(image codes | BOS
  prompt <boi>), the class by Bayes under a uniform prior; on the probes the clean number is
  the text score (each image picks the caption that makes its codes likelier).

`benchmarks/generative_classifiers_report.py` puts every scoring side by side, on the
families report's runs (CLIP, SigLIP, Llip, FLAVA, CoCa, Chameleon) and the same eval sets:
docs/generative_classifiers.md.
"""


def main(argv: list[str] | None = None) -> None:
    parser = reports.arg_parser(__doc__.splitlines()[0], "generative")
    parser.add_argument("--samples", type=int, default=6, help="sample captions to show")
    args = parser.parse_args(argv)
    root = reports.root(args, "generative")
    batch = reports.batch(args)
    configs = {name: reports.run_config(spec, args.steps, batch, args.micro)
               for name, spec in RUNS.items()}
    workdirs = {name: os.path.join(root, name) for name in RUNS}
    done = {name: reports.train_or_reuse(configs[name], workdirs[name], args.retrain)
            for name in RUNS}

    eval_config = configs["coca_tiny"].evals
    eval_config.clipscore_workdir = workdirs["siglip_tiny"]
    started = time.perf_counter()
    siglip = reports.evaluate(restore.restore_run(workdirs["siglip_tiny"]), CONTRASTIVE_EVALS,
                              eval_config)
    coca_run = restore.restore_run(workdirs["coca_tiny"])
    coca = reports.evaluate(coca_run, CONTRASTIVE_EVALS + GENERATIVE_EVALS, eval_config)
    samples = sample_captions(coca_run, args.samples, eval_config)
    print(f"evaluated in {time.perf_counter() - started:.0f} s")
    print(evals.format_table({**{f"siglip:{k}": v for k, v in siglip.items()},
                              **{f"coca:{k}": v for k, v in coca.items()}}))

    command = "python benchmarks/generative_report.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    runs = "; ".join(
        f"`{RUNS[name]}` ({configs[name].total_steps} steps at batch {configs[name].batch_size}, "
        f"{reports.describe_training(done[name])})" for name in RUNS)
    sizes = {key: eval_config[key] for key in ("zeroshot_size", "retrieval_size", "probe_size",
                                               "captioning_size", "vqa_size", "pope_size",
                                               "genzeroshot_size")}
    setup = {"command": command.strip(), "runs": runs, "eval_sizes": sizes,
             "image_size": eval_config.image_size}
    with open(args.out, "w") as f:
        f.write(markdown(siglip, coca, samples, setup))
    with open(os.path.join(root, "report_results.json"), "w") as f:
        json.dump({"siglip_tiny": siglip, "coca_tiny": coca}, f, indent=1, sort_keys=True)
    print(f"wrote {args.out} and {os.path.join(root, 'report_results.json')}")


if __name__ == "__main__":
    main()
