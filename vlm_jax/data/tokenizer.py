"""Tokenizers: the SentencePiece one (trained on the world's sentences and cached, or loaded),
and `load_tokenizer(data_config)`, the one entry point that picks any tokenizer from a config.

World ids: pad 0 (so zero-filled arrays are padding), unk 1, bos 2, eos 3. Text is case-folded.
Added special tokens, a nonzero pad id and the chat template come from tokenizer_base.py.
"""

import hashlib
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import sentencepiece as spm

from vlm_jax.data import world
from vlm_jax.data.tokenizer_base import TokenizerBase, check_texts, id_rows, pack_ids

__all__ = ["BOS_ID", "EOS_ID", "IMAGE_SPECIALS", "PAD_ID", "UNK_ID", "Tokenizer", "check_texts",
           "check_vocab", "id_rows", "image_code_tokens", "load_tokenizer", "pack_ids",
           "world_tokenizer"]

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# The tokens an interleaved document marks its images with: begin, placeholder(s), end.
IMAGE_SPECIALS = ("<boi>", "<image>", "<eoi>")
# Bump when the training corpus recipe or trainer settings change: cache names include it.
TOKENIZER_VERSION = 1
CACHE_ENV = "VLM_JAX_CACHE"
_NUM_TRAIN_CAPTIONS = 3000
_NUM_OTHER_CAPTIONS = 500
_NUM_QA = 1000
_NUM_PROBES = 100


class Tokenizer(TokenizerBase):
    """Text <-> int32 token ids with a SentencePiece model (+ added specials, see the base)."""

    def __init__(self, path: str, specials: Sequence[str] = (), pad_token: str = ""):
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
        if self._sp.eos_id() < 0:
            raise ValueError(
                f"{path} has no eos id; vlm_jax ends every text with one: retrain with "
                "SentencePieceTrainer.train(..., eos_id=...)")
        self.path = path
        self.base_fingerprint = hashlib.sha256(model_bytes).hexdigest()[:16]
        self.base_vocab_size = self._sp.get_piece_size()
        self.pad_id, self.eos_id, self.bos_id = (
            self._sp.pad_id(), self._sp.eos_id(), self._sp.bos_id())
        self._add_specials(specials, pad_token)

    def _base_token_id(self, name: str) -> int | None:
        token = self._sp.piece_to_id(name)
        # piece_to_id answers unk for unknown pieces; only a real match counts.
        return token if token != self._sp.unk_id() or name == self._sp.id_to_piece(token) else None

    def _default_pad_id(self) -> int:
        return self._sp.pad_id()

    def _piece_ids(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def _decode_pieces(self, ids: list[int]) -> str:
        return self._sp.decode(ids)


def image_code_tokens(count: int) -> tuple[str, ...]:
    """Names of `count` image-code tokens (a VQ tokenizer's codes as text ids): <img_0>, ..."""
    return tuple(f"<img_{k}>" for k in range(count))


def config_specials(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The special tokens a data config adds, in a fixed order: those its formats need (image
    markers for interleaved documents), then data.special_tokens, then data.image_codes codes."""
    formats = [data_config.get("format", "caption")] + [
        name for name, _ in data_config.get("mixture", ())]
    needed = IMAGE_SPECIALS if "interleaved" in formats else ()
    return tuple(dict.fromkeys((*needed, *data_config.get("special_tokens", ()),
                                *image_code_tokens(data_config.get("image_codes", 0)))))


def load_tokenizer(spec) -> TokenizerBase:
    """The tokenizer a data config names, with its added specials and pad token; or, given a
    string, the tokenizer at that path ("x.model", "x/tokenizer.json", "minilm") as it is.

    data.tokenizer: "world" (SentencePiece trained on the world, cached), a SentencePiece .model
    path, a tokenizer.json path, a llama.cpp .gguf file, or a packaged model ("minilm",
    "smollm2": the tokenizer inside its GGUF file).
    """
    # The `tokenizers` library is imported only when one of these is asked for.
    from vlm_jax.data import gguf_tokenizer, json_tokenizer, packaged

    if isinstance(spec, str | os.PathLike):
        name, specials, pad_token = str(spec), (), ""
    else:
        name, specials = spec.tokenizer, config_specials(spec)
        pad_token = spec.get("pad_token", "")
        if name == "world":
            return world_tokenizer(spec.vocab_size, specials=specials, pad_token=pad_token)
    if packaged.is_gguf(name):
        return gguf_tokenizer.load_gguf_tokenizer(name, specials, pad_token)
    if json_tokenizer.is_json_tokenizer(name):
        return json_tokenizer.load_json_tokenizer(name, specials, pad_token)
    return Tokenizer(name, specials, pad_token)


def check_vocab(tokenizer: TokenizerBase, vocab_size: int) -> None:
    """Raise ValueError unless a model's vocab_size equals the tokenizer's."""
    if vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"model vocab_size={vocab_size} but tokenizer {tokenizer.path} has "
            f"{tokenizer.vocab_size} ids ({len(tokenizer.added_tokens)} added specials); set the "
            f"model's vocab_size to {tokenizer.vocab_size} or use a matching tokenizer"
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


def world_tokenizer(vocab_size: int = 256, cache_dir: str | None = None, *,
                    specials: Sequence[str] = (), pad_token: str = "") -> Tokenizer:
    """The world tokenizer with vocab_size base ids (+ `specials` after them), trained once
    (about a second) and cached in cache_dir, $VLM_JAX_CACHE or ~/.cache/vlm_jax.
    Deterministic; safe when processes race."""
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
    return Tokenizer(str(path), specials, pad_token)
