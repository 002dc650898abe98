"""Start training from saved or imported weights: `config.init_from` + `config.init_from_regex`.

`init_from` is one source, or a map from parameter-path prefix to source. A source is
  - a directory written by the converter (`python -m vlm_jax.convert`): its `params/`,
  - a training workdir: the params of its latest checkpoint (never its optimizer state),
  - a Hugging Face checkpoint directory (config.json + safetensors), a llama.cpp .gguf file,
    or a packaged model name ("minilm", "smollm2"), converted in memory.

One source, `init_from="runs/siglip"`: `init_from_regex` selects, by full match on "/"-joined
paths ("text_tower/block0/attn/query/kernel"), which of the model's parameters are loaded; each
must exist in the source at the same path with the same shape.

A map, `init_from="{'image_tower': 'runs/siglip:image_tower', 'lm': 'path/to/hf_llama'}"` (a
dict literal in the string field, so it survives `--config.init_from=...` and config.json; a
dict, ConfigDict or (prefix, source) pairs are accepted too): each entry loads the subtree of
its source under `source_prefix` (after the last ":"; "src:" alone means the source's whole
tree; without ":", the source's subtree of the same name if it has one, else its whole tree)
into the model's subtree under the entry's prefix, path for path. The subtrees must match
exactly (same paths, same shapes), entries may not overlap, and parameters no entry covers
(or that `init_from_regex` excludes) keep their fresh initialisation. big_vision's PaliGemma
loads `init_files = {"img": ..., "llm": ...}` the same way.

Either way a typo or another model's checkpoint is an error rather than a silently random
tower, and arrays are restored straight into the state's shardings (orbax sources are read per
shard; no host holds the whole model).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vlm_jax import checkpoint
from vlm_jax.convert import hf, hf_files
from vlm_jax.data import packaged


class InitFromError(checkpoint.CheckpointMismatchError):
    """`config.init_from` cannot fill the selected parameters; the message says why (and the
    CLI prints it as a one-line error, like any checkpoint that does not fit the model)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One map entry: the model's subtree `target` <- `source`'s subtree `source_prefix`
    (None: the same name if the source has it, else its root)."""

    target: str
    source: str
    source_prefix: str | None

    def __str__(self) -> str:
        suffix = "" if self.source_prefix is None else f":{self.source_prefix}"
        return f"{self.target!r} <- {self.source + suffix!r}"


def load_into(state, spec, regex: str = ".*", verbose: bool = True):
    """`state` with params replaced from `spec`: one source (str) loaded where `regex` selects,
    or a map {target prefix: "source[:source prefix]"} (see the module doc)."""
    entries = parse_spec(spec)
    if entries is None:
        return _load_one(state, spec, regex, verbose)
    return _load_map(state, entries, regex, verbose)


def parse_spec(spec) -> list[Entry] | None:
    """The entries of a map spec; None for a single source string."""
    if isinstance(spec, str):
        if not spec.lstrip().startswith("{"):
            return None
        try:
            spec = ast.literal_eval(spec)
        except (ValueError, SyntaxError):
            raise InitFromError(
                f"init_from {spec!r} starts with '{{' but is no dict literal; write it as "
                "\"{'image_tower': 'runs/a:image_tower', 'text_tower': 'minilm'}\"") from None
    is_map = isinstance(spec, (Mapping, ml_collections.ConfigDict))  # ConfigDict: no Mapping
    pairs = list(spec.items()) if is_map else list(spec)
    if not pairs:
        raise InitFromError("init_from is an empty map; give at least one "
                            "{'target/prefix': 'source'} entry, or '' for a fresh init")
    entries = []
    for pair in pairs:
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(s, str) for s in pair)):
            raise InitFromError(f"init_from entry {pair!r} is not a (target prefix, source) pair "
                                "of strings, e.g. ('image_tower', 'runs/siglip:image_tower')")
        target, source = pair
        source, source_prefix = _split_source(source)
        entries.append(Entry(target.strip("/"), source, source_prefix))
    for i, first in enumerate(entries):
        for second in entries[i + 1:]:
            if _under(first.target, second.target) or _under(second.target, first.target):
                raise InitFromError(
                    f"init_from entries {first} and {second} overlap: every parameter may come "
                    "from one source only; drop one entry or make the prefixes disjoint")
    return entries


def _split_source(text: str) -> tuple[str, str | None]:
    """"runs/a:image_tower" -> ("runs/a", "image_tower"); "gs://b/run" keeps its "://"."""
    head, colon, tail = text.rpartition(":")
    if colon and head and not tail.startswith("/"):
        return head, tail.strip("/")
    return text, None


def _under(path: str, prefix: str) -> bool:
    """`path` is `prefix` or below it, by whole path components ("" is the root)."""
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _rebase(path: str, old: str, new: str) -> str:
    rest = path[len(old):].lstrip("/") if old else path
    return "/".join(part for part in (new, rest) if part)


def _top_names(paths) -> str:
    return ", ".join(sorted({p.split("/")[0] for p in paths}))


def _load_map(state, entries: list[Entry], regex: str, verbose: bool):
    target = hf.flatten(state.params)
    opened, loaded, arrays = {}, {}, {}
    for entry in entries:  # every entry is checked before any array is read
        if entry.source not in opened:
            opened[entry.source] = _open_checked(entry.source)  # each source converted once
        loaded[entry] = _match(entry, target, opened[entry.source][0], regex)
    for entry, pairs in loaded.items():  # {model path: source path}
        # One read per entry: two entries may take one source path into differently sharded
        # targets.
        from_source = opened[entry.source][1]({s: target[t] for t, s in pairs.items()})
        arrays.update({t: from_source[s] for t, s in pairs.items()})
    flat = {**target, **arrays}
    leaves = [flat[path] for path in target]
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state.params), leaves)
    if verbose:
        for entry, pairs in loaded.items():
            count = sum(int(np.prod(target[t].shape)) for t in pairs)
            print(f"init_from {entry}: loaded {len(pairs)} parameter arrays ({count:,} values)")
        print(f"init_from: {len(arrays)} of {len(target)} parameter arrays loaded, the rest keep "
              "their fresh initialisation")
    return state.replace(params=params)


def _match(entry: Entry, target: dict, shapes: dict, regex: str) -> dict[str, str]:
    """{model path: source path} of one entry, after checking both subtrees fit each other."""
    covered = [p for p in target if _under(p, entry.target)]
    if not covered:
        raise InitFromError(
            f"init_from entry {entry}: the model has no parameter under {entry.target!r}; its "
            f"top-level names are {_top_names(target)}; use one of them (or a path below one)")
    prefix = entry.source_prefix
    if prefix is None:  # same name if the source has that subtree, else the source's root
        prefix = entry.target if any(_under(p, entry.target) for p in shapes) else ""
    in_source = [p for p in shapes if _under(p, prefix)]
    if not in_source:
        raise InitFromError(
            f"init_from entry {entry}: the source has no parameter under {prefix!r}; its "
            f"top-level names are {_top_names(shapes)}; write source:prefix with one of them")
    pairs = {p: _rebase(p, entry.target, prefix) for p in covered}
    missing = [f"{t} (source {s})" for t, s in pairs.items() if s not in shapes]
    if missing:
        raise InitFromError(
            f"init_from entry {entry}: the source lacks {len(missing)} of the "
            f"{len(pairs)} model parameters under {entry.target!r}: {_listed(missing, 4)}"
            "; map a narrower prefix or another source")
    mapped = set(pairs.values())
    extra = [s for s in in_source if s not in mapped]
    if extra:
        raise InitFromError(
            f"init_from entry {entry}: the source has {len(extra)} parameters under "
            f"{prefix!r} that the model lacks under {entry.target!r}: {_listed(extra, 4)}"
            "; set the model config to the source's sizes "
            "or map a narrower prefix")
    wrong = [f"model {t} {tuple(target[t].shape)} vs source {s} {tuple(shapes[s])}"
             for t, s in pairs.items() if tuple(shapes[s]) != tuple(target[t].shape)]
    if wrong:
        raise InitFromError(
            f"init_from entry {entry}: shapes differ: {_listed(wrong, 4, '; ')}"
            "; set the model config to the source's sizes "
            "(the converter writes them to model_config.json)")
    selected = {t: s for t, s in pairs.items() if re.fullmatch(regex, t)}
    if not selected:
        raise InitFromError(f"init_from entry {entry}: init_from_regex {regex!r} excludes every "
                            f"parameter under {entry.target!r}; widen the regex or drop the entry")
    return selected


def _open_checked(source: str):
    try:
        return _open(source)
    except (FileNotFoundError, KeyError, ValueError) as error:  # unreadable Hugging Face files
        raise InitFromError(f"init_from {source}: {error}") from None


def _load_one(state, source: str, regex: str, verbose: bool):
    """The single-source form: the params selected by `regex`, at the same paths in `source`."""
    target = hf.flatten(state.params)
    selected = [path for path in target if re.fullmatch(regex, path)]
    if not selected:
        raise InitFromError(f"init_from_regex {regex!r} matches none of the model's parameters "
                            f"(e.g. {', '.join(list(target)[:3])})")
    shapes, read = _open_checked(source)
    missing = [p for p in selected if p not in shapes]
    if missing:
        raise InitFromError(
            f"init_from {source} lacks {len(missing)} of the {len(selected)} parameters selected "
            f"by init_from_regex {regex!r}: {_listed(missing, 6)}"
            ". Narrow the regex (e.g. 'text_tower/.*') or "
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
    if (source in hf_files.PACKAGED_MODELS or (path / "config.json").exists()
            or packaged.is_gguf(source)):
        return _converted_source(hf.convert_hf(source))
    if (path / "_METADATA").exists():
        return _orbax_source(path, prefix=())
    raise InitFromError(
        f"init_from {source} is neither a converter output (with params/), a training workdir "
        f"(with checkpoints/), a Hugging Face checkpoint (config.json + safetensors), a GGUF "
        f"file nor a packaged model ({', '.join(hf_files.PACKAGED_MODELS)})")


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


def _listed(names: list[str], most: int, separator: str = ", ") -> str:
    """The first `most` of `names` joined, with " ..." when there are more."""
    return separator.join(names[:most]) + (" ..." if len(names) > most else "")
