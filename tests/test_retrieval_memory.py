"""The retrieval memory against brute force: exact MIPS, the self and near-duplicate skips."""

import numpy as np
import pytest

from vlm_jax import retrieval
from vlm_jax.curation.semdedup import normalise


def _keys(n=40, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return retrieval.document_keys(rng.normal(size=(n, d)), rng.normal(size=(n, d)))


def test_keys_are_the_mean_of_normalised_modalities():
    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(3, 4)) * 5, rng.normal(size=(3, 4)) * 0.1
    want = (image / np.linalg.norm(image, axis=1, keepdims=True)
            + text / np.linalg.norm(text, axis=1, keepdims=True)) / 2
    np.testing.assert_allclose(retrieval.document_keys(image, text), want, rtol=1e-12)


def test_exact_search_matches_numpy_argsort():
    keys = _keys()
    queries = np.random.default_rng(2).normal(size=(5, 8))
    scores, ids = retrieval.ExactIndex(keys).search(queries, 7)
    brute = queries @ keys.T
    want = np.argsort(-brute, axis=1)[:, :7]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, want, 1), rtol=1e-5)


def test_a_query_in_the_bank_never_retrieves_itself():
    keys = _keys()
    index = retrieval.ExactIndex(keys)
    got = retrieval.retrieve(index, keys, np.arange(len(keys)), k=2, max_score=2.0)
    assert not np.any(got == np.arange(len(keys))[:, None])
    # Brute force: the two best others by inner product.
    brute = keys @ keys.T
    np.fill_diagonal(brute, -np.inf)
    np.testing.assert_array_equal(got, np.argsort(-brute, axis=1)[:, :2])


def test_near_duplicates_and_taken_documents_are_skipped():
    base = normalise(np.random.default_rng(3).normal(size=(6, 8)))
    keys = np.concatenate([base, base[:1] * 0.999 + 0.001 * base[1:2], base[:1]])  # 6, 7 ~ 0
    index = retrieval.ExactIndex(keys)
    query = base[:1]
    got = retrieval.retrieve(index, query, np.array([0]), k=2, max_score=0.9)[0]
    assert 6 not in got and 7 not in got and 0 not in got
    scores = (keys @ query[0])[:6]
    scores[0] = -np.inf
    np.testing.assert_array_equal(got, np.argsort(-scores)[:2])
    # Without the near-duplicate threshold the copies come first.
    loose = retrieval.retrieve(index, query, np.array([0]), k=2, max_score=10.0)[0]
    assert set(loose) == {6, 7}


def test_too_few_acceptable_candidates_is_one_clear_error():
    keys = np.ones((3, 2)) / np.sqrt(2)
    with pytest.raises(ValueError, match="raise candidates or max_score"):
        retrieval.retrieve(retrieval.ExactIndex(keys), keys[:1], np.array([0]), k=2)
