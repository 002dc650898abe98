"""Importers of public checkpoints (Hugging Face safetensors) into our params.

CLIP and SigLIP (both towers, projections, logit scale and bias, or one tower alone),
BERT-family text encoders (MiniLM, ...) and Llama decoders (a plain named tree, hf_llama.py).
`python -m vlm_jax.convert SRC OUT` writes an orbax checkpoint that `config.init_from=OUT` (or
one entry of an init_from map) starts training from; see vlm_jax/convert/cli.py.
"""

from vlm_jax.convert.hf import CONVERTERS, Converted, convert_hf, flatten, save_converted
from vlm_jax.convert.hf_files import PACKAGED_MODELS, resolve_source
from vlm_jax.convert.hf_tokenizer import JsonTokenizer, is_json_tokenizer, load_json_tokenizer

__all__ = [
    "CONVERTERS", "Converted", "JsonTokenizer", "PACKAGED_MODELS", "convert_hf", "flatten",
    "is_json_tokenizer", "load_json_tokenizer", "resolve_source", "save_converted",
]
