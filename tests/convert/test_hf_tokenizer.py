"""JsonTokenizer keeps vlm_jax's tokenizer contract on a small BERT-style tokenizer.json."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from vlm_jax.convert import JsonTokenizer, is_json_tokenizer

WORDS = ["red", "circle", "left", "of", "a", "blue", "square", "."]


def _write(path, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]"), words=WORDS):
    vocab = {token: i for i, token in enumerate([*specials, *words])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]),
                                                  ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(path))
    return str(path)


def test_encode_pads_with_zero_and_ends_every_row_with_the_end_token(tmp_path):
    tokenizer = JsonTokenizer(_write(tmp_path / "tokenizer.json"))
    ids = tokenizer.encode(["Red circle.", "a blue square left of a red circle"], 6)
    # [CLS]=2 red=4 circle=5 .=11 [SEP]=3; the long text is cut to [CLS] + 4 words + [SEP].
    np.testing.assert_array_equal(ids, [[2, 4, 5, 11, 3, 0], [2, 8, 9, 10, 6, 3]])
    assert ids.dtype == np.int32
    assert tokenizer.decode(ids) == ["red circle.", "a blue square left"]
    assert (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (
        12, 0, 2, 3)


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        JsonTokenizer(tmp_path / "missing.json")
    # A pad id other than 0 is the file's own: padding uses it.
    pad3 = JsonTokenizer(_write(tmp_path / "pad3.json", ("[UNK]", "[CLS]", "[SEP]", "[PAD]")))
    assert pad3.pad_id == 3
    np.testing.assert_array_equal(pad3.encode(["red"], 5), [[1, 4, 2, 3, 3]])
    assert pad3.decode(np.array([[1, 4, 2, 3, 3]])) == ["red"]
    tokenizer = JsonTokenizer(_write(tmp_path / "tokenizer.json"))
    with pytest.raises(TypeError, match="wrap a single text"):
        tokenizer.encode("red", 4)
    with pytest.raises(ValueError, match="another vocabulary"):
        tokenizer.decode(np.array([[2, 99]]))


def test_fingerprint_follows_the_file_and_names_are_recognised(tmp_path):
    a = JsonTokenizer(_write(tmp_path / "a.json"))
    assert JsonTokenizer(_write(tmp_path / "b.json")).fingerprint == a.fingerprint
    other = JsonTokenizer(_write(tmp_path / "c.json", words=[*WORDS, "green"]))
    assert other.fingerprint != a.fingerprint and other.vocab_size == a.vocab_size + 1
    assert is_json_tokenizer("minilm") and is_json_tokenizer("x/tokenizer.json")
    assert not is_json_tokenizer("world") and not is_json_tokenizer("spm.model")
