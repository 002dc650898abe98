"""What every tokenizer shares: added special tokens, BOS/EOS, padding, a chat template.

A concrete tokenizer (SentencePiece in tokenizer.py, tokenizer.json in json_tokenizer.py) supplies
the pieces of plain text (`_piece_ids`, `_decode_pieces`) and its own ids; this base adds
  * special tokens appended after the base vocabulary (ids base_vocab, base_vocab + 1, ...),
    recognised verbatim inside texts: image placeholders, begin/end of image, image codes, [MASK];
    a special the base vocabulary already has keeps its id;
  * a pad id that need not be 0 (`pad_token` names any token, added ones included);
  * `encode` (EOS last, optional BOS, right-padded), `decode`, and `apply_chat_template`;
  * a fingerprint of everything that maps text to ids, so a checkpoint trained with other ids
    is refused: the base file's hash, extended by the added tokens and the pad id when present.
"""

from __future__ import annotations

import abc
import hashlib
import json
import re
from collections.abc import Sequence

import numpy as np

# Role -> the text that opens its turn. The assistant's turn ends with EOS and is the only
# part the loss sees (LLaVA's rule: instruction and role markers masked, answer + EOS supervised).
CHAT_ROLES = {"system": "system:", "user": "user:", "assistant": "assistant:"}
ASSISTANT = "assistant"


class TokenizerBase(abc.ABC):
    """Shared encode/decode over `_piece_ids` / `_decode_pieces` of a concrete tokenizer.

    Subclasses set base_vocab_size, bos_id (-1: none), eos_id, pad_id (-1: none) and
    base_fingerprint, then call `_add_specials`.
    """

    base_vocab_size: int
    base_fingerprint: str
    bos_id: int
    eos_id: int
    pad_id: int
    path: str

    # --- set up by subclasses -----------------------------------------------------------------
    def _add_specials(self, specials: Sequence[str], pad_token: str = "") -> None:
        """Append `specials` (deduplicated, order kept) and pick the pad id; sets vocab_size."""
        self.special_ids: dict[str, int] = {}
        added = []
        for name in dict.fromkeys(specials):
            if not name or name.isspace():
                raise ValueError(f"special token {name!r} is empty; name it, e.g. '<image>'")
            existing = self._base_token_id(name)
            if existing is None:
                existing = self.base_vocab_size + len(added)
                added.append(name)
            self.special_ids[name] = existing
        self.added_tokens = tuple(added)
        self.vocab_size = self.base_vocab_size + len(added)
        if pad_token:
            if pad_token not in self.special_ids and self._base_token_id(pad_token) is None:
                raise ValueError(
                    f"data.pad_token {pad_token!r} is not a token of {self.path}; add it to "
                    "data.special_tokens or name one the vocabulary has")
            self.pad_id = self.special_ids.get(pad_token, self._base_token_id(pad_token))
        if self.pad_id < 0:
            raise ValueError(
                f"{self.path} has no padding token; set data.pad_token (e.g. '<pad>', added to "
                "data.special_tokens) so that batches can be padded")
        if self.pad_id == self.eos_id:
            raise ValueError(f"{self.path}: the pad id {self.pad_id} equals the end id; pick "
                             "another data.pad_token")
        self._id_to_special = {i: name for name, i in self.special_ids.items()}
        self._special_pattern = (
            re.compile("(" + "|".join(re.escape(s) for s in sorted(
                self.special_ids, key=len, reverse=True)) + ")")
            if self.special_ids else None)
        extension = {"added": list(added), "pad_id": self.pad_id}
        if not added and self.pad_id == self._default_pad_id():
            # Unchanged ids: keep the file's own fingerprint, so existing runs still resume.
            self.fingerprint = self.base_fingerprint
        else:
            text = self.base_fingerprint + json.dumps(extension, sort_keys=True)
            self.fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]

    @abc.abstractmethod
    def _base_token_id(self, name: str) -> int | None:
        """The base vocabulary's id of token `name`, or None."""
        ...

    @abc.abstractmethod
    def _default_pad_id(self) -> int:
        """The pad id the base file defines (-1: none)."""
        ...

    @abc.abstractmethod
    def _piece_ids(self, texts: list[str]) -> list[list[int]]:
        """Base-vocabulary ids of plain texts, no specials added (subclasses may add their
        tokenizer's own markers, e.g. BERT's [CLS] ... [SEP], see `_adds_own_markers`)."""
        ...

    @abc.abstractmethod
    def _decode_pieces(self, ids: list[int]) -> str:
        ...

    _adds_own_markers = False  # True when _piece_ids already wraps each text in BOS/EOS

    # --- shared behaviour ---------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={self.path!r}, vocab_size={self.vocab_size}, "
                f"added={list(self.added_tokens)}, fingerprint={self.fingerprint!r})")

    def token_id(self, name: str) -> int:
        """The id of a special token (added or in the base vocabulary); KeyError naming them."""
        if name in self.special_ids:
            return self.special_ids[name]
        if (found := self._base_token_id(name)) is not None:
            return found
        raise KeyError(f"{name!r} is not a token of {self!r}; add it to data.special_tokens")

    def text_ids(self, text: str) -> list[int]:
        """Ids of one text with no BOS/EOS: added specials inside it map to their ids."""
        parts = self._special_pattern.split(text) if self._special_pattern else [text]
        plain = [p for p in parts if p and p not in self.special_ids]
        pieces = iter(self._plain_ids(plain))
        ids = []
        for part in parts:
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                ids += next(pieces)
        return ids

    def _plain_ids(self, texts: list[str]) -> list[list[int]]:
        """Base ids without the tokenizer's own markers (BERT's [CLS]/[SEP] stripped)."""
        if not texts:
            return []
        pieces = self._piece_ids(texts)
        if self._adds_own_markers:
            pieces = [ids[1:-1] if self.bos_id >= 0 else ids[:-1] for ids in pieces]
        return pieces

    def encode(self, texts: Sequence[str], max_len: int, *, bos: bool = False) -> np.ndarray:
        """int32 [N, max_len]: (BOS if `bos`) tokens EOS, right-padded with pad_id; a text that
        does not fit is truncated and still ends with EOS. Added specials in texts map to ids."""
        texts = [str(t) for t in check_texts(texts, max_len)]
        # A tokenizer with its own start marker (BERT's [CLS]) always starts with it.
        start = [self.bos_id] if (bos or self._adds_own_markers) and self.bos_id >= 0 else []
        rows = [start + self.text_ids(t) + [self.eos_id] for t in texts]
        return pack_ids(rows, max_len, self.eos_id, self.pad_id)

    def decode(self, ids: np.ndarray) -> list[str]:
        """One text per row of int [N, L] (or [L]): stops at the first EOS after position 0,
        drops padding and BOS; added specials come back as their names."""
        texts = []
        for row in id_rows(ids, self.vocab_size):
            if self.eos_id in row[1:]:
                row = row[: row.index(self.eos_id, 1)]
            if row[:1] == [self.eos_id]:
                row = row[1:] if self.eos_id == self.bos_id else []
            texts.append(self._join([t for t in row if t not in (self.pad_id, self.bos_id)]))
        return texts

    def _join(self, ids: list[int]) -> str:
        """Decoded text of ids that may mix base pieces and added specials."""
        out, run = [], []
        for token in ids:
            if token in self._id_to_special and token >= self.base_vocab_size:
                if run:
                    out.append(self._decode_pieces(run))
                    run = []
                out.append(self._id_to_special[token])
            else:
                run.append(token)
        if run:
            out.append(self._decode_pieces(run))
        return " ".join(p for p in out if p)

    def apply_chat_template(self, turns: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """(ids, loss_mask) of a conversation: BOS, then per turn its role marker and text; an
        assistant turn ends with EOS. loss_mask is 1 exactly on assistant text and its EOS.

        E.g. [("user", "what colour is the circle?"), ("assistant", "red")] ->
        BOS "user:" "what colour is the circle?" "assistant:" "red" EOS, loss 0 ... 0 1 1.
        """
        if isinstance(turns, str) or not turns:
            raise TypeError("apply_chat_template takes a non-empty list of (role, text) turns")
        ids = [self.bos_id] if self.bos_id >= 0 else []
        loss = [0] * len(ids)
        for turn in turns:
            if len(turn) != 2 or turn[0] not in CHAT_ROLES:
                raise ValueError(f"chat turn {turn!r} must be (role, text) with role one of "
                                 f"{sorted(CHAT_ROLES)}")
            role, text = turn
            marker = self.text_ids(CHAT_ROLES[role])
            ids += marker
            loss += [0] * len(marker)
            body = self.text_ids(str(text))
            if role == ASSISTANT:
                body = body + [self.eos_id]
            ids += body
            loss += [int(role == ASSISTANT)] * len(body)
        return ids, loss


def check_texts(texts: Sequence[str], max_len: int) -> Sequence[str]:
    """`texts` if they can be encoded to `max_len` ids; TypeError/ValueError naming the fix."""
    if isinstance(texts, str):
        raise TypeError("encode takes a sequence of texts; wrap a single text as [text]")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1 (room for the end token); got {max_len}")
    return texts


def pack_ids(id_lists: Sequence[list[int]], max_len: int, eos_id: int, pad_id: int) -> np.ndarray:
    """int32 [N, max_len] of id lists that end with `eos_id`, right-padded with `pad_id`; a
    list that does not fit is truncated and still ends with `eos_id`."""
    tokens = np.full((len(id_lists), max_len), pad_id, np.int32)  # [N, max_len]
    for row, ids in zip(tokens, id_lists, strict=True):
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + [eos_id]
        row[: len(ids)] = ids
    return tokens


def id_rows(ids: np.ndarray, vocab_size: int) -> list[list[int]]:
    """Rows of int ids [N, L] (or one row [L]) as lists, checked to lie in the vocabulary."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"decode takes integer ids of shape [N, L]; got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}); got range "
                         f"[{ids.min()}, {ids.max()}]: was another vocabulary used?")
    return ids.tolist()
