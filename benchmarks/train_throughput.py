"""Train-step throughput of the real CLIP / SigLIP configs: samples/s, step time, MFU, memory.

    python benchmarks/train_throughput.py                       # CLIP and SigLIP B/16, 224 px
    python benchmarks/train_throughput.py --models=siglip --batch=512 \
        --override=compute_dtype=float32
    python benchmarks/train_throughput.py --tiny --steps=3      # CPU smoke run of the :tiny configs

Synthetic data already on the device; the step is the one `vlm_jax.loop` trains with
(`loop.build`). Timed after warm-up with `block_until_ready`. FLOPs are counted analytically
(matmuls + attention, forward x 3 for training), because XLA's cost analysis is wrong on GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlm_jax import configlib, loop, models, parallel, trainers  # noqa: E402

PEAK_FLOPS = {"gpu": 989e12, "tpu": 197e12, "cpu": float("nan")}  # H100 SXM dense bf16; v5e
# Real vocabularies, so the embedding tables are the published sizes.
VOCAB = {"clip": 49_408, "siglip": 32_000}


def encoder_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
    """Forward FLOPs of `depth` pre-norm blocks over `tokens` tokens (per example)."""
    projections = 2 * tokens * (4 * width * width + 2 * width * mlp_dim)
    attention = 2 * 2 * tokens * tokens * width  # q.k^T and attention-weighted values
    return depth * (projections + attention)


def forward_flops_per_example(config) -> float:
    """Analytic forward FLOPs of one (image, caption) pair through a two-tower model."""
    image = models.tower_kwargs(config.model.image)
    text = models.tower_kwargs(config.model.text)
    size, patch = config.data.image_size, image["patch_size"]
    patches = (size // patch) ** 2
    image_tokens = patches + (image.get("pool") == "cls")
    flops = 2 * patches * patch * patch * 3 * image["width"]  # patch embedding
    flops += encoder_flops(image_tokens, image["width"], image["depth"], image["mlp_dim"])
    if image.get("pool") == "map":  # one query attending over the tokens, plus its MLP
        width = image["width"]
        flops += 2 * (2 * width * width + 2 * image_tokens * width * width)
        flops += 2 * 2 * image_tokens * width + 2 * 2 * width * image["mlp_dim"]
    flops += encoder_flops(config.data.text_length, text["width"], text["depth"], text["mlp_dim"])
    embed = config.model.embed_dim
    flops += 2 * (image["width"] + text["width"]) * embed  # projections
    flops += 2 * config.batch_size * embed  # this example's row of the B x B similarities
    return flops


def synthetic_batch(config, rng: np.random.Generator, vocab: int) -> dict[str, np.ndarray]:
    size, length, batch = config.data.image_size, config.data.text_length, config.batch_size
    tokens = rng.integers(4, vocab, (batch, length)).astype(np.int32)
    return {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            "text_tokens": tokens}


def benchmark(name: str, config, steps: int, vocab: int) -> dict[str, float | str]:
    """Compile, warm up and time `steps` train steps; returns one table row."""
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.logical_rules(config)
    trainer = trainers.get_trainer(config.trainer)
    _, state, _, train_step = loop.build(config, trainer, vocab, mesh, rules)
    batch = parallel.global_batch(synthetic_batch(config, np.random.default_rng(0), vocab), mesh)

    started = time.perf_counter()
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - started
    for _ in range(2):  # warm-up past autotuning
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)

    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))
    step_seconds = (time.perf_counter() - started) / steps

    samples_per_second = config.batch_size / step_seconds
    train_flops = 3 * forward_flops_per_example(config)
    platform = jax.devices()[0].platform
    peak = PEAK_FLOPS.get(platform, float("nan")) * jax.device_count()
    memory = jax.devices()[0].memory_stats() or {}
    peak_bytes = memory.get("peak_bytes_in_use")
    return {
        "model": name, "batch": config.batch_size, "dtype": config.compute_dtype,
        "samples/s": samples_per_second, "step ms": 1e3 * step_seconds,
        "GFLOP/sample": train_flops / 1e9, "MFU %": 100 * samples_per_second * train_flops / peak,
        "peak GiB": peak_bytes / 2**30 if peak_bytes else float("nan"),
        "compile s": compile_seconds, "loss": float(metrics["train/loss"]),
    }


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    cells = [[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.rjust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clip,siglip", help="comma list of clip, siglip")
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="the CPU-scale :tiny configs")
    parser.add_argument("--override", action="append", default=[],
                        help="config override a.b=value (repeatable)")
    args = parser.parse_args()

    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in args.models.split(","):
        arg = "tiny" if args.tiny else f"variant={args.variant}"
        config = configlib.load_config(f"{root}/configs/{name}.py:{arg},batch={args.batch}")
        for item in args.override:
            key, _, value = item.partition("=")
            configlib.override(config, key, value)
        vocab = config.data.vocab_size if args.tiny else VOCAB[name]
        rows.append(benchmark(name, config, args.steps, vocab))
    print(f"jax {jax.__version__} on {jax.device_count()} x {jax.devices()[0].device_kind}")
    print_table(rows)


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
