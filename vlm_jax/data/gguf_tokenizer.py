"""The tokenizer a llama.cpp GGUF file carries (byte-level BPE, "gpt2" in its metadata), behind
vlm_jax's tokenizer interface; `data.tokenizer="smollm2"` or a .gguf path selects it.

Built with the `tokenizers` library from the metadata: the vocabulary (`tokenizer.ggml.tokens`),
the merges, the pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`, and the control tokens
(token_type 3, e.g. <|im_start|>) matched whole inside texts. Ids: eos/bos from the metadata;
the pad id is the file's padding id unless it equals the end id (SmolLM2 pads with
<|im_end|>, its end token, which vlm_jax's layout cannot tell apart), then the file's unknown
token (SmolLM2: <|endoftext|>, id 0), or `data.pad_token`.

`apply_chat_template` writes ChatML when the file's chat template is ChatML:
    <|im_start|>{role}\\n{text}<|im_end|>\\n   per turn,
with the template's default system turn first when the conversation has none; the loss mask
is 1 on assistant text and its <|im_end|>.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from vlm_jax.data import packaged
from vlm_jax.data.tokenizer_base import ASSISTANT, CHAT_ROLES, TokenizerBase

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.S)


def _pre_tokenizer(kind: str):
    """llama.cpp's pre-tokenizer `kind` (tokenizer.ggml.pre): "smollm" (like StarCoder) splits
    every digit off, then applies GPT-2's regex; "gpt2" / "default" GPT-2's regex alone."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind in ("smollm", "starcoder", "refact"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        byte_level])
    if kind in ("gpt2", "default", None):
        return byte_level
    raise ValueError(f"GGUF tokenizer.ggml.pre {kind!r} is not supported; vlm_jax knows "
                     "smollm, starcoder, refact, gpt2 and default")


def build_tokenizer(metadata: dict) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` from GGUF tokenizer metadata (byte-level BPE only)."""
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"GGUF tokenizer.ggml.model is {model!r}; vlm_jax reads byte-level BPE "
                         "('gpt2') tokenizers only")
    tokens = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(metadata.get("tokenizer.ggml.pre"))
    tokenizer.decoder = decoders.ByteLevel()
    types = list(metadata.get("tokenizer.ggml.token_type") or [])
    control = [t for t, kind in zip(tokens, types, strict=True) if kind == _CONTROL]
    user = [t for t, kind in zip(tokens, types, strict=True) if kind == _USER_DEFINED]
    tokenizer.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                                  for t in control])
    tokenizer.add_tokens([tokenizers.AddedToken(t, normalized=False) for t in user])
    return tokenizer


def read_metadata(path) -> dict:
    """The tokenizer.* and general.* metadata of a GGUF file (no tensors are read)."""
    import gguf  # only when a GGUF file is read

    reader = gguf.GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items()
            if key.startswith(("tokenizer.", "general."))}


class GGUFTokenizer(TokenizerBase):
    """Text <-> int32 token ids with the tokenizer stored in a GGUF file."""

    def __init__(self, path: str, specials: Sequence[str] = (), pad_token: str = "",
                 metadata: dict | None = None):
        self.path = str(path)
        metadata = read_metadata(path) if metadata is None else metadata
        self._tokenizer = build_tokenizer(metadata)
        self.base_vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id = int(metadata["tokenizer.ggml.eos_token_id"])
        self.bos_id = int(metadata.get("tokenizer.ggml.bos_token_id", -1))
        self._file_pad_id = -1
        for key in ("tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id"):
            if key in metadata and int(metadata[key]) != self.eos_id:
                self._file_pad_id = int(metadata[key])
                break
        self.pad_id = self._file_pad_id
        self.chat_template = str(metadata.get("tokenizer.chat_template", ""))
        system = _DEFAULT_SYSTEM.search(self.chat_template)
        self.default_system = system.group(1) if system else None
        self.base_fingerprint = hashlib.sha256(
            self._tokenizer.to_str().encode()).hexdigest()[:16]
        self._add_specials(specials, pad_token)

    def _base_token_id(self, name: str) -> int | None:
        return self._tokenizer.token_to_id(name)

    def _default_pad_id(self) -> int:
        return self._file_pad_id

    def _piece_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _decode_pieces(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    @property
    def is_chatml(self) -> bool:
        return CHATML_START in self.chat_template

    def apply_chat_template(self, turns: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """(ids, loss_mask) of a conversation in ChatML (module doc); a file whose template is
        not ChatML gets the base class's layout."""
        if not self.is_chatml:
            return super().apply_chat_template(turns)
        if isinstance(turns, str) or not turns:
            raise TypeError("apply_chat_template takes a non-empty list of (role, text) turns")
        turns = list(turns)
        if turns[0][0] != "system" and self.default_system is not None:
            turns.insert(0, ("system", self.default_system))
        ids, loss = [], []
        end, newline = self.token_id(CHATML_END), self.text_ids("\n")
        for turn in turns:
            if len(turn) != 2 or turn[0] not in CHAT_ROLES:
                raise ValueError(f"chat turn {turn!r} must be (role, text) with role one of "
                                 f"{sorted(CHAT_ROLES)}")
            role, text = turn
            header = self.text_ids(f"{CHATML_START}{role}\n")
            body = self.text_ids(str(text)) + [end]
            ids += header + body + newline
            loss += [0] * len(header) + [int(role == ASSISTANT)] * len(body) + [0] * len(newline)
        return ids, loss


_CACHE: dict[str, dict] = {}


def load_gguf_tokenizer(name: str, specials: Sequence[str] = (),
                        pad_token: str = "") -> GGUFTokenizer:
    """The tokenizer of GGUF file `name` (a path or a packaged model, "smollm2"). The metadata
    of each file is read once per process (opening a GGUF file parses every field)."""
    path = str(packaged.gguf_path(name))
    if path not in _CACHE:
        _CACHE[path] = read_metadata(path)
    return GGUFTokenizer(path, specials, pad_token, metadata=_CACHE[path])

