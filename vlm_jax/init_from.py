"""Start training from saved or imported weights: `config.init_from` + `config.init_from_regex`.

`init_from` is one of
  - a directory written by the converter (`python -m vlm_jax.convert`): its `params/`,
  - a training workdir: the params of its latest checkpoint,
  - a Hugging Face checkpoint directory (config.json + safetensors) or a packaged model name
    ("minilm"), converted in memory.
`init_from_regex` selects, by full match on "/"-joined paths ("text_tower/block0/attn/query/
kernel"), which of the model's parameters are loaded; the rest keep their initial values. Every
selected parameter must exist in the source with the same shape, so a typo or another model's
checkpoint is an error rather than a silently random tower. Arrays are restored straight into
the state's shardings (orbax sources are read per shard; no host holds the whole model).
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from vlm_jax import checkpoint
from vlm_jax.convert import hf, hf_files


class InitFromError(checkpoint.CheckpointMismatchError):
    """`config.init_from` cannot fill the selected parameters; the message says why (and the
    CLI prints it as a one-line error, like any checkpoint that does not fit the model)."""


def load_into(state, source: str, regex: str = ".*", verbose: bool = True):
    """`state` with the params selected by `regex` replaced by those of `source`."""
    target = hf.flatten(state.params)
    selected = [path for path in target if re.fullmatch(regex, path)]
    if not selected:
        raise InitFromError(f"init_from_regex {regex!r} matches none of the model's parameters "
                            f"(e.g. {', '.join(list(target)[:3])})")
    try:
        shapes, read = _open(source)
    except (FileNotFoundError, KeyError, ValueError) as error:  # unreadable Hugging Face files
        raise InitFromError(f"init_from {source}: {error}") from None
    missing = [p for p in selected if p not in shapes]
    if missing:
        raise InitFromError(
            f"init_from {source} lacks {len(missing)} of the {len(selected)} parameters selected "
            f"by init_from_regex {regex!r}: {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}. Narrow the regex (e.g. 'text_tower/.*') or "
            "use a checkpoint of this model")
    wrong = [f"{p} {tuple(shapes[p])} vs model {tuple(target[p].shape)}"
             for p in selected if tuple(shapes[p]) != tuple(target[p].shape)]
    if wrong:
        raise InitFromError(
            f"init_from {source} has parameters of other shapes than this model: "
            f"{'; '.join(wrong[:4])}. Set the model config to the checkpoint's sizes (the "
            "converter writes them to model_config.json)")
    loaded = read({p: target[p] for p in selected})
    flat = {**target, **loaded}
    leaves = [flat[path] for path in target]
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state.params), leaves)
    if verbose:
        count = sum(int(np.prod(target[p].shape)) for p in selected)
        print(f"init_from {source}: loaded {len(selected)} of {len(target)} parameter arrays "
              f"({count:,} values) matching {regex!r}")
    return state.replace(params=params)


def _open(source: str):
    """({path: shape}, read) for `source`; read({path: target array}) -> {path: sharded array}."""
    path = Path(source).absolute()  # orbax reads no metadata through a relative path
    if (path / hf.PARAMS_DIR).is_dir():
        return _orbax_source(path / hf.PARAMS_DIR, prefix=())
    if (path / "checkpoints").is_dir():
        steps = sorted(int(p.name) for p in (path / "checkpoints").iterdir() if p.name.isdigit())
        if not steps:
            raise InitFromError(f"init_from {source} is a workdir without a complete checkpoint")
        return _orbax_source(path / "checkpoints" / str(steps[-1]) / "state", prefix=("params",))
    if source in hf_files.PACKAGED_MODELS or (path / "config.json").exists():
        return _converted_source(hf.convert_hf(source))
    if (path / "_METADATA").exists():
        return _orbax_source(path, prefix=())
    raise InitFromError(
        f"init_from {source} is neither a converter output (with params/), a training workdir "
        f"(with checkpoints/), a Hugging Face checkpoint (config.json + safetensors) nor a "
        f"packaged model ({', '.join(hf_files.PACKAGED_MODELS)})")


def _converted_source(converted: hf.Converted):
    arrays = hf.flatten(converted.params)

    def read(targets: dict) -> dict:
        return {p: _put(arrays[p], t) for p, t in targets.items()}

    return {p: a.shape for p, a in arrays.items()}, read


def _put(value: np.ndarray, target: jax.Array) -> jax.Array:
    """`value` as an array with `target`'s dtype and sharding (each process fills its shards)."""
    value = np.asarray(value, dtype=target.dtype)
    return jax.make_array_from_callback(value.shape, target.sharding, lambda index: value[index])


def _orbax_source(item_dir: Path, prefix: tuple[str, ...]):
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(item_dir).item_metadata.tree
    for key in prefix:
        metadata = metadata[key]
    shapes = {p: tuple(m.shape) for p, m in hf.flatten(metadata).items()}

    def read(targets: dict) -> dict:
        # Only the selected arrays are read, each straight into its target sharding.
        item, args = {}, {}
        for p, target in targets.items():
            keys = (*prefix, *p.split("/"))
            _set(item, keys, jax.ShapeDtypeStruct(target.shape, target.dtype,
                                                  sharding=target.sharding))
            _set(args, keys, ocp.ArrayRestoreArgs(sharding=target.sharding, dtype=target.dtype,
                                                  global_shape=target.shape))
        restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=args, partial_restore=True))
        for key in prefix:
            restored = restored[key]
        return hf.flatten(restored)

    return shapes, read


def _set(tree: dict, keys: tuple[str, ...], value) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value

