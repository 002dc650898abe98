"""CM3leon's sources against brute force: the bank's keys of a tiny random scorer in NumPy, the
retrieved documents before document i (a NumPy argsort with the self and near-duplicate
skips), retrieved=0 as the plain interleaved example, and the instruction tasks by index."""

import json

import numpy as np
import pytest

from configs import cm3leon
from vlm_jax import retrieval, validate
from vlm_jax.configlib import ConfigError
from vlm_jax.data import cm3leon_sources, formats, pipeline, sources
from vlm_jax.data.tokenizer import load_tokenizer
from vlm_jax.data.world import World
from vlm_jax.evals.scoring import Scorer

SIZE, DIM = 16, 6


rng = np.random.default_rng(0)
PROJECT, WORDS = rng.normal(size=(SIZE * SIZE * 3, DIM)), rng.normal(size=(50, DIM))


def random_scorer():
    """Image: a fixed random projection of the pixels; text: the mean of random word vectors
    (words hashed to 50 ids); both unnormalised, so world_bank must normalise them."""

    def tokenize(texts):
        rows = [[1 + sum(map(ord, w)) % 49 for w in t.split()][:12] for t in texts]
        out = np.zeros((len(texts), 12), np.int32)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out

    def encode_texts(tokens):
        valid = (tokens > 0)[..., None]
        return (WORDS[tokens] * valid).sum(1) / valid.sum(1)

    return Scorer(encode_images=lambda x: x.reshape(len(x), -1).astype(np.float64) @ PROJECT,
                  encode_texts=encode_texts, tokenize=tokenize)


def numpy_keys(scorer, n):
    world = World("train", image_size=SIZE)
    images = np.stack([world[i]["image"] for i in range(n)])
    a = images.reshape(n, -1).astype(np.float64) @ PROJECT
    b = scorer.encode_texts(scorer.tokenize([world[i]["caption"] for i in range(n)]))
    return (a / np.linalg.norm(a, axis=1, keepdims=True)
            + b / np.linalg.norm(b, axis=1, keepdims=True)) / 2


def test_world_bank_keys_are_the_mean_of_normalised_embeddings():
    scorer = random_scorer()
    images, captions, keys = retrieval.world_bank(scorer, 10, image_size=SIZE, batch_size=4)
    world = World("train", image_size=SIZE)
    assert captions == [world[i]["caption"] for i in range(10)]
    np.testing.assert_array_equal(images[3], world[3]["image"])
    np.testing.assert_allclose(keys, numpy_keys(scorer, 10), rtol=1e-6, atol=1e-9)


def brute_force_neighbours(keys, k, max_score):
    scores = keys @ keys.T
    out = []
    for i in range(len(keys)):
        order = sorted(range(len(keys)), key=lambda j: (-scores[i, j], j))
        out.append([j for j in order if j != i and scores[i, j] <= max_score][:k])
    return np.array(out)


def test_document_i_holds_the_retrieved_documents_then_itself():
    _, _, keys = retrieval.world_bank(random_scorer(), 24, image_size=SIZE)
    max_score = float(np.quantile(keys @ keys.T, 0.97))  # some near-duplicates to skip
    table = cm3leon_sources.neighbours(keys, 2, max_score)
    np.testing.assert_array_equal(table, brute_force_neighbours(keys, 2, max_score))
    world = World("train", image_size=SIZE)
    source = cm3leon_sources.RetrievalSource(world, table)
    assert len(source) == 24
    for i in range(24):
        doc = source.document(i, 3)
        assert i not in table[i]
        assert doc["texts"] == [world[int(j)]["caption"] for j in table[i]] + [world[i]["caption"]]
        for m, j in enumerate([*table[i], i]):
            np.testing.assert_array_equal(doc["images"][m], world[int(j)]["image"])
        assert doc["closing"] == ""
    with pytest.raises(ValueError, match=r"set data.max_images=3"):
        source.document(0, 2)
    with pytest.raises(IndexError, match="bank of 24"):
        source.document(24, 3)


def sources_config():
    from configs import common

    data = common.data_config(image_size=SIZE, text_length=120, image_tokens=4,
                              format="interleaved", special_tokens=cm3leon.CM3_TOKENS)
    return data


def test_retrieved_0_is_the_plain_interleaved_example():
    world = World("train", image_size=SIZE)
    plain = sources.WorldSource(world)
    budget, one = sources_config(), sources_config()
    budget.max_images, one.max_images = 3, 1
    tokenizer = load_tokenizer(budget)
    source = cm3leon_sources.RetrievalSource(world, np.zeros((16, 0), np.int64))
    chunk = [(p, i) for p, i in enumerate([5, 0, 11, 3])]
    got = formats.BuildBatch(tokenizer, budget)(pipeline.LoadChunk(source, budget, 0)(chunk))
    want = formats.BuildBatch(tokenizer, one)(pipeline.LoadChunk(plain, one, 0)(chunk))
    for key in ("text_tokens", "mask_ar", "mask_loss", "text_mask", "segment_ids"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(got["images"][:, :1], want["images"])
    np.testing.assert_array_equal(got["image_positions"][:, :1], want["image_positions"])
    assert not got["image_valid"][:, 1:].any() and not got["images"][:, 1:].any()


def test_instruction_tasks_by_index():
    world = World("train", image_size=SIZE)
    source = cm3leon_sources.InstructionSource(world)
    for i in range(6):
        doc = source.document(i, 1)
        np.testing.assert_array_equal(doc["images"][0], world[i]["image"])
        if i % 3 == 1:
            assert (doc["texts"][0], doc["closing"]) == world.question_answer(i)
        else:
            assert doc["texts"] == [world[i]["caption"]] and doc["closing"] == ""


def fake_vq_run(directory):
    """A configs/vq.py run record (what configs/chameleon.vq_sizes reads): 32 codes, 16 px."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"config": {
        "trainer": "vq", "model": {"codebook_size": 32, "channels": [8, 16]},
        "data": {"image_size": 16}}}))
    return str(directory)


def test_configs_build_the_sources_and_name_missing_runs(tmp_path):
    vq = fake_vq_run(tmp_path / "vq")
    config = cm3leon.get_config(f"tiny,stage=1,retrieved=0,vq={vq}")
    assert (config.data.image_tokens, config.data.image_codes) == (16, 32)
    source = sources.make_source(config.data, "train")
    assert isinstance(source, cm3leon_sources.RetrievalSource) and len(source) == 4096
    assert source.retrieved.shape == (4096, 0)
    with pytest.raises(ConfigError, match="retriever=<a configs/siglip.py:tiny workdir>"):
        cm3leon.get_config(f"tiny,stage=1,vq={vq}")
    config = cm3leon.get_config(f"tiny,stage=1,vq={vq},retriever={tmp_path / 'none'}")
    with pytest.raises(ValueError, match=r"holds no run: train configs/siglip.py:tiny"):
        sources.make_source(config.data, "train")
    with pytest.raises(ConfigError, match=r"retriever=.* holds no run; train configs/siglip"):
        validate.check(config, str(tmp_path / "run"), device_count=8)
    with pytest.raises(ConfigError, match="vq=<a configs/vq.py:tiny workdir>"):
        cm3leon.get_config("tiny,stage=1,retrieved=0")
    with pytest.raises(ConfigError, match="stage1=<a configs/cm3leon.py:tiny,stage=1 workdir>"):
        cm3leon.get_config("tiny,stage=2")
