"""Apply one curation step to an ArrayRecord set: a keep-list, a new set and a report.

    python -m vlm_jax.curation.cli heuristics --input='/data/ar/train-*' --output=/data/cur
    python -m vlm_jax.curation.cli metaclip --input=... --output=... --t=2000
    python -m vlm_jax.curation.cli clipscore --input=... --output=... --workdir=runs/siglip \
        --top_fraction=0.3
    python -m vlm_jax.curation.cli semdedup --input=... --output=... --workdir=runs/siglip \
        --eps=0.05 --clusters=100

Writes {output}/keep.json (kept indices), {output}/report.json (counts and settings) and
{output}/train-00000-of-00001.array_record (the kept records, copied byte for byte).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from vlm_jax.curation import clip_score, heuristics, metaclip, semdedup
from vlm_jax.data import images, sources

STEPS = ("heuristics", "metaclip", "clipscore", "semdedup")


def embed(source: sources.ArrayRecordSource, workdir: str,
          batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings [n, d], caption embeddings [n, d]) from the run in `workdir`."""
    from vlm_jax import restore
    from vlm_jax.evals.scoring import embed_in_chunks

    run = restore.restore_run(workdir)
    scorer, size = run.scorer(), run.config.data.image_size
    examples = [source[i] for i in range(len(source))]
    pixels = np.stack([images.crop_image(e["image"], size, "center", None) for e in examples])
    tokens = scorer.tokenize([e["caption"] for e in examples])
    return (embed_in_chunks(scorer.encode_images, pixels, batch_size),
            embed_in_chunks(scorer.encode_texts, tokens, batch_size))


def keep_mask(step: str, source: sources.ArrayRecordSource, args: argparse.Namespace) -> np.ndarray:
    if step in ("heuristics", "metaclip"):
        captions = [source[i]["caption"] for i in range(len(source))]
        if step == "heuristics":
            return heuristics.caption_keep(captions, min_words=args.min_words)
        entries = metaclip.world_metadata() if not args.entries else tuple(
            line.strip() for line in open(args.entries) if line.strip())
        return metaclip.metaclip_keep(captions, entries, args.t,
                                      np.random.default_rng(args.seed))[0]
    if not args.workdir:
        raise SystemExit(f"curation: {step} needs --workdir, a trained contrastive run")
    image_emb, text_emb = embed(source, args.workdir)
    if step == "clipscore":
        scores = clip_score.pair_scores(image_emb, text_emb)
        if args.threshold is not None:
            return clip_score.clip_score_keep(scores, threshold=args.threshold)
        return clip_score.clip_score_keep(scores, top_fraction=args.top_fraction)
    return semdedup.semdedup_keep(image_emb, args.eps, num_clusters=args.clusters, seed=args.seed)


def write_curated(source: sources.ArrayRecordSource, keep: np.ndarray, output: str,
                  report: dict) -> str:
    """The kept records copied into one new shard, plus keep.json and report.json."""
    from array_record.python.array_record_module import ArrayRecordWriter

    os.makedirs(output, exist_ok=True)
    kept = np.flatnonzero(keep)
    path = os.path.join(output, "train-00000-of-00001.array_record")
    writer = ArrayRecordWriter(path + ".partial", "group_size:1")
    try:
        for index in kept:
            writer.write(source._records[int(index)])
    finally:
        writer.close()
    os.replace(path + ".partial", path)
    with open(os.path.join(output, "keep.json"), "w") as f:
        json.dump(kept.tolist(), f)
    report = {**report, "input_examples": len(keep), "kept": int(keep.sum()),
              "kept_share": float(keep.mean()) if len(keep) else 0.0, "output": path}
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--input", required=True, help="glob of .array_record files")
    parser.add_argument("--output", required=True)
    parser.add_argument("--workdir", default="", help="contrastive run (clipscore, semdedup)")
    parser.add_argument("--top_fraction", type=float, default=0.3)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--t", type=float, default=20000)
    parser.add_argument("--entries", default="", help="metadata file, one entry a line")
    parser.add_argument("--min_words", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        source = sources.ArrayRecordSource(args.input)
    except FileNotFoundError as error:
        print(f"curation: {error}", file=sys.stderr)
        return 2
    keep = keep_mask(args.step, source, args)
    settings = {k: v for k, v in vars(args).items() if k not in ("input", "output")}
    path = write_curated(source, keep, args.output, {"input": args.input, **settings})
    print(f"{args.step}: kept {int(keep.sum())} of {len(keep)} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
