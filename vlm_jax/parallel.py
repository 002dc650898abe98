"""Device mesh, logical-axis sharding rules, global batches and multi-process start-up.

The mesh has three axes: `data` (batch), `fsdp` (batch + parameter/optimizer-state shards) and
`tensor` (heads / mlp). Parameters carry logical names; `config.sharding_rules` maps them to mesh
axes, so data parallel, FSDP and tensor parallel are mesh shapes, not code paths.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlm_jax.models import layers

MESH_AXES = ("data", "fsdp", "tensor")
# The batch placement when no rules are given; a config's `("batch", ...)` rule overrides it.
BATCH_AXES = ("data", "fsdp")
DEFAULT_HEARTBEAT_S = 100  # jax.distributed's heartbeat_timeout_seconds
# Set by srun inside a job step; sbatch alone sets only some (its script is one process).
_SLURM_STEP = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


def cluster_environment(environ: Mapping[str, str], on_tpu_vm: bool) -> str | None:
    """Which multi-process start this process is part of: "explicit", "slurm", "tpu" or None.

    explicit: VLM_JAX_COORDINATOR (host:port), VLM_JAX_NUM_PROCESSES, VLM_JAX_PROCESS_ID are
        set (launch/local.sh); slurm: inside an srun step of several tasks (launch/slurm.sbatch);
        tpu: on a Cloud TPU VM, where every host of a pod runs the same command
        (launch/tpu_pod.sh). None: one process.
    """
    if "VLM_JAX_COORDINATOR" in environ:
        return "explicit"
    if all(name in environ for name in _SLURM_STEP) and int(environ["SLURM_NTASKS"]) > 1:
        return "slurm"
    return "tpu" if on_tpu_vm else None


def on_cloud_tpu_vm() -> bool:
    """libtpu is installed and TPU chips are attached (/dev/accel* up to v4, /dev/vfio after)."""
    return importlib.util.find_spec("libtpu") is not None and bool(
        glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def maybe_initialize_distributed(environ: Mapping[str, str] = os.environ) -> str | None:
    """Join a multi-process run when the environment describes one; else stay single-process.

    Returns the `cluster_environment` joined. VLM_JAX_DISTRIBUTED_TIMEOUT (seconds) bounds the
    start-up wait for the other processes, the heartbeat that notices a dead one, and the
    shutdown barrier (jax's defaults: 300, 100, 300).
    """
    kind = cluster_environment(environ, on_cloud_tpu_vm())
    timeouts = {}
    if "VLM_JAX_DISTRIBUTED_TIMEOUT" in environ:
        seconds = int(environ["VLM_JAX_DISTRIBUTED_TIMEOUT"])
        timeouts = dict(initialization_timeout=seconds, heartbeat_timeout_seconds=seconds,
                        shutdown_timeout_seconds=seconds)
    if kind == "explicit":
        missing = [name for name in ("VLM_JAX_NUM_PROCESSES", "VLM_JAX_PROCESS_ID")
                   if name not in environ]
        if missing:
            raise ValueError(f"VLM_JAX_COORDINATOR is set, so {' and '.join(missing)} must be "
                             "set too (or use launch/local.sh, which sets all three)")
        jax.distributed.initialize(
            coordinator_address=environ["VLM_JAX_COORDINATOR"],
            num_processes=int(environ["VLM_JAX_NUM_PROCESSES"]),
            process_id=int(environ["VLM_JAX_PROCESS_ID"]),
            **timeouts,
        )
    elif kind == "slurm":
        # jax gives each task the one GPU numbered SLURM_LOCALID; a task that is alone on its
        # node drives all the node's GPUs instead.
        nodes = int(environ.get("SLURM_STEP_NUM_NODES", environ.get("SLURM_NNODES", "1")))
        local_device_ids = None
        if int(environ["SLURM_NTASKS"]) == nodes and "SLURM_GPUS_ON_NODE" in environ:
            local_device_ids = list(range(int(environ["SLURM_GPUS_ON_NODE"])))
        jax.distributed.initialize(cluster_detection_method="slurm",
                                   local_device_ids=local_device_ids, **timeouts)
    elif kind == "tpu":
        # jax reads the pod's hosts and this host's index from the TPU VM metadata.
        jax.distributed.initialize(**timeouts)
    if kind is not None and jax.default_backend() == "cpu":
        # A CPU executable read back from the persistent compilation cache brings no gloo
        # rendezvous of this run: its first collective times out ("Gloo context initialization
        # failed"; measured with JAX_COMPILATION_CACHE_DIR set, jax 0.12). Compile afresh.
        jax.config.update("jax_enable_compilation_cache", False)
    if kind is not None:
        from vlm_jax import peers  # a dead peer: one line, not jax's C++ abort

        peers.start(float(environ.get("VLM_JAX_DISTRIBUTED_TIMEOUT", DEFAULT_HEARTBEAT_S)))
    return kind


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


def batch_axes(rules: Sequence[tuple[str, object]] | None = None) -> tuple[str, ...]:
    """The mesh axes the leading (batch) dimension is split over: the `batch` rule of `rules`
    (`logical_rules(config)`), or BATCH_AXES without rules. A rule mapping batch to None
    replicates batches."""
    if rules is None:
        return BATCH_AXES
    for name, axes in rules:
        if name == "batch":
            if axes is None:
                return ()
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            unknown = [axis for axis in axes if axis not in MESH_AXES]
            if unknown:
                raise ValueError(f"sharding rule ('batch', {axes}) names mesh axis "
                                 f"{unknown[0]!r}; the mesh axes are {MESH_AXES}")
            return axes
    raise ValueError("sharding_rules has no ('batch', ...) rule; add one, e.g. "
                     "('batch', ('data', 'fsdp'))")


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, object]] | None = None
                   ) -> NamedSharding:
    """Leading (batch) dimension split over `batch_axes(rules)`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(rules) or None))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh,
                 rules: Sequence[tuple[str, object]] | None = None) -> dict[str, jax.Array]:
    """Assemble per-process arrays into global jax.Arrays sharded over the batch axes (of
    `rules`' batch rule when given, else BATCH_AXES)."""
    sharding = batch_sharding(mesh, rules)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Sequence[tuple[str, object]]):
    """The context in which the blocks' activation constraints (`layers.constrain`: [batch,
    length, embed] by logical name) take effect while a model is traced: the logical rules and
    the mesh. Outside it the constraints are no-ops; trace the train step inside it."""
    with nn.logical_axis_rules(rules), layers.activation_mesh(mesh):
        yield

