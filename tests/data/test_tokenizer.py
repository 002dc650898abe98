"""Tests of the world tokenizer: ids, padding, truncation, caching, determinism and errors."""

import io
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sentencepiece as spm

from vlm_jax.data import tokenizer as tok
from vlm_jax.data import world


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer_cache")


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    return tok.world_tokenizer(vocab_size=256, cache_dir=str(cache_dir))


@pytest.fixture(scope="module")
def captions():
    source = world.World("val")
    texts = [source[i]["caption"] for i in range(300)]
    texts += [item.question for item in world.qa_items(40)]
    texts += [t.format(n) for n in world.HELDOUT_CLASSES for t in world.ZEROSHOT_TEMPLATES]
    return texts


def reference_ids(tokenizer, texts):
    """Piece ids straight from a SentencePiece processor loaded independently."""
    processor = spm.SentencePieceProcessor(model_file=tokenizer.path)
    return processor.encode(list(texts))


def test_ids_and_vocab_size(tokenizer):
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id) == (0, tok.EOS_ID, tok.BOS_ID)
    assert tok.PAD_ID == 0 and len({tok.PAD_ID, tok.UNK_ID, tok.BOS_ID, tok.EOS_ID}) == 4
    assert tokenizer.vocab_size == 256
    assert len(tokenizer.fingerprint) == 16
    tok.check_vocab(tokenizer, 256)


def test_round_trip_on_world_text(tokenizer, captions):
    tokens = tokenizer.encode(captions, max_len=48)
    assert tokens.dtype == np.int32 and tokens.shape == (len(captions), 48)
    assert tokenizer.decode(tokens) == captions
    assert not (tokens == tok.UNK_ID).any()
    # World words are whole pieces: a caption takes about one token per word.
    lengths = (tokens != tokenizer.pad_id).sum(1)
    words = np.array([len(c.split()) for c in captions])
    assert np.mean(lengths - 1 - words) < 1.5


def test_eos_then_padding(tokenizer, captions):
    tokens = tokenizer.encode(captions, max_len=48)
    for row, ids in zip(tokens, reference_ids(tokenizer, captions), strict=True):
        n = len(ids)
        assert row[:n].tolist() == ids
        assert row[n] == tokenizer.eos_id
        assert (row[n + 1 :] == tokenizer.pad_id).all()
        assert (row[:n] != tokenizer.pad_id).all() and (row[:n] != tokenizer.eos_id).all()


def test_truncation_keeps_eos_last(tokenizer, captions):
    long = max(captions, key=len)
    full = reference_ids(tokenizer, [long])[0]
    assert len(full) > 5
    (row,) = tokenizer.encode([long], max_len=5)
    assert row.tolist() == full[:4] + [tokenizer.eos_id]
    (row,) = tokenizer.encode([long], max_len=1)
    assert row.tolist() == [tokenizer.eos_id]
    assert tokenizer.encode([""], max_len=3).tolist() == [[tokenizer.eos_id, 0, 0]]


def test_unknown_characters_and_case(tokenizer):
    (row,) = tokenizer.encode(["a zebra jumps quickly."], max_len=32)
    assert tok.UNK_ID in row.tolist()  # 'z' and 'x' never occur in the world's text
    (row,) = tokenizer.encode(["A Red CIRCLE."], max_len=8)  # case-folded
    assert tokenizer.decode(row[None]) == ["a red circle."]


def test_decode_stops_at_eos_and_accepts_one_row(tokenizer):
    (row,) = tokenizer.encode(["a red circle."], max_len=12)
    n = int(np.argmax(row == tokenizer.eos_id))
    garbage = row.copy()
    garbage[n + 1 :] = row[:1]  # tokens after EOS are ignored
    assert tokenizer.decode(garbage) == ["a red circle."]
    assert tokenizer.decode(np.concatenate([[tokenizer.bos_id], row[:-1]])) == ["a red circle."]
    with pytest.raises(ValueError, match="another vocabulary"):
        tokenizer.decode(np.array([[5, 999]]))


def test_bad_input_to_encode(tokenizer):
    with pytest.raises(TypeError, match=r"\[text\]"):
        tokenizer.encode("a red circle.", max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        tokenizer.encode(["a red circle."], max_len=0)


def test_mismatched_vocab_names_both_sizes(tokenizer):
    with pytest.raises(ValueError, match=r"vocab_size=512.*256"):
        tok.check_vocab(tokenizer, 512)


def test_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match=r"nope\.model.*world_tokenizer"):
        tok.load_tokenizer(str(missing))
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match="not a readable SentencePiece model"):
        tok.load_tokenizer(str(corrupt))


def test_model_without_pad_needs_a_pad_token(tmp_path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(  # SentencePiece's defaults: unk 0, bos 1, eos 2, no pad
        sentence_iterator=iter(["a red circle.", "two blue squares."] * 20), model_writer=model,
        vocab_size=30, hard_vocab_limit=False, minloglevel=2)
    path = tmp_path / "default_ids.model"
    path.write_bytes(model.getvalue())
    with pytest.raises(ValueError, match="no padding token; set data.pad_token"):
        tok.load_tokenizer(str(path))
    # An added <pad> after the base pieces is a nonzero pad id that encode pads with.
    padded = tok.Tokenizer(str(path), specials=("<pad>",), pad_token="<pad>")
    base = padded.base_vocab_size
    assert (padded.pad_id, padded.vocab_size) == (base, base + 1)
    (row,) = padded.encode(["a red circle."], 24)
    expected = spm.SentencePieceProcessor(model_file=str(path)).encode("a red circle.") + [2]
    assert row.tolist() == expected + [base] * (24 - len(expected))
    assert padded.decode(row) == ["a red circle."]


def test_training_is_deterministic_and_cached(tokenizer, cache_dir, tmp_path, captions):
    again = tok.world_tokenizer(vocab_size=256, cache_dir=str(tmp_path))
    assert again.path != tokenizer.path
    with open(again.path, "rb") as a, open(tokenizer.path, "rb") as b:
        assert a.read() == b.read()
    assert again.fingerprint == tokenizer.fingerprint
    assert np.array_equal(again.encode(captions, 32), tokenizer.encode(captions, 32))
    assert os.listdir(tmp_path) == [os.path.basename(again.path)]  # no temp files left

    mtime = os.stat(tokenizer.path).st_mtime_ns
    cached = tok.world_tokenizer(vocab_size=256, cache_dir=str(cache_dir))
    assert cached.path == tokenizer.path and os.stat(cached.path).st_mtime_ns == mtime


def test_racing_writers_leave_one_valid_file(tokenizer, tmp_path):
    with ThreadPoolExecutor(2) as pool:
        racers = list(pool.map(lambda _: tok.world_tokenizer(256, str(tmp_path)), range(2)))
    assert {r.fingerprint for r in racers} == {tokenizer.fingerprint}
    assert os.listdir(tmp_path) == [os.path.basename(tokenizer.path)]
    assert tok.load_tokenizer(racers[0].path).fingerprint == tokenizer.fingerprint


def test_cache_dir_from_environment(tokenizer, tmp_path, monkeypatch):
    shutil.copy(tokenizer.path, tmp_path)  # a cache hit, so nothing is retrained
    monkeypatch.setenv(tok.CACHE_ENV, str(tmp_path))
    found = tok.world_tokenizer(vocab_size=256)
    assert os.path.dirname(found.path) == str(tmp_path)
    assert found.fingerprint == tokenizer.fingerprint


def test_larger_vocab_is_exact(tmp_path, captions):
    # The world has fewer merges than 600 pieces; unused ids fill the rest.
    large = tok.world_tokenizer(vocab_size=600, cache_dir=str(tmp_path))
    assert large.vocab_size == 600
    tokens = large.encode(captions, 48)
    assert large.decode(tokens) == captions and tokens.max() < 600
    with pytest.raises(ValueError, match="vocab_size=16"):
        tok.world_tokenizer(vocab_size=16, cache_dir=str(tmp_path))
