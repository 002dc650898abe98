"""A Hugging Face tokenizer.json (e.g. BERT's WordPiece) behind vlm_jax's Tokenizer interface.

Same contract as vlm_jax.data.tokenizer.Tokenizer: `encode(texts, max_len)` -> int32 [N, max_len]
right-padded with id 0, each row ending with the end token (BERT: "[CLS] ... [SEP]"), a text
that does not fit truncated but still ending with it; `decode`, `vocab_size`, `pad_id`,
`eos_id`, `bos_id`, `fingerprint`. Needs a tokenizer whose padding id is 0 (BERT's [PAD]).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers

from vlm_jax.convert import hf_files
from vlm_jax.data.tokenizer import PAD_ID, check_texts, id_rows, pack_ids

_PAD_TOKENS = ("[PAD]", "<pad>")


class JsonTokenizer:
    """Text <-> int32 token ids with a tokenizer.json file."""

    def __init__(self, path: str):
        self.path = str(path)
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"tokenizer file {path} does not exist; point to the "
                                    "tokenizer.json of a Hugging Face checkpoint") from None
        try:
            self._tokenizer = tokenizers.Tokenizer.from_str(data.decode())
        except Exception as error:  # the Rust library raises its own exception type
            raise ValueError(f"{path} is not a readable tokenizer.json ({error})") from None
        # Padding and truncation are ours (to the asked max_len, keeping the end token).
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        specials = self._tokenizer.encode("").ids  # what the post-processor adds to every text
        if len(specials) not in (1, 2):
            raise ValueError(f"{path} adds {specials} around an empty text; vlm_jax needs a "
                             "tokenizer that ends every text with one end token (e.g. BERT's)")
        self.bos_id = specials[0] if len(specials) == 2 else -1
        self.eos_id = specials[-1]
        padding = json.loads(data).get("padding") or {}
        pad_id = padding.get("pad_id", _first_id(self._tokenizer, _PAD_TOKENS))
        if pad_id != PAD_ID:
            raise ValueError(f"{path} pads with id {pad_id}; vlm_jax needs pad id {PAD_ID} "
                             "(zero-filled arrays are padding), as BERT-family tokenizers have")
        self.pad_id = PAD_ID
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.fingerprint = hashlib.sha256(data).hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"JsonTokenizer(path={self.path!r}, vocab_size={self.vocab_size}, "
                f"fingerprint={self.fingerprint!r})")

    def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """int32 [N, max_len]: the tokenizer's ids (with its special tokens), right-padded with
        0; a text that does not fit is truncated and still ends with the end token."""
        encodings = self._tokenizer.encode_batch([str(t) for t in check_texts(texts, max_len)])
        return pack_ids([e.ids for e in encodings], max_len, self.eos_id, self.pad_id)

    def decode(self, ids: np.ndarray) -> list[str]:
        """One text per row of int [N, L] (or [L]): stops at the end token, drops padding."""
        texts = []
        for row in id_rows(ids, self.vocab_size):
            if self.eos_id in row[1:]:
                row = row[: row.index(self.eos_id, 1)]
            row = [t for t in row if t not in (self.pad_id, self.bos_id)]
            texts.append(self._tokenizer.decode(row, skip_special_tokens=True))
        return texts


def _first_id(tokenizer: tokenizers.Tokenizer, names: Sequence[str]) -> int | None:
    for name in names:
        if (token_id := tokenizer.token_to_id(name)) is not None:
            return token_id
    return None


def is_json_tokenizer(name: str) -> bool:
    """Whether `config.data.tokenizer` names a tokenizer.json (a path or a packaged model)."""
    return str(name).endswith(".json") or name in hf_files.PACKAGED_MODELS


def load_json_tokenizer(name: str) -> JsonTokenizer:
    """The tokenizer.json at `name`, or the one a packaged model ships ("minilm")."""
    if name in hf_files.PACKAGED_MODELS:
        return JsonTokenizer(hf_files.resolve_source(name) / "tokenizer.json")
    return JsonTokenizer(name)
