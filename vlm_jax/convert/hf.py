"""Convert a Hugging Face checkpoint (config.json + safetensors) into our params, and save it.

    converted = convert_hf("path/to/clip")      # or a packaged model name: convert_hf("minilm")
    save_converted(converted, "ckpt/clip")      # ckpt/clip/params (orbax) + model_config.json

`config.init_from` accepts the saved directory (or the Hugging Face directory itself).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from vlm_jax.convert import hf_bert, hf_clip, hf_files, hf_siglip
from vlm_jax.convert.torch_layout import Weights

# config.json "model_type" -> converter(config, weights) -> (model config, params)
CONVERTERS = {"clip": hf_clip.convert, "siglip": hf_siglip.convert, "bert": hf_bert.convert}
PARAMS_DIR, MODEL_CONFIG_FILE = "params", "model_config.json"


@dataclasses.dataclass
class Converted:
    """Our params (nested dicts of NumPy arrays) and the model config fields that fit them.

    `model` holds `config.model` fields (a whole two_tower for CLIP/SigLIP, `{"text": ...}` for a
    BERT text tower); `vocab_size` is the tokenizer size the text tower needs; `unused` lists
    checkpoint tensors that have no counterpart (e.g. BERT's pooler).
    """

    model_type: str
    model: dict
    params: dict
    vocab_size: int
    unused: list[str]
    source: str


def convert_hf(source: str) -> Converted:
    """Read and convert the checkpoint at `source` (a directory or a packaged model name)."""
    directory = hf_files.resolve_source(source)
    config = hf_files.read_config(directory)
    model_type = config.get("model_type")
    if model_type not in CONVERTERS:
        raise ValueError(f"{directory}/config.json has model_type {model_type!r}; vlm_jax "
                         f"imports {', '.join(sorted(CONVERTERS))}")
    weights = Weights(hf_files.read_weights(directory), source=str(directory))
    model, params = CONVERTERS[model_type](config, weights)
    vocab_size = int(_leaf(params, "text_tower/token_embedding/embedding").shape[0])
    unused = [name for name in weights.unused() if not name.endswith("position_ids")]
    return Converted(model_type, model, params, vocab_size, unused, str(directory))


def flatten(params: dict) -> dict[str, np.ndarray]:
    """{"a/b/c": leaf} of a nested dict of arrays."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat}


def _leaf(params: dict, path: str):
    for key in path.split("/"):
        params = params[key]
    return params


def save_converted(converted: Converted, out_dir: str, overwrite: bool = False) -> Path:
    """Write `out_dir/params` (an orbax PyTree checkpoint) and `out_dir/model_config.json`."""
    out = Path(out_dir).absolute()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; choose a new directory or pass "
                                  "--overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / PARAMS_DIR, converted.params)
    checkpointer.wait_until_finished()
    record = {"model_type": converted.model_type, "source": converted.source,
              "vocab_size": converted.vocab_size, "model": converted.model}
    (out / MODEL_CONFIG_FILE).write_text(json.dumps(record, indent=1))
    return out
