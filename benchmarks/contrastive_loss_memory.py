"""Per-device temporary memory of contrastive loss + gradient, for each sharded variant.

    python benchmarks/contrastive_loss_memory.py          # the table in docs/sharded_losses.md
    python benchmarks/contrastive_loss_memory.py --dim=768 --devices=2,4,8,16
    python benchmarks/contrastive_loss_memory.py --batch=1024 --per-device=128 --devices=2,4

Nothing runs: each variant's `value_and_grad` is compiled for meshes of n simulated CPU
devices (the first n of `max(--devices)`) and XLA's memory analysis reports the temporary
buffers one device needs (`compiled.memory_analysis().temp_size_in_bytes`; inputs, outputs and
gradients of the embeddings are not temporaries). Two sweeps: (i) a fixed global batch split
over more devices, (ii) a fixed per-device batch, so the global batch grows with n.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlm_jax import parallel  # noqa: E402
from vlm_jax.losses import sharded  # noqa: E402

# (row label, variant, bidirectional)
VARIANTS = [("gspmd", "gspmd", False), ("gather", "gather", False), ("ring", "ring", False),
            ("ring bidirectional", "ring", True)]
MIB = 2 ** 20


def temp_bytes(loss: str, variant: str, bidirectional: bool, num_devices: int, batch: int,
               dim: int) -> int:
    """Compiled per-device temporary bytes of loss and gradients (embeddings, scale, bias)."""
    mesh = parallel.make_mesh(dict(data=num_devices, fsdp=1, tensor=1),
                              jax.devices()[:num_devices])
    rows = NamedSharding(mesh, PartitionSpec(parallel.BATCH_AXES))
    replicated = NamedSharding(mesh, PartitionSpec())
    embeddings = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=rows)
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
    if loss == "softmax":
        fn = lambda x, y, s, b: sharded.sharded_softmax_contrastive_loss(
            x, y, s, mesh, variant, bidirectional=bidirectional)[0]
    else:
        fn = lambda x, y, s, b: sharded.sharded_sigmoid_contrastive_loss(
            x, y, s, b, mesh, variant, bidirectional=bidirectional)[0]
    step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
    compiled = step.lower(embeddings, embeddings, scalar, scalar).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def sweep(losses, devices, batch_for, dim) -> dict[tuple[str, str], list[float]]:
    """{(loss, row label): [MiB at each device count]}."""
    table = {}
    for loss in losses:
        for label, variant, bidirectional in VARIANTS:
            table[loss, label] = [
                temp_bytes(loss, variant, bidirectional, n, batch_for(n), dim) / MIB
                for n in devices]
            print(f"  {loss:8s} {label:20s}" + "".join(f"{v:10.1f}" for v in table[loss, label]),
                  file=sys.stderr, flush=True)
    return table


def format_table(title: str, devices, table) -> str:
    header = ("| loss | variant | " + " | ".join(f"{n} devices" for n in devices)
              + " | vs gspmd at " + f"{devices[-1]} | max/min over n |")
    lines = [f"**{title}** (temporary MiB per device)", "", header,
             "|" + "---|" * (len(devices) + 4)]
    for (loss, label), values in table.items():
        gspmd = table[loss, "gspmd"][-1]
        lines.append(f"| {loss} | {label} | " + " | ".join(f"{v:.1f}" for v in values)
                     + f" | {values[-1] / gspmd:.2f}x | {max(values) / min(values):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16384, help="global batch of sweep (i)")
    parser.add_argument("--per-device", type=int, default=2048, help="batch per device, (ii)")
    parser.add_argument("--dim", type=int, default=256, help="embedding width D")
    parser.add_argument("--devices", default="2,4,8", help="device counts, comma-separated")
    parser.add_argument("--losses", default="softmax,sigmoid")
    args = parser.parse_args()
    devices = [int(n) for n in args.devices.split(",")]
    losses = args.losses.split(",")
    jax.config.update("jax_num_cpu_devices", max(devices))  # before the backend starts
    uneven = [n for n in devices if args.batch % n]
    if uneven:
        sys.exit(f"--batch={args.batch} does not split evenly over {uneven} devices")
    if jax.device_count() < max(devices):
        sys.exit(f"{max(devices)} devices wanted, {jax.device_count()} present "
                 "(XLA_FLAGS --xla_force_host_platform_device_count overrides; unset it)")

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, D={args.dim}", file=sys.stderr)
    print(f"(i) global batch {args.batch}", file=sys.stderr)
    fixed_global = sweep(losses, devices, lambda n: args.batch, args.dim)
    print(f"(ii) {args.per_device} per device", file=sys.stderr)
    fixed_local = sweep(losses, devices, lambda n: args.per_device * n, args.dim)
    print(format_table(f"(i) global batch B={args.batch}, D={args.dim}", devices, fixed_global))
    print()
    print(format_table(f"(ii) {args.per_device} per device (B = {args.per_device} x n), "
                       f"D={args.dim}", devices, fixed_local))


if __name__ == "__main__":
    main()
