"""The curation experiment: SigLIP tiny trained on a noisy world as is, after each curation step
and after all of them, at equal steps; writes docs/curation.md and docs/curation.png.

    python benchmarks/curation_report.py --steps=150 --batch=256     # the committed page
    python benchmarks/curation_report.py --micro --steps=2 --pool=256 --out=/tmp/curation.md

A pool of --pool noisy examples (vlm_jax/curation/noisy_world.py: --mismatch share of wrong
captions, --duplicate share of copies, --skew share redrawn as red scenes) and the same-size
clean pool are written as ArrayRecord shards under --root. The "as is" run trains on the noisy
pool and is also the CLIP-score and SemDeDup scorer (what a researcher without a clean model
has; a scorer trained on clean data would be an oracle). Each curation step writes a curated
set with vlm_jax/curation/cli.py's functions; every set trains the same steps at the same
batch (a smaller set is seen more epochs), then all runs take the same evals.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import reports  # noqa: E402
from vlm_jax import restore  # noqa: E402
from vlm_jax.curation import cli, clip_score, heuristics, metaclip, semdedup  # noqa: E402
from vlm_jax.curation.noisy_world import NoisyWorld  # noqa: E402
from vlm_jax.data import sources  # noqa: E402

EVALS = ("zeroshot", "retrieval", "compositional")
METRICS = {"zero-shot seen": "zeroshot/single_object/top1",
           "zero-shot held-out": "zeroshot/heldout_single_object/top1",
           "val i2t R@1": "retrieval/val/i2t_r1",
           "relation acc2": "compositional/relation/acc2",
           "attribute acc2": "compositional/attribute/acc2",
           "count acc2": "compositional/count/acc2"}
SETS = ("clean", "noisy", "heuristics", "clipscore", "semdedup", "metaclip", "all")


def write_pool(pool, path: str) -> str:
    if not os.path.exists(path):
        sources.write_array_record(path + ".partial", (pool[i] for i in range(len(pool))))
        os.replace(path + ".partial", path)
    return path


def curate(step: str, source, image_emb, text_emb, args) -> np.ndarray:
    """bool [n] keep mask of one step on the noisy pool."""
    if step == "heuristics":
        return heuristics.caption_keep([source[i]["caption"] for i in range(len(source))])
    if step == "clipscore":
        return clip_score.clip_score_keep(clip_score.pair_scores(image_emb, text_emb),
                                          top_fraction=args.top_fraction)
    if step == "semdedup":
        return semdedup.semdedup_keep(image_emb, args.eps, num_clusters=args.clusters)
    if step == "metaclip":
        captions = [source[i]["caption"] for i in range(len(source))]
        return metaclip.metaclip_keep(captions, metaclip.world_metadata(), args.t_share *
                                      len(source), np.random.default_rng(0))[0]
    raise ValueError(step)


def run_set(name, pattern, args, root):
    config = reports.run_config("configs/siglip.py:tiny", args.steps, reports.batch(args),
                                args.micro)
    config.data.source, config.data.array_record_pattern = "array_record", pattern
    print(f"== {name}: {config.total_steps} steps at batch {config.batch_size}", flush=True)
    outcome = reports.train_or_reuse(config, os.path.join(root, name), args.retrain)
    return config, outcome


def chart(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(METRICS)
    for k, (label, key) in enumerate(METRICS.items()):
        ax.bar(np.arange(len(names)) + k * width, [results[n].get(key, 0) for n in names],
               width, label=label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_ylabel("score")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("SigLIP tiny at equal steps: clean, noisy and curated pools")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    parser = reports.arg_parser(__doc__.splitlines()[0], "curation")
    parser.add_argument("--pool", type=int, default=20000)
    parser.add_argument("--mismatch", type=float, default=0.3)
    parser.add_argument("--duplicate", type=float, default=0.3)
    parser.add_argument("--skew", type=float, default=0.5)
    parser.add_argument("--top_fraction", type=float, default=0.7)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--t_share", type=float, default=0.05, help="MetaCLIP t / pool size")
    args = parser.parse_args(argv)
    root = os.path.abspath(reports.root(args, "curation"))
    os.makedirs(os.path.join(root, "pools"), exist_ok=True)
    noisy = NoisyWorld(args.pool, mismatch_share=args.mismatch,
                       duplicate_share=args.duplicate, skew_drop=args.skew)
    clean = NoisyWorld(args.pool, mismatch_share=0.0, duplicate_share=0.0, skew_drop=0.0)
    patterns = {"clean": write_pool(clean, os.path.join(root, "pools", "clean.array_record")),
                "noisy": write_pool(noisy, os.path.join(root, "pools", "noisy.array_record"))}
    configs, outcomes = {}, {}
    for name in ("clean", "noisy"):
        configs[name], outcomes[name] = run_set(name, patterns[name], args, root)
    source = sources.ArrayRecordSource(patterns["noisy"])
    image_emb, text_emb = cli.embed(source, os.path.join(root, "noisy"))
    masks = {step: curate(step, source, image_emb, text_emb, args)
             for step in ("heuristics", "clipscore", "semdedup", "metaclip")}
    # All steps: filters first, balancing last (MetaCLIP's advice), on the surviving pairs.
    filtered = masks["heuristics"] & masks["clipscore"] & masks["semdedup"]
    kept = np.flatnonzero(filtered)
    balanced = metaclip.metaclip_keep([source[int(i)]["caption"] for i in kept],
                                      metaclip.world_metadata(), args.t_share * len(source),
                                      np.random.default_rng(0))[0]
    masks["all"] = np.zeros(len(source), bool)
    masks["all"][kept[balanced]] = True
    flags = [noisy.flags(i) for i in range(len(noisy))]
    wrong = np.array([f["mismatched"] for f in flags])
    copies = np.array([f["source"] != i for i, f in enumerate(flags)])
    composition = {}
    for step, mask in masks.items():
        out = os.path.join(root, "sets", step)
        patterns[step] = cli.write_curated(source, mask, out, {"step": step})
        composition[step] = {"kept": int(mask.sum()),
                             "mismatched": float(wrong[mask].mean()) if mask.any() else 0.0,
                             "copies": float(copies[mask].mean()) if mask.any() else 0.0}
        configs[step], outcomes[step] = run_set(step, patterns[step], args, root)
    composition["noisy"] = {"kept": len(source), "mismatched": float(wrong.mean()),
                            "copies": float(copies.mean())}
    composition["clean"] = {"kept": len(source), "mismatched": 0.0, "copies": 0.0}
    eval_config = configs["clean"].evals
    results = {name: reports.evaluate(restore.restore_run(os.path.join(root, name)), EVALS,
                                      eval_config) for name in SETS}
    png = os.path.splitext(args.out)[0] + ".png"
    chart(results, png)
    with open(os.path.join(root, "report_results.json"), "w") as f:
        json.dump({"results": results, "composition": composition}, f, indent=1)
    command = "python benchmarks/curation_report.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    with open(args.out, "w") as f:
        f.write(markdown(results, composition, configs, outcomes, command.strip(), args,
                         os.path.basename(png)))
    print(f"wrote {args.out} and {png}")


def markdown(results, composition, configs, outcomes, command, args, png) -> str:
    config = configs["clean"]
    rows = [[name, str(composition[name]["kept"]), f"{composition[name]['mismatched']:.2f}",
             f"{composition[name]['copies']:.2f}"]
            + [reports.cell(results[name], key) for key in METRICS.values()]
            + [reports.describe_training(outcomes[name])] for name in SETS]
    table = reports.table(["set", "pairs", "mismatched share", "copy share", *METRICS,
                           "training"], rows)
    return f"""# Data curation on a noisy world

Written by `benchmarks/curation_report.py` (do not edit by hand; rerun it):

    {command}

SigLIP tiny (`configs/siglip.py:tiny`) trains {config.total_steps} steps at batch
{config.batch_size} on each set: short runs on a shared 2-core CPU, so differences of a few
points are within run-to-run noise. The noisy pool holds {args.pool} pairs: a {args.mismatch}
share of captions from an unrelated scene, a {args.duplicate} share of copies of earlier pairs
and a {args.skew} share of scenes redrawn until their first object is red. The clean pool is the
same size without noise. The "noisy" run is also the scorer of the CLIP-score
(top {args.top_fraction:.0%}) and SemDeDup (eps {args.eps}, {args.clusters} clusters) steps: a
researcher has no clean model, and a clean-trained scorer would be an oracle. MetaCLIP balances
the world's colour/shape/relation words at t = {args.t_share} × pool size; "all" applies the
three filters, then balances (balancing last). The caption heuristics kept
{composition["heuristics"]["kept"]} of {args.pool}: world captions, wrong or right, are
well-formed sentences, so length and repetition rules cannot see a mismatch.

{table}

![scores per set]({png})
"""


if __name__ == "__main__":
    main()
