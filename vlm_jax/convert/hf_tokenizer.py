"""Moved to vlm_jax.data.json_tokenizer (tokenizers belong to the data layer); re-exported here
so that `vlm_jax.convert.JsonTokenizer` and friends keep working."""

from vlm_jax.data.json_tokenizer import JsonTokenizer, is_json_tokenizer, load_json_tokenizer

__all__ = ["JsonTokenizer", "is_json_tokenizer", "load_json_tokenizer"]
