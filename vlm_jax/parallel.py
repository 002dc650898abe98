"""Device mesh, logical-axis sharding rules, global batches and multi-process start-up.

The mesh has three axes: `data` (batch), `fsdp` (batch + parameter/optimizer-state shards) and
`tensor` (heads / mlp). Parameters carry logical names; `config.sharding_rules` maps them to mesh
axes, so data parallel, FSDP and tensor parallel are mesh shapes, not code paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed() -> None:
    """Join a multi-process run when the environment describes one; else stay single-process.

    Explicit: VLM_JAX_COORDINATOR (host:port), VLM_JAX_NUM_PROCESSES, VLM_JAX_PROCESS_ID.
    """
    if "VLM_JAX_COORDINATOR" in os.environ:
        jax.distributed.initialize(
            coordinator_address=os.environ["VLM_JAX_COORDINATOR"],
            num_processes=int(os.environ["VLM_JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["VLM_JAX_PROCESS_ID"]),
        )


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolve the (data, fsdp, tensor) sizes; one axis may be -1 meaning "the rest"."""
    sizes = [int(mesh_config[a]) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
            f"but {num_devices} are present; set mesh.data=-1 to use the rest"
        )
    return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes (jax>=0.12 defaults to Explicit)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    try:
        from jax.sharding import AxisType

        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    except (ImportError, TypeError):  # older jax: no axis types, Auto is the only behaviour
        from jax.experimental import mesh_utils

        return Mesh(mesh_utils.create_device_mesh(shape, devices), MESH_AXES)


def logical_rules(config: ml_collections.ConfigDict) -> tuple[tuple[str, object], ...]:
    """`config.sharding_rules` as flax logical axis rules (lists become tuples)."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                 for name, axes in config.sharding_rules)


def logical_shardings(abstract_boxed, mesh: Mesh, rules) -> object:
    """NamedShardings for a tree whose leaves carry logical names (flax Partitioned boxes)."""
    specs = nn.get_partition_spec(abstract_boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble per-process arrays into global jax.Arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def host_apply(fn, mesh: Mesh):
    """`fn(params, x)` under jit with x's batch split over the batch axes; NumPy in and out.

    Every process passes the same full `x` (e.g. an eval chunk) and gets the full result back.
    `len(x)` must be a multiple of the number of batch shards.
    """
    jitted = jax.jit(fn, out_shardings=NamedSharding(mesh, PartitionSpec()))
    sharding = batch_sharding(mesh)

    def run(params, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        global_x = jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
        return np.asarray(jitted(params, global_x).addressable_data(0))

    return run
