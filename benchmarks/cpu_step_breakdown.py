"""Where one CPU core's time goes in our `:tiny` train step, by part of the model and kind of op.

    python benchmarks/cpu_step_breakdown.py                  # clip; ~1 min
    python benchmarks/cpu_step_breakdown.py --models=clip,siglip

The process pins itself to one core before JAX starts. On two threads XLA's thunk executor runs
independent ops side by side and a parallel op's helper thread is not in its trace event, so
per-op times neither add up to the step nor show its work; on one core they do. Then the three
matmuls of one MLP dense at the text tower's shape (forward X W, input gradient G W^T, weight
gradient X^T G), each alone, in GFLOP/s on that core, with the library XLA picked for it.
Output is Markdown for docs/performance.md; never part of the tests.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from cpu_peer import Ours, cpu_model, markdown_table, profile_ours  # noqa: E402

from vlm_jax import configlib, host_memory  # noqa: E402


def part_and_kind(op_name: str, opcode_text: str) -> str:
    """One compiled op -> "<part of the model>: <kind>"; YNNPACK fusions are mostly dots, some
    reductions (a layer norm's statistics), hence "library op"."""
    instruction = opcode_text.split(" ", 1)[0]
    if instruction.startswith(("ynn_fusion", "dot", "convolution")):
        kind = "library op (YNNPACK fusion, Eigen dot)"
    elif "copy" in instruction or "transpose" in instruction:
        kind = "layout copy"
    else:
        kind = "loop (elementwise, reductions)"
    if "/attn" in op_name or "attn." in op_name:
        # layers.project's one matmul for q, k, v (its gradient's concatenation, bias sum)
        # under ".../attn/", or under keys_values / queries; the output projection "out".
        projection = (r"/attn/(dot_general|add_any|reduce_sum|concatenate|split)"
                      r"|\.(keys_values|queries)/|/out/")
        part = "attention projections" if re.search(projection, op_name) else "attention core"
    elif "/mlp/" in op_name:
        part = "MLP"
    elif "norm" in op_name:
        part = "layer norms"
    elif "tower" in op_name:
        part = "embeddings, residuals"
    else:
        part = "loss, optimizer, copies"
    return f"{part}: {kind}"


def seconds_per_call(compiled, *args, calls: int = 20) -> float:
    compiled(*args).block_until_ready()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        compiled(*args).block_until_ready()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def dense_matmul_rows(tokens: int, width: int, hidden: int) -> list[list]:
    """[name, GFLOP/s, library] for the three matmuls of one [tokens, width] -> hidden dense."""
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal((tokens, width)), jax.numpy.float32)
    w = jax.numpy.asarray(rng.standard_normal((width, hidden)), jax.numpy.float32)
    g = jax.numpy.asarray(rng.standard_normal((tokens, hidden)), jax.numpy.float32)
    cases = [
        (f"forward X W  [{tokens},{width}] x [{width},{hidden}]", x, w, ((1,), (0,))),
        (f"input grad G W^T  [{tokens},{hidden}] x [{width},{hidden}]^T", g, w, ((1,), (1,))),
        (f"weight grad X^T G  [{tokens},{width}]^T x [{tokens},{hidden}]", x, g, ((0,), (0,))),
    ]
    rows = []
    for name, a, b, dims in cases:
        dot = lambda a, b, dims=dims: jax.lax.dot_general(a, b, (dims, ((), ())))  # noqa: E731
        compiled = jax.jit(dot).lower(a, b).compile()
        library = "YNNPACK" if "ynn_fusion" in compiled.as_text() else "Eigen"
        rows.append([name, 2 * tokens * width * hidden / seconds_per_call(compiled, a, b) / 1e9,
                     library])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clip")
    parser.add_argument("--steps", type=int, default=2, help="steps traced per model")
    args = parser.parse_args()
    # Both before the first computation creates XLA's CPU client and sizes its thread pool.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    host_memory.keep_freed_memory()  # as vlm_jax.main does
    print(f"CPU: {cpu_model()}, pinned to 1 core; jax {jax.__version__}\n")
    for name in args.models.split(","):
        config = configlib.load_config(f"{ROOT}/configs/{name}.py:tiny")
        ours = Ours(config)
        seconds = ours.run(4) / 4
        print(f"#### {name} tiny, batch {config.batch_size}: {seconds * 1e3:.0f} ms a step, "
              f"{config.batch_size / seconds:.0f} samples/s on one core\n")
        table = profile_ours(ours, args.steps, part_and_kind)
        print(markdown_table(["part: kind of op", "ms / step", "% of op time"],
                             [list(row) for row in sorted(table)]) + "\n")
    text = configlib.load_config(f"{ROOT}/configs/clip.py:tiny")
    tokens = text.batch_size * text.data.text_length
    width, hidden = text.model.text.width, text.model.text.mlp_dim
    print("#### One dense's matmuls alone (text tower shape, one core)\n")
    rows = dense_matmul_rows(tokens, width, hidden) + dense_matmul_rows(tokens, hidden, width)
    print(markdown_table(["matmul", "GFLOP/s", "library XLA picked"], rows))


if __name__ == "__main__":
    main()
