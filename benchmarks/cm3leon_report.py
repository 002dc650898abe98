"""Train (or reuse) CM3leon's tiny runs, plain and retrieval-augmented at equal steps, each
instruction-tuned, evaluate all four and write docs/cm3leon.md.

    python benchmarks/cm3leon_report.py                  # train what is missing, evaluate, write
    python benchmarks/cm3leon_report.py --vq=runs/families/vq_tiny \
        --retriever=runs/families/siglip_tiny            # reuse a VQ and a retriever
    python benchmarks/cm3leon_report.py --retrain        # start every run over
    python benchmarks/cm3leon_report.py --micro --steps=2 --out=/tmp/cm3leon.md  # smoke

Runs live in --root (default runs/cm3leon; --micro: runs/cm3leon_micro): the VQ tokenizer
(configs/vq.py:tiny) and the retriever (configs/siglip.py:tiny) unless --vq / --retriever name
finished runs, then stage 1 with retrieved=0 and retrieved=2 (configs/cm3leon.py: same
documents, order, sequence budget, steps and batch) and stage 2 from each. Every run is
evaluated from its checkpoint: captioning (CIDEr), VQA (accuracy beside chance and the blind
answer prior), the text -> image colour check on fixed one-object prompts (no guidance and
guidance 3; vlm_jax/evals/text_to_image.py), and its training loss at the last step.
--micro also shrinks the retrieval bank to 256 documents.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import reports  # noqa: E402
from benchmarks.reports import cell, table  # noqa: E402
from vlm_jax import early_fusion_generation as generation  # noqa: E402
from vlm_jax import evals, restore  # noqa: E402
from vlm_jax.evals import text_to_image as t2i_eval  # noqa: E402

EVALS = ("captioning", "vqa")
GUIDANCE = 3.0
T2I_PROMPTS, T2I_SAMPLES = 7, 4  # one prompt per world colour, 4 samples each
# run name -> (label, config spec); "{root}", "{vq}", "{retriever}" are filled in. Stage 1 rows
# come first: stage 2 configs read their stage-1 run.
RUNS = {
    "stage1_plain": ("stage 1, retrieved=0", "configs/cm3leon.py:tiny,stage=1,vq={vq},"
                                             "retrieved=0{bank}"),
    "stage1_retrieval": ("stage 1, retrieved=2", "configs/cm3leon.py:tiny,stage=1,vq={vq},"
                                                 "retriever={retriever},retrieved=2{bank}"),
    "stage2_plain": ("stage 2 from retrieved=0", "configs/cm3leon.py:tiny,stage=2,"
                                                 "stage1={root}/stage1_plain"),
    "stage2_retrieval": ("stage 2 from retrieved=2", "configs/cm3leon.py:tiny,stage=2,"
                                                     "stage1={root}/stage1_retrieval"),
}
PREREQUISITES = {"vq_tiny": "configs/vq.py:tiny", "siglip_tiny": "configs/siglip.py:tiny"}


def last_train_loss(workdir: str) -> float | None:
    """train/loss at the last logged step of the run's metrics.jsonl."""
    loss = None
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            loss = json.loads(line).get("train/loss", loss)
    return loss


def text_to_image(run: restore.RestoredRun, micro: bool) -> dict[str, float]:
    """Colour accuracy of samples from the fixed prompts, without and with guidance."""
    image_tokenizer = generation.load_image_tokenizer(run.config)
    prompts, colours = t2i_eval.colour_prompts(3 if micro else T2I_PROMPTS,
                                               image_tokenizer.image_size)
    out = {}
    for name, scale in (("t2i/no_guidance", 1.0), ("t2i/guidance", GUIDANCE)):
        sampling = generation.ImageSampling(2 if micro else T2I_SAMPLES, scale)
        images = generation.text_to_image(run.model, run.params, run.tokenizer,
                                          image_tokenizer, prompts, sampling)
        scores = t2i_eval.score_generated(images, prompts, colours)
        out[f"{name}/colour_accuracy"] = scores["colour_accuracy"]
        out[f"{name}/shuffled"] = scores["colour_accuracy_shuffled_prompts"]
        out["t2i/chance"] = scores["chance"]
    return out


def markdown(results: dict, configs: dict, outcomes: dict, info: dict) -> str:
    header = ["run", "steps x batch", "training", "last train loss", "captioning CIDEr",
              "VQA overall", "t2i colour (no guidance)", f"t2i colour (guidance {GUIDANCE:g})"]
    rows = []
    for name, (label, _) in RUNS.items():
        r, c = results[name], configs[name]
        rows.append([label, f"{c.total_steps} x {c.batch_size}",
                     reports.describe_training(outcomes[name]),
                     f"{r['train_loss']:.3f}" if r.get("train_loss") is not None else "—",
                     cell(r, "captioning/val/cider"), cell(r, "vqa/val/overall"),
                     cell(r, "t2i/no_guidance/colour_accuracy"),
                     cell(r, "t2i/guidance/colour_accuracy")])
    any_run = results["stage2_plain"]
    rows.append(["chance / blind prior", "", "", "", "", f"{cell(any_run, 'vqa/val/chance')} / "
                 f"{cell(any_run, 'vqa/val/prior_overall')}", cell(any_run, "t2i/chance"),
                 cell(any_run, "t2i/chance")])
    kinds = ("colour", "count", "spatial", "yesno")
    vqa_rows = [[RUNS[name][0]] + [cell(results[name], f"vqa/val/{kind}") for kind in kinds]
                for name in RUNS]
    vqa_rows.append(["chance"] + [f"{info['chance'][kind]:.3f}" for kind in kinds])
    vqa_rows.append(["blind prior"] + [cell(any_run, f"vqa/val/prior_{kind}") for kind in kinds])
    return f"""# CM3leon on the world (tiny)

Written by `benchmarks/cm3leon_report.py` (`{info['command']}`); rerun it to refresh. The
design is in docs/early_fusion.md (CM3leon); the code in `vlm_jax/trainers/cm3leon.py`,
`vlm_jax/data/cm3leon_sources.py` and `configs/cm3leon.py`.

{table(header, rows)}

VQA by question kind:

{table(["run"] + list(kinds), vqa_rows)}

## How it was measured

- Runs: {", ".join(f"`{name}` = `{info['specs'][name]}`" for name in RUNS)}; the VQ
  tokenizer `{info['vq']}` and the retriever `{info['retriever']}` ({info['prerequisites']}).
- Stage 1 trains both variants on the same bank documents in the same order at the same
  sequence budget (3 image blocks), steps and batch; retrieved=0 pads where retrieved=2 holds
  its 2 retrieved documents. Its training loss is over different tokens (the retrieved
  documents are in it), so the two stage-1 losses are not comparable; the stage-2 losses
  (answer tokens only, the same instruction data) are.
- Evals on the restored checkpoints, without retrieval at inference: captioning on
  {info['eval_sizes']['captioning_size']} val images (greedy, CIDEr), VQA on
  {info['eval_sizes']['vqa_size']} val questions (likelihood ranking over each kind's closed
  answer set), text -> image on {info['t2i_prompts']} fixed one-object val prompts x
  {info['t2i_samples']} samples (the dominant palette colour equals the prompt's; chance 1/7).
- Wall and CPU seconds are of the training only (`reports.train_or_reuse`), on a shared
  2-core CPU: the load average was {info['load']} when the report started. Evaluation took
  {info['eval_seconds']:.0f} s.

## Reading

{info['reading']}
"""


def reading(results: dict, sizes: dict[str, int]) -> str:
    """What the numbers say, written from them (no hand-entered result). sizes: the items
    behind each accuracy ("vqa/val/overall", "t2i/guidance/colour_accuracy"), for its
    binomial standard error."""
    lines = []
    plain, augmented = results["stage2_plain"], results["stage2_retrieval"]
    for key, what in (("captioning/val/cider", "captioning CIDEr"),
                      ("vqa/val/overall", "VQA accuracy"),
                      ("t2i/guidance/colour_accuracy", "text -> image colour accuracy")):
        if key in plain and key in augmented:
            a, b = plain[key], augmented[key]
            line = (f"- After stage 2, {what} is {b:.3f} from the retrieval-augmented stage 1 "
                    f"against {a:.3f} from the plain one "
                    f"({'higher' if b > a else 'lower' if b < a else 'equal'})")
            if key in sizes:  # two independent binomial proportions over sizes[key] items
                n = sizes[key]
                noise = 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)
                line += (f"; twice the standard error of the difference over {n} items is "
                         f"{noise:.3f}, so it is {'beyond' if abs(b - a) > noise else 'within'}"
                         " the noise")
            lines.append(line + ".")
    prior = results["stage2_plain"].get("vqa/val/prior_overall")
    if prior is not None:
        best = max(results[name].get("vqa/val/overall", 0.0) for name in RUNS)
        verdict = ("a run uses the image" if best > prior else
                   "no run shows that it reads the image to answer")
        lines.append(f"- The best VQA accuracy, {best:.3f}, is "
                     f"{'above' if best > prior else 'not above'} the blind answer prior "
                     f"{prior:.3f}: {verdict}.")
    lines.append("- One seed and tiny runs: the table says which way each went on these "
                 "sets, not that retrieval helps in general. CM3leon's claim is about compute "
                 "efficiency at scale, which this report does not test.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = reports.arg_parser(__doc__.splitlines()[0], "cm3leon")
    parser.add_argument("--vq", default="", help="a finished configs/vq.py run to reuse")
    parser.add_argument("--retriever", default="", help="a finished contrastive run to reuse")
    args = parser.parse_args(argv)
    root = reports.root(args, "cm3leon")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    batch = reports.batch(args)
    prerequisites = {name: spec for name, spec in PREREQUISITES.items()
                     if not (args.vq if name == "vq_tiny" else args.retriever)}
    configs = {name: reports.run_config(spec, args.steps, batch, args.micro)
               for name, spec in prerequisites.items()}
    outcomes = reports.train_all(configs, prerequisites, root, args.retrain)
    fill = dict(root=root, vq=args.vq or os.path.join(root, "vq_tiny"),
                retriever=args.retriever or os.path.join(root, "siglip_tiny"),
                bank=",bank_size=256" if args.micro else "")
    specs = {name: spec.format(**fill) for name, (_, spec) in RUNS.items()}
    for name in RUNS:  # one at a time: stage 2's config reads its finished stage-1 run
        configs[name] = reports.run_config(specs[name], args.steps, batch, args.micro)
        outcomes |= reports.train_all({name: configs[name]}, specs, root, args.retrain)

    eval_config = configs["stage2_plain"].evals
    started = time.perf_counter()
    results = {}
    for name in RUNS:
        workdir = os.path.join(root, name)
        run = restore.restore_run(workdir)
        results[name] = {**reports.evaluate(run, EVALS, eval_config), **text_to_image(
            run, args.micro), "train_loss": last_train_loss(workdir)}
    eval_seconds = time.perf_counter() - started
    print(evals.format_table({f"{name}:{key}": value for name, result in results.items()
                              for key, value in result.items() if value is not None}))
    command = "python benchmarks/cm3leon_report.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    info = {"command": command.strip(), "specs": specs, "vq": fill["vq"],
            "retriever": fill["retriever"], "load": load, "eval_seconds": eval_seconds,
            "prerequisites": "trained by this report" if prerequisites else "reused",
            "eval_sizes": {key: eval_config[key] for key in ("captioning_size", "vqa_size")},
            "t2i_prompts": 3 if args.micro else T2I_PROMPTS,
            "t2i_samples": 2 if args.micro else T2I_SAMPLES,
            "chance": reports.vqa_chance(eval_config.image_size)}
    t2i_items = info["t2i_prompts"] * info["t2i_samples"]
    info["reading"] = reading(results, {"vqa/val/overall": eval_config.vqa_size,
                                        "t2i/guidance/colour_accuracy": t2i_items})
    with open(args.out, "w") as f:
        f.write(markdown(results, configs, outcomes, info))
    with open(os.path.join(root, "report_results.json"), "w") as f:
        json.dump({"results": results, "training": outcomes}, f, indent=1, sort_keys=True)
    print(f"wrote {args.out} and {os.path.join(root, 'report_results.json')}")


if __name__ == "__main__":
    main()
