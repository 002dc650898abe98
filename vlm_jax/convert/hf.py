"""Convert a Hugging Face checkpoint (config.json + safetensors) into our params, and save it.

    converted = convert_hf("path/to/clip")      # or a packaged model name: convert_hf("minilm")
    converted = convert_hf("smollm2")           # a GGUF file (path or packaged): convert/gguf_llama
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

from vlm_jax.convert import (
    gguf_llama,
    hf_bert,
    hf_blip2_gen,
    hf_clip,
    hf_files,
    hf_llama,
    hf_llava,
    hf_siglip,
)
from vlm_jax.convert.torch_layout import Weights
from vlm_jax.data import packaged

# config.json "model_type" -> converter(config, weights) -> (model config, params)
CONVERTERS = {
    "clip": hf_clip.convert, "clip_vision_model": hf_clip.convert_vision,
    "clip_text_model": hf_clip.convert_text,
    "siglip": hf_siglip.convert, "siglip_vision_model": hf_siglip.convert_vision,
    "siglip_text_model": hf_siglip.convert_text,
    "bert": hf_bert.convert, "llama": hf_llama.convert, "llava": hf_llava.convert,
    "blip-2": hf_blip2_gen.convert,
}
# A two-tower model_type whose files hold one tower only converts as that tower's own type
# (its sub-config and weight names are those of CLIPVisionModel, SiglipTextModel, ...).
ONE_TOWER = {"clip": ("clip_vision_model", "clip_text_model"),
             "siglip": ("siglip_vision_model", "siglip_text_model")}
# Where a converted tree keeps its token embedding ([vocab, D]), whose rows set the vocab size.
TOKEN_EMBEDDINGS = ("text_tower/token_embedding/embedding", "lm/token_embedding/embedding")
PARAMS_DIR, MODEL_CONFIG_FILE = "params", "model_config.json"


@dataclasses.dataclass
class Converted:
    """Our params (nested dicts of NumPy arrays) and the model config fields that fit them.

    `model` holds `config.model` fields (a whole two_tower for CLIP/SigLIP, `{"text": ...}` for a
    BERT or other text tower alone, `{"image": ...}` for a vision tower alone, `{"lm": ...}` for
    a Llama decoder, a whole prefix_vlm for LLaVA and BLIP-2 stage 2); `vocab_size` is the
    tokenizer size its token embedding needs (None for a vision tower alone); `unused` lists
    checkpoint tensors that have no counterpart (e.g. BERT's pooler).
    """

    model_type: str
    model: dict
    params: dict
    vocab_size: int | None
    unused: list[str]
    source: str


def convert_hf(source: str) -> Converted:
    """Read and convert the checkpoint at `source`: a directory, a llama.cpp .gguf file, or a
    packaged model name ("minilm", "smollm2")."""
    if packaged.is_gguf(source):
        path = packaged.gguf_path(source)
        model, params, _ = gguf_llama.convert_file(path)
        return Converted("llama", model, params, model["lm"]["vocab_size"], [], str(path))
    directory = hf_files.resolve_source(source)
    config = hf_files.read_config(directory)
    model_type = config.get("model_type")
    if model_type not in CONVERTERS:
        raise ValueError(f"{directory}/config.json has model_type {model_type!r}; vlm_jax "
                         f"imports {', '.join(sorted(CONVERTERS))}")
    tensors = hf_files.read_weights(directory)
    if model_type in ONE_TOWER:
        model_type, config = _present_towers(model_type, config, tensors, directory)
    weights = Weights(tensors, source=str(directory))
    model, params = CONVERTERS[model_type](config, weights)
    flat = flatten(params)
    vocab_size = next((int(flat[p].shape[0]) for p in TOKEN_EMBEDDINGS if p in flat), None)
    unused = [name for name in weights.unused() if not name.endswith("position_ids")]
    return Converted(model_type, model, params, vocab_size, unused, str(directory))


def _present_towers(model_type: str, config: dict, tensors: dict,
                    directory: Path) -> tuple[str, dict]:
    """(model_type, config) to convert: the whole model, or the one tower the files hold."""
    has_vision = any(name.startswith("vision_model.") for name in tensors)
    has_text = any(name.startswith("text_model.") for name in tensors)
    vision_type, text_type = ONE_TOWER[model_type]
    if has_vision and has_text:
        return model_type, config
    if has_vision:
        return vision_type, config.get("vision_config", {})
    if has_text:
        return text_type, config.get("text_config", {})
    raise ValueError(f"{directory} is a {model_type} checkpoint without vision_model.* or "
                     f"text_model.* tensors (it has {', '.join(sorted(tensors)[:3]) or 'none'}); "
                     "point to the directory save_pretrained wrote for the model")


def flatten(params: dict) -> dict[str, np.ndarray]:
    """{"a/b/c": leaf} of a nested dict of arrays."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat}


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
