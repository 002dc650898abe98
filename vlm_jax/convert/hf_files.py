"""Hugging Face checkpoint directories: config.json + safetensors weights (pickle never loaded).

A source is a directory written by `save_pretrained`, or the name of a model that a Python
package ships (PACKAGED_MODELS), so that pretrained weights install with pip and nothing is
downloaded at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from vlm_jax.data.packaged import PACKAGED_MODELS, packaged_dir

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def resolve_source(source: str) -> Path:
    """The directory of a checkpoint: `source` itself, or a packaged model's directory."""
    if source in PACKAGED_MODELS:
        return packaged_dir(source)
    directory = Path(source)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{source} is not a directory; point to a Hugging Face checkpoint directory "
            f"(config.json + *.safetensors) or name a packaged model: {sorted(PACKAGED_MODELS)}")
    return directory


def read_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} has no config.json; it must be a Hugging Face "
                                "checkpoint directory written by save_pretrained")
    return json.loads(path.read_text())


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint (one file, or the shards its index lists)."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / shard for shard in shards]
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{directory} holds only pickle weights ({', '.join(pickles)}), which vlm_jax never "
            "loads (unpickling runs arbitrary code). Convert them to safetensors first, e.g. "
            "with transformers: Model.from_pretrained(dir).save_pretrained(new_dir)")
    raise FileNotFoundError(f"{directory} has no *.safetensors weights")


def read_weights(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as a float32 (or integer) NumPy array, by name."""
    tensors = {}
    for path in weight_files(directory):
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():
                array = handle.get_tensor(name)
                if np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16":
                    array = array.astype(np.float32)
                tensors[name] = array
    return tensors
