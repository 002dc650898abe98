"""Tower sizes from config: the ViT variant table ("B/16": width 768, depth 12, ...) and the
decoding of a tower config (`variant`, explicit sizes) into a module's keyword arguments.

Also `model_fields`: the model config's own fields, checked against the module's dataclass
fields, so every default lives once, on the module.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import ml_collections

# name -> (width, depth, num_heads, mlp_dim); used for the text towers' sizes too.
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "So400m": (1152, 27, 16, 4304),
}
_SIZE_KEYS = ("width", "depth", "num_heads", "mlp_dim", "patch_size")
# Keys of `config.model` that are not module fields: the registry's and the towers'.
_STRUCTURE_KEYS = ("name", "execution")


def decode_variant(variant: str) -> dict:
    """Sizes of a variant: "B/16" -> width, depth, num_heads, mlp_dim, patch_size (16)."""
    match = re.fullmatch(r"(\w+?)(?:/(\d+))?", variant)
    if not match or match.group(1) not in VARIANTS:
        raise ValueError(f"unknown ViT variant {variant!r}; use one of {sorted(VARIANTS)}[/patch]")
    width, depth, num_heads, mlp_dim = VARIANTS[match.group(1)]
    sizes = dict(width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim)
    if match.group(2):
        sizes["patch_size"] = int(match.group(2))
    return sizes


def tower_kwargs(tower: ml_collections.ConfigDict) -> dict:
    """A tower's kwargs: sizes decoded from `variant`, then any nonzero explicit size wins."""
    kwargs = dict(tower.to_dict())
    variant = kwargs.pop("variant", "")
    sizes = decode_variant(variant) if variant else {}
    for key in _SIZE_KEYS:
        if kwargs.get(key):
            sizes[key] = kwargs[key]
        kwargs.pop(key, None)
    kwargs.update(sizes)
    missing = [k for k in ("width", "depth", "num_heads", "mlp_dim") if k not in kwargs]
    if missing:
        raise ValueError(f"tower config needs a variant or explicit {', '.join(missing)}")
    return kwargs


def sequence_kwargs(tower: ml_collections.ConfigDict, **extra) -> dict:
    """A token tower's (text, decoder) kwargs: `tower_kwargs` without the patch size."""
    kwargs = tower_kwargs(tower)
    kwargs.pop("patch_size", None)
    return {**kwargs, **extra}


def text_kwargs(tower: ml_collections.ConfigDict, vocab_size: int, execution) -> dict:
    """A two-tower text tower's kwargs; the transformer tower computes as `execution` says
    (BERT's post-norm blocks run unpadded and unrolled)."""
    kwargs = sequence_kwargs(tower, vocab_size=vocab_size)
    if kwargs.get("type", "transformer") == "transformer":
        kwargs["execution"] = execution
    return kwargs


def model_fields(module_cls: type, model_config: ml_collections.ConfigDict,
                 towers: Iterable[str]) -> dict[str, Any]:
    """The scalar fields of `model_config` (all but name, execution and the `towers`), each
    checked to be a field of `module_cls`: a key the module does not take is an error."""
    known = {field.name for field in dataclasses.fields(module_cls)}
    skip = set(_STRUCTURE_KEYS) | set(towers)
    fields = {key: value for key, value in model_config.items() if key not in skip}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not a field of {module_cls.__name__} "
                         f"(model.name={model_config.get('name')!r}); remove it or check the "
                         f"spelling; known: {sorted(known - skip - {'dtype', 'parent'})}")
    return fields
