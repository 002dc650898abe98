"""A Hugging Face tokenizer.json (e.g. BERT's WordPiece) behind vlm_jax's tokenizer interface.

Same contract as the SentencePiece Tokenizer (tokenizer_base.py): `encode(texts, max_len)` ->
int32 [N, max_len] right-padded with the pad id, each row wrapped in the file's own markers
(BERT: "[CLS] ... [SEP]"), a text that does not fit truncated but still ending with the end
token; `decode`, `apply_chat_template`, added specials, `fingerprint`. The pad id is the file's
padding id, its [PAD] / <pad> token, or `pad_token`; it need not be 0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import tokenizers

from vlm_jax.data.packaged import PACKAGED_MODELS, is_gguf, packaged_dir
from vlm_jax.data.tokenizer_base import TokenizerBase

_PAD_TOKENS = ("[PAD]", "<pad>")


class JsonTokenizer(TokenizerBase):
    """Text <-> int32 token ids with a tokenizer.json file."""

    _adds_own_markers = True

    def __init__(self, path: str, specials: Sequence[str] = (), pad_token: str = ""):
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
        markers = self._tokenizer.encode("").ids  # what the post-processor adds to every text
        if len(markers) not in (1, 2):
            raise ValueError(f"{path} adds {markers} around an empty text; vlm_jax needs a "
                             "tokenizer that ends every text with one end token (e.g. BERT's)")
        self.bos_id = markers[0] if len(markers) == 2 else -1
        self.eos_id = markers[-1]
        padding = json.loads(data).get("padding") or {}
        found = padding.get("pad_id", _first_id(self._tokenizer, _PAD_TOKENS))
        self._file_pad_id = -1 if found is None else found
        self.pad_id = self._file_pad_id
        self.base_vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.base_fingerprint = hashlib.sha256(data).hexdigest()[:16]
        self._add_specials(specials, pad_token)

    def _base_token_id(self, name: str) -> int | None:
        return self._tokenizer.token_to_id(name)

    def _default_pad_id(self) -> int:
        return self._file_pad_id

    def _piece_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts)]

    def _decode_pieces(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


def _first_id(tokenizer: tokenizers.Tokenizer, names: Sequence[str]) -> int | None:
    for name in names:
        if (token_id := tokenizer.token_to_id(name)) is not None:
            return token_id
    return None


def is_json_tokenizer(name: str) -> bool:
    """Whether `config.data.tokenizer` names a tokenizer.json (a path or a packaged model)."""
    return str(name).endswith(".json") or (name in PACKAGED_MODELS and not is_gguf(name))


def load_json_tokenizer(name: str, specials: Sequence[str] = (),
                        pad_token: str = "") -> JsonTokenizer:
    """The tokenizer.json at `name`, or the one a packaged model ships ("minilm")."""
    if name in PACKAGED_MODELS:
        return JsonTokenizer(packaged_dir(name) / "tokenizer.json", specials, pad_token)
    return JsonTokenizer(name, specials, pad_token)
