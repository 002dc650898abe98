"""SentencePiece tokenizer: trained on the world's sentences and cached on disk, or loaded.

Ids: pad 0 (so zero-filled arrays are padding), unk 1, bos 2, eos 3. Text is case-folded.
"""

import hashlib
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from vlm_jax.data import world

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# Bump when the training corpus recipe or trainer settings change: cache names include it.
TOKENIZER_VERSION = 1
CACHE_ENV = "VLM_JAX_CACHE"
_NUM_TRAIN_CAPTIONS = 3000
_NUM_OTHER_CAPTIONS = 500
_NUM_QA = 1000
_NUM_PROBES = 100


class Tokenizer:
    """Text <-> int32 token ids with a SentencePiece model."""

    def __init__(self, path: str):
        path = str(path)
        try:
            model_bytes = Path(path).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"tokenizer model {path} does not exist; make one with "
                "vlm_jax.data.tokenizer.world_tokenizer(vocab_size=..., cache_dir=...) or point "
                "to an existing SentencePiece .model file"
            ) from None
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError) as error:
            raise ValueError(
                f"{path} is not a readable SentencePiece model ({error}); delete it and remake "
                "it with world_tokenizer(), or pass a valid .model file"
            ) from None
        if self._sp.pad_id() != PAD_ID or self._sp.eos_id() < 0:
            raise ValueError(
                f"{path} has pad_id={self._sp.pad_id()}, eos_id={self._sp.eos_id()}; vlm_jax needs "
                f"pad_id={PAD_ID} (zero-filled arrays are padding) and an eos id: retrain with "
                "SentencePieceTrainer.train(..., pad_id=0, eos_id=...)"
            )
        self.path = path
        self.fingerprint = hashlib.sha256(model_bytes).hexdigest()[:16]
        self.vocab_size = self._sp.get_piece_size()
        self.pad_id, self.eos_id, self.bos_id = PAD_ID, self._sp.eos_id(), self._sp.bos_id()

    def __repr__(self) -> str:
        return (f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size}, "
                f"fingerprint={self.fingerprint!r})")

    def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """int32 [N, max_len]: tokens then EOS, right-padded with pad_id; a text that does not
        fit is truncated and still ends with EOS."""
        pieces = self._sp.encode([str(t) for t in check_texts(texts, max_len)])
        return pack_ids([ids + [self.eos_id] for ids in pieces], max_len, self.eos_id,
                        self.pad_id)

    def decode(self, ids: np.ndarray) -> list[str]:
        """One text per row of int [N, L] (or [L]): stops at EOS, drops padding and BOS."""
        texts = []
        for row in id_rows(ids, self.vocab_size):
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            texts.append(self._sp.decode([t for t in row if t not in (self.pad_id, self.bos_id)]))
        return texts


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


def load_tokenizer(path: str) -> Tokenizer:
    """The tokenizer in an existing SentencePiece .model file (FileNotFoundError if missing,
    ValueError if unreadable or without pad_id 0 and an eos id)."""
    return Tokenizer(path)


def check_vocab(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raise ValueError unless a model's vocab_size equals the tokenizer's."""
    if vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"model vocab_size={vocab_size} but tokenizer {tokenizer.path} has "
            f"{tokenizer.vocab_size} ids; set the model's vocab_size to {tokenizer.vocab_size} "
            f"or use world_tokenizer(vocab_size={vocab_size})"
        )


def world_corpus() -> list[str]:
    """The sentences the world tokenizer is trained on: captions from every split and grid
    size, probe captions, QA questions and answers, and zero-shot prompts for all 28 classes."""
    sentences = []
    for split, image_size, count in (("train", 32, _NUM_TRAIN_CAPTIONS),
                                     ("heldout", 32, _NUM_OTHER_CAPTIONS),
                                     ("train", 48, _NUM_OTHER_CAPTIONS)):
        source = world.World(split, seed=0, image_size=image_size)
        sentences += [source.caption(source.scene(i), i) for i in range(count)]
    for kind in world.PROBE_KINDS:
        sentences += [c for pair in world.probe_pairs(kind, _NUM_PROBES) for c in pair.captions]
    sentences += [s for item in world.qa_items(_NUM_QA) for s in (item.question, item.answer)]
    sentences += [template.format(name) for name in world.SEEN_CLASSES + world.HELDOUT_CLASSES
                  for template in world.ZEROSHOT_TEMPLATES]
    return sentences


def _train(sentences: list[str], vocab_size: int, num_extra: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",  # on this small vocabulary BPE keeps whole words as single pieces
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        control_symbols=[f"<extra_{k}>" for k in range(num_extra)],
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc_cf",
        # One thread and no shuffling: the same arguments give the same file bytes.
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def train_world_model(vocab_size: int) -> bytes:
    """Serialized SentencePiece model with exactly vocab_size ids, trained on world_corpus().

    The world has about a hundred words, so BPE runs out of merges near 430 pieces; larger
    vocabularies are filled with unused control ids so that vocab_size is what was asked.
    """
    sentences = world_corpus()
    try:
        model = _train(sentences, vocab_size, 0)
    except RuntimeError as error:
        raise ValueError(f"cannot train a world tokenizer with vocab_size={vocab_size}: "
                         f"{error}; use a larger vocab_size (e.g. 256)") from None
    size = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    if size < vocab_size:
        model = _train(sentences, vocab_size, vocab_size - size)
        size = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    if size != vocab_size:
        raise RuntimeError(f"trained {size} pieces instead of vocab_size={vocab_size}; the "
                           "trainer settings in vlm_jax/data/tokenizer.py need a fix")
    return model


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vlm_jax")


def world_tokenizer(vocab_size: int = 256, cache_dir: str | None = None) -> Tokenizer:
    """The world tokenizer with vocab_size ids, trained once (about a second) and cached in
    cache_dir, $VLM_JAX_CACHE or ~/.cache/vlm_jax. Deterministic; safe when processes race."""
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    name = f"world_bpe{vocab_size}_w{world.WORLD_VERSION}_t{TOKENIZER_VERSION}.model"
    path = directory / name
    if not path.exists():
        model = train_world_model(vocab_size)
        directory.mkdir(parents=True, exist_ok=True)
        # Write a private temp file then rename: readers never see a partial file, and racing
        # writers produce the same bytes, so whichever rename lands last is correct.
        with tempfile.NamedTemporaryFile(dir=directory, prefix=name, suffix=".tmp",
                                         delete=False) as handle:
            handle.write(model)
        os.chmod(handle.name, 0o644)  # temp files are private; the cache is shareable
        os.replace(handle.name, path)
    return load_tokenizer(str(path))
