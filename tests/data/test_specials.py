"""Added special tokens, BOS, the chat template and fingerprints, on the world tokenizer, a
tokenizer.json and the config entry point load_tokenizer(data_config)."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from configs import common
from vlm_jax.data import tokenizer as tok
from vlm_jax.data.json_tokenizer import JsonTokenizer


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tokenizer_cache"))


@pytest.fixture(scope="module")
def base(cache_dir):
    return tok.world_tokenizer(256, cache_dir)


def test_added_specials_follow_the_base_vocabulary(base, cache_dir):
    specials = ("<image>", "[MASK]", *tok.image_code_tokens(3))
    added = tok.world_tokenizer(256, cache_dir, specials=specials)
    assert added.vocab_size == 256 + 5 and added.added_tokens == specials
    assert [added.token_id(s) for s in specials] == [256, 257, 258, 259, 260]
    (row,) = added.encode(["a <image> red [MASK] circle. <img_2>"], 16)
    plain = {w: base.encode([w], 4)[0, 0] for w in ("a", "red")}
    expected = [plain["a"], 256, plain["red"], 257, *base.text_ids("circle."), 260, tok.EOS_ID]
    assert row[:len(expected)].tolist() == expected
    n = int(np.argmax(row == tok.EOS_ID))
    assert row[n - 1] == 260 and (row[n + 1:] == 0).all()
    assert added.decode(row) == ["a <image> red [MASK] circle. <img_2>"]
    with pytest.raises(KeyError, match="data.special_tokens"):
        added.token_id("<boi>")


def test_fingerprint_changes_with_added_tokens_and_pad(base, cache_dir):
    same = tok.world_tokenizer(256, cache_dir, specials=())
    image = tok.world_tokenizer(256, cache_dir, specials=("<image>",))
    mask = tok.world_tokenizer(256, cache_dir, specials=("[MASK]",))
    two = tok.world_tokenizer(256, cache_dir, specials=("<image>", "[MASK]"))
    swapped = tok.world_tokenizer(256, cache_dir, specials=("[MASK]", "<image>"))
    # "<pad>" is the base vocabulary's id 0 already (no change); "<fill>" is a new pad id.
    same_pad = tok.world_tokenizer(256, cache_dir, specials=("<pad>",), pad_token="<pad>")
    assert same_pad.fingerprint == base.fingerprint and same_pad.vocab_size == 256
    padded = tok.world_tokenizer(256, cache_dir, specials=("<fill>",), pad_token="<fill>")
    prints = [t.fingerprint for t in (base, image, mask, two, swapped, padded)]
    assert same.fingerprint == base.fingerprint and len(set(prints)) == len(prints)
    assert padded.pad_id == 256 and padded.encode(["red"], 4)[0, -1] == 256
    with pytest.raises(ValueError, match=r"vocab_size=256 but .* 257 ids \(1 added"):
        tok.check_vocab(image, 256)


def test_bos_and_chat_template_round_trip(base):
    (row,) = base.encode(["a red circle."], 8, bos=True)
    assert row[0] == tok.BOS_ID and base.decode(row) == ["a red circle."]
    turns = [("user", "what colour is the circle?"), ("assistant", "red")]
    ids, loss = base.apply_chat_template(turns)
    expected = ([tok.BOS_ID] + base.text_ids("user:") + base.text_ids("what colour is the circle?")
                + base.text_ids("assistant:") + base.text_ids("red") + [tok.EOS_ID])
    assert ids == expected
    answer = len(base.text_ids("red")) + 1
    assert loss == [0] * (len(ids) - answer) + [1] * answer
    assert base.decode(np.array(ids)) == ["user: what colour is the circle? assistant: red"]
    assert base.decode(np.array([i for i, m in zip(ids, loss, strict=True) if m])) == ["red"]
    two_rounds = turns + [("user", "is there a red circle?"), ("assistant", "yes")]
    ids, loss = base.apply_chat_template(two_rounds)
    supervised = [i for i, m in zip(ids, loss, strict=True) if m]
    assert supervised == base.text_ids("red") + [tok.EOS_ID] + base.text_ids("yes") + [tok.EOS_ID]
    with pytest.raises(ValueError, match="role one of"):
        base.apply_chat_template([("robot", "hi")])


def bert_json(path) -> str:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "circle", "user", "assistant",
             ":", "."]
    vocab = {w: i for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(path))
    return str(path)


def test_json_tokenizer_specials_keep_existing_ids(tmp_path):
    plain = JsonTokenizer(bert_json(tmp_path / "tokenizer.json"))
    added = JsonTokenizer(plain.path, specials=("[MASK]", "<image>"))
    assert added.token_id("[MASK]") == 4 and added.token_id("<image>") == 11
    assert added.vocab_size == plain.vocab_size + 1 and added.fingerprint != plain.fingerprint
    # [CLS] red <image> circle [SEP]: the file's own markers wrap the text.
    np.testing.assert_array_equal(added.encode(["red <image> circle"], 6), [[2, 5, 11, 6, 3, 0]])
    np.testing.assert_array_equal(plain.encode(["red circle"], 5), [[2, 5, 6, 3, 0]])
    ids, loss = added.apply_chat_template([("user", "circle"), ("assistant", "red")])
    assert ids == [2, 7, 9, 6, 8, 9, 5, 3] and loss == [0, 0, 0, 0, 0, 0, 1, 1]


def test_load_tokenizer_from_a_data_config(base, cache_dir, monkeypatch):
    monkeypatch.setenv(tok.CACHE_ENV, cache_dir)
    caption = tok.load_tokenizer(common.data_config())
    assert caption.fingerprint == base.fingerprint and caption.vocab_size == 256
    interleaved = tok.load_tokenizer(common.data_config(
        mixture=(("caption", 0.5), ("interleaved", 0.5)), special_tokens=("[MASK]",),
        image_codes=2))
    assert interleaved.added_tokens == (*tok.IMAGE_SPECIALS, "[MASK]", "<img_0>", "<img_1>")
    assert interleaved.vocab_size == 262 and interleaved.fingerprint != base.fingerprint
    assert tok.load_tokenizer(base.path).fingerprint == base.fingerprint
