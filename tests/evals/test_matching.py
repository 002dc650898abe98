"""ITM evals: the Matcher's chunked pair scoring, top-k re-ranked retrieval against a
brute-force re-ranking in NumPy, and the ITM-scored compositional probes."""

import re

import numpy as np
import pytest
from test_run_evals import oracle_for, random_scorer, small_eval_config

from vlm_jax.data import world
from vlm_jax.evals import capabilities_needed, run_served
from vlm_jax.evals.matching import Matcher, match_pairs
from vlm_jax.evals.retrieval import reranked_retrieval_metrics, top_candidates
from vlm_jax.evals.scoring import l2_normalize


def cosine_matcher(scorer):
    """A Matcher whose ITM logit of (image i, text i) is the scorer's cosine of that pair."""
    def match(images, tokens):
        image_emb = l2_normalize(scorer.encode_images(images))
        text_emb = l2_normalize(scorer.encode_texts(tokens))
        return np.sum(image_emb * text_emb, axis=-1)

    return Matcher(match=match, tokenize=scorer.tokenize)


def brute_force_rank(scores, matches, logits_of, k):
    """Rank of the first match in the full re-ranked order, written out: sort every candidate
    by score (a non-match before a match on ties), take the first k, sort those by their ITM
    logit (same tie rule), put the rest behind them, find the first match."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], bool(matches[j])))
    top, rest = order[:k], order[k:]
    top = sorted(top, key=lambda j: (-logits_of(j), bool(matches[j])))
    full = top + rest
    return 1 + next(position for position, j in enumerate(full) if matches[j])


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_reranked_recall_equals_a_brute_force_reranking(k):
    rng = np.random.default_rng(k)
    num = 20
    # Rounded scores and logits: many ties, which must all go against the match.
    scores = np.round(rng.normal(size=(num, num)), 1)
    itm = np.round(rng.normal(size=(num, num)) + 2 * np.eye(num), 1)  # itm[i, j]
    captions = [f"caption {rng.integers(14)}" for _ in range(num)]  # duplicates: several matches
    matches = np.asarray(captions, object)[:, None] == np.asarray(captions, object)[None, :]

    i2t = top_candidates(scores, matches, k)
    t2i = top_candidates(scores.T, matches.T, k)
    i2t_logits = itm[np.arange(num)[:, None], i2t]
    t2i_logits = itm.T[np.arange(num)[:, None], t2i]  # itm[image t2i[j, r], text j]
    metrics = reranked_retrieval_metrics(scores, matches, i2t, i2t_logits, t2i, t2i_logits)

    kk = min(k, num)
    i2t_ranks = [brute_force_rank(scores[i], matches[i], lambda j, i=i: itm[i, j], kk)
                 for i in range(num)]
    t2i_ranks = [brute_force_rank(scores[:, j], matches[:, j], lambda i, j=j: itm[i, j], kk)
                 for j in range(num)]
    for at in (1, 5, 10):
        assert metrics[f"i2t_r{at}"] == pytest.approx(np.mean(np.array(i2t_ranks) <= at))
        assert metrics[f"t2i_r{at}"] == pytest.approx(np.mean(np.array(t2i_ranks) <= at))
    in_top = [any(matches[i, j] for j in sorted(
        range(num), key=lambda j, i=i: (-scores[i, j], bool(matches[i, j])))[:kk])
        for i in range(num)]
    assert metrics["i2t_in_top"] == pytest.approx(np.mean(in_top))
    if kk == num:  # every candidate re-ranked: the first stage no longer matters
        full_itm_r1 = np.mean([
            brute_force_rank(itm[i], matches[i], lambda j, i=i: itm[i, j], num) == 1
            for i in range(num)])
        assert metrics["i2t_r1"] == pytest.approx(full_itm_r1)


def test_a_tie_at_the_kth_place_keeps_the_match_out():
    scores = np.array([[1.0, 1.0, 0.0]])  # the match (column 0) ties a non-match for first
    matches = np.array([[True, False, False]])
    np.testing.assert_array_equal(top_candidates(scores, matches, 1), [[1]])
    metrics = reranked_retrieval_metrics(
        np.tile(scores, (3, 1)), np.eye(3, dtype=bool), top_candidates(
            np.tile(scores, (3, 1)), np.eye(3, dtype=bool), 1), np.zeros((3, 1)),
        np.zeros((3, 1), int), np.zeros((3, 1)))
    assert metrics["i2t_r1"] == 0.0  # no row's match survives to be re-ranked


def test_match_pairs_pads_every_chunk_and_keeps_the_order():
    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    tokens = np.arange(4, dtype=np.int32)[:, None] * np.ones((1, 3), np.int32)
    calls = []

    def match(chunk_images, chunk_tokens):
        calls.append(len(chunk_images))
        return chunk_images[:, 0, 0, 0] * 10.0 + chunk_tokens[:, 0]

    matcher = Matcher(match=match, tokenize=None)
    image_index, text_index = np.array([4, 0, 2, 3, 1, 1, 0]), np.array([0, 3, 1, 2, 2, 0, 0])
    logits = match_pairs(matcher, images, tokens, image_index, text_index, batch_size=3)
    np.testing.assert_array_equal(logits, image_index * 10 + text_index)
    assert calls == [3, 3, 3]  # 7 pairs in chunks of 3: the last one padded
    with pytest.raises(ValueError, match="one ITM logit per pair"):
        match_pairs(Matcher(match=lambda i, t: np.zeros(2), tokenize=None), images, tokens,
                    image_index, text_index, batch_size=3)


def test_a_cosine_matcher_reranks_to_the_plain_retrieval_and_probes():
    """Re-ranking by the first stage's own score changes nothing: reranked R@k equals plain
    R@k, and the ITM-scored probes equal the embedding-scored ones, on the real world."""
    eval_config = small_eval_config(itm_top_k=12)
    scorer = random_scorer()
    served = {"scorer": scorer, "matcher": cosine_matcher(scorer)}
    results = run_served(["retrieval", "compositional", "itm_retrieval", "itm_compositional"],
                         served, eval_config)
    for split in ("val", "heldout"):
        for direction in ("i2t", "t2i"):
            for at in (1, 5, 10):
                plain = results[f"retrieval/{split}/{direction}_r{at}"]
                assert results[f"itm_retrieval/{split}/{direction}_r{at}"] == plain
                assert results[f"itm_retrieval/{split}/embedding_{direction}_r{at}"] == plain
    for kind in world.PROBE_KINDS:
        for metric in ("text", "image", "group", "acc2"):
            assert (results[f"itm_compositional/{kind}/{metric}"]
                    == results[f"compositional/{kind}/{metric}"]), (kind, metric)
        assert results[f"itm_compositional/{kind}/blind_group"] == 0.0
        assert results[f"itm_compositional/{kind}/blind_acc2"] <= 0.5


def test_an_oracle_matcher_lifts_a_random_first_stage_to_its_ceiling():
    """A perfect matcher re-ranking a random scorer's top-k: R@1 is exactly the fraction of
    queries with their match among the k candidates, and every probe is solved."""
    eval_config = small_eval_config(itm_top_k=16)
    oracle, _ = oracle_for(eval_config)
    # The oracle embeds an image as the multi-hot of its true texts' ids: read the text's bit.
    truth = Matcher(match=lambda images, tokens: oracle.encode_images(images)[
        np.arange(len(tokens)), tokens[:, 0]], tokenize=oracle.tokenize)
    served = {"scorer": random_scorer(), "matcher": truth}
    results = run_served(["itm_retrieval", "itm_compositional"], served, eval_config)
    for split in ("val", "heldout"):
        for direction in ("i2t", "t2i"):
            in_top = results[f"itm_retrieval/{split}/{direction}_in_top"]
            assert results[f"itm_retrieval/{split}/{direction}_r1"] == in_top
            # A random first stage: about k / N of the queries hold their match in the top k.
            assert 16 / 120 - 0.1 < in_top < 16 / 120 + 0.15
            assert in_top > results[f"itm_retrieval/{split}/embedding_{direction}_r1"]
    for kind in world.PROBE_KINDS:
        for metric in ("text", "image", "group", "acc2"):
            assert results[f"itm_compositional/{kind}/{metric}"] == 1.0


def test_a_constant_matcher_never_gets_a_tie_right():
    eval_config = small_eval_config()
    constant = Matcher(match=lambda images, tokens: np.zeros(len(images)),
                       tokenize=random_scorer().tokenize)
    results = run_served(["itm_retrieval", "itm_compositional"],
                         {"scorer": random_scorer(), "matcher": constant}, eval_config)
    for key, value in results.items():
        if key.startswith("itm_compositional/"):
            assert value == 0.0, key
        elif re.fullmatch(r"(i2t|t2i)_r\d+", key.rsplit("/", 1)[1]):
            assert value == 0.0, key  # every candidate ties the match


def test_the_matcher_evals_say_what_they_need():
    eval_config = small_eval_config()
    assert capabilities_needed(["itm_retrieval", "itm_compositional"], eval_config) == {
        "itm_retrieval": {"matcher", "scorer"}, "itm_compositional": {"matcher"}}
    with pytest.raises(ValueError, match=r"^eval 'itm_compositional' needs a matcher, which "
                                         r"this model does not serve \(a model with an "
                                         r"image-text matching head"):
        run_served(["itm_compositional"], {"scorer": random_scorer(), "matcher": None},
                   eval_config)
    with pytest.raises(ValueError, match="itm_top_k must be a positive integer"):
        run_served(["itm_retrieval"], {"scorer": random_scorer(),
                                       "matcher": cosine_matcher(random_scorer())},
                   small_eval_config(itm_top_k=0))
