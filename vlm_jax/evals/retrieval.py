"""Image-text retrieval: recall@1/5/10 image->text and text->image on the world's val and
held-out splits, or on the stored dataset `config.evals.retrieval` names (`evals.datasets`);
and the same re-ranked by a cross-encoder (`run_itm`: a Scorer's top-k candidates of each
query, re-ordered by a Matcher's ITM logits, as ALBEF / BLIP retrieve).

The match of image i is caption i, and also any other caption with exactly the same text:
two scenes can share a caption string, and no model can tell identical strings apart, so
counting only (i, i) would charge a perfect model for the world's duplicates. Every other
candidate that ties or beats the best match counts as ahead of it (`pessimistic_rank`).
"""

from collections.abc import Sequence

import numpy as np

from vlm_jax.evals import datasets
from vlm_jax.evals.matching import Matcher, match_pairs, tokenize_texts
from vlm_jax.evals.scoring import (
    Scorer,
    embed_images,
    embed_texts,
    pessimistic_rank,
    score_matrix,
)

SPLITS = ("val", "heldout")
RECALL_AT = (1, 5, 10)


def caption_matches(captions: Sequence[str]) -> np.ndarray:
    """bool [N, N]: True where caption i and caption j are the same string (diagonal True)."""
    captions = np.asarray(list(captions), dtype=object)
    return captions[:, None] == captions[None, :]


def retrieval_metrics(
    scores: np.ndarray, matches: np.ndarray | None = None, recall_at: Sequence[int] = RECALL_AT
) -> dict[str, float]:
    """i2t_r{k} and t2i_r{k} for k in `recall_at`, and chance_r1.

    scores [N, N]: scores[i, j] = similarity(image i, text j); matches bool [N, N] (default:
    the diagonal) marks which texts are correct for which image. chance_r1 is the R@1 of a
    scorer with random continuous scores, the mean fraction of correct candidates (1 / N
    without duplicates).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"retrieval needs square scores [N, N], got shape {scores.shape}.")
    if matches is None:
        matches = np.eye(scores.shape[0], dtype=bool)
    matches = np.asarray(matches, dtype=bool)
    image_to_text_rank = pessimistic_rank(scores, matches)
    text_to_image_rank = pessimistic_rank(scores.T, matches.T)
    metrics = {}
    for k in recall_at:
        metrics[f"i2t_r{k}"] = float(np.mean(image_to_text_rank <= k))
    for k in recall_at:
        metrics[f"t2i_r{k}"] = float(np.mean(text_to_image_rank <= k))
    metrics["chance_r1"] = float(matches.mean())
    return metrics


def run(scorer: Scorer, eval_config) -> dict[str, float]:
    """retrieval/<split>/{i2t_r1, ..., t2i_r10, chance_r1} on the first
    `eval_config.retrieval_size` examples of each split of the `eval_config.retrieval` data."""
    spec = datasets.spec_of(eval_config, "retrieval")
    results = {}
    for split, captioned in datasets.caption_sets(
            spec, SPLITS, eval_config.retrieval_size, eval_config.seed,
            eval_config.image_size).items():
        captions = captioned.captions
        image_embeddings = embed_images(scorer, captioned.images, eval_config.batch_size)
        text_embeddings = embed_texts(scorer, captions, eval_config.batch_size)
        scores = score_matrix(
            scorer.similarity, image_embeddings, text_embeddings, eval_config.batch_size
        )
        for metric, value in retrieval_metrics(scores, caption_matches(captions)).items():
            results[f"retrieval/{split}/{metric}"] = value
    return results


def top_candidates(scores: np.ndarray, matches: np.ndarray, k: int) -> np.ndarray:
    """int [N, min(k, M)]: each row's k highest-scoring candidates, best first.

    Ties are broken pessimistically, as `pessimistic_rank` counts them: among equal scores the
    non-matches come first, and a NaN score counts as the highest, so a match tied at the k-th
    place stays out of the candidates.
    """
    scores = np.asarray(scores, dtype=np.float64)
    matches = np.asarray(matches, dtype=bool)
    if k < 1:
        raise ValueError(f"top-k re-ranking needs k >= 1, got {k}; set eval_config.itm_top_k.")
    order_key = np.where(np.isnan(scores), -np.inf, -scores)  # ascending = best first
    # np.lexsort sorts by the last key first: score, then matches (False = non-match) first.
    order = np.lexsort((matches, order_key), axis=1)
    return order[:, :min(k, scores.shape[1])]


def reranked_ranks(scores: np.ndarray, matches: np.ndarray, candidates: np.ndarray,
                   candidate_logits: np.ndarray) -> np.ndarray:
    """1-based rank [N] of each row's best match after re-ranking its candidates.

    scores, matches [N, M]: the first-stage scores and which candidates are correct;
    candidates int [N, K] (from `top_candidates`) and candidate_logits [N, K] their ITM logits.
    The K candidates, ordered by logit, come first; the other M - K keep the first-stage
    order behind them. A row with a match among its candidates ranks it among them (ties with
    a non-match lose); a row without keeps its first-stage rank, which is then > K.
    """
    matches = np.asarray(matches, dtype=bool)
    candidate_logits = np.asarray(candidate_logits, dtype=np.float64)
    if candidates.shape != candidate_logits.shape or candidates.shape[0] != matches.shape[0]:
        raise ValueError(f"candidates {candidates.shape} and candidate_logits "
                         f"{candidate_logits.shape} must both be [N, K] with N = "
                         f"{matches.shape[0]}.")
    ranks = pessimistic_rank(scores, matches)
    candidate_matches = np.take_along_axis(matches, candidates, axis=1)  # [N, K]
    found = candidate_matches.any(axis=1)
    if found.any():
        ranks[found] = pessimistic_rank(candidate_logits[found], candidate_matches[found])
    return ranks


def reranked_retrieval_metrics(scores: np.ndarray, matches: np.ndarray,
                               i2t_candidates: np.ndarray, i2t_logits: np.ndarray,
                               t2i_candidates: np.ndarray, t2i_logits: np.ndarray,
                               recall_at: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """Re-ranked i2t_r{k} / t2i_r{k}, the first stage's beside them (embedding_i2t_r{k}, ...),
    chance_r1, and i2t_in_top / t2i_in_top: the fraction of queries with a match among their
    candidates (the ceiling of any re-ranking).

    i2t_candidates [N, K]: texts of image i (`top_candidates(scores, matches, K)`), with their
    logits; t2i_candidates [N, K]: images of text j (`top_candidates(scores.T, matches.T, K)`).
    """
    scores, matches = np.asarray(scores), np.asarray(matches, dtype=bool)
    ranks = {"i2t": reranked_ranks(scores, matches, i2t_candidates, i2t_logits),
             "t2i": reranked_ranks(scores.T, matches.T, t2i_candidates, t2i_logits)}
    metrics = {f"{direction}_r{k}": float(np.mean(rank <= k))
               for direction, rank in ranks.items() for k in recall_at}
    first_stage = retrieval_metrics(scores, matches, recall_at)
    chance = first_stage.pop("chance_r1")
    metrics.update({f"embedding_{name}": value for name, value in first_stage.items()})
    for direction, candidates, pair_matches in (("i2t", i2t_candidates, matches),
                                                ("t2i", t2i_candidates, matches.T)):
        in_top = np.take_along_axis(pair_matches, candidates, axis=1).any(axis=1)
        metrics[f"{direction}_in_top"] = float(np.mean(in_top))
    metrics["chance_r1"] = chance
    return metrics


def run_itm(matcher: Matcher, scorer: Scorer, eval_config) -> dict[str, float]:
    """itm_retrieval/<split>/{i2t_r1, ..., t2i_r10, embedding_i2t_r1, ..., i2t_in_top,
    t2i_in_top, chance_r1}: `retrieval`'s sets, each query's `eval_config.itm_top_k` best
    candidates by the Scorer re-ranked by the Matcher's ITM logits."""
    spec = datasets.spec_of(eval_config, "retrieval")
    k, batch_size = eval_config.itm_top_k, eval_config.batch_size
    results = {}
    for split, captioned in datasets.caption_sets(
            spec, SPLITS, eval_config.retrieval_size, eval_config.seed,
            eval_config.image_size).items():
        captions = captioned.captions
        images = captioned.images
        scores = score_matrix(scorer.similarity, embed_images(scorer, images, batch_size),
                              embed_texts(scorer, captions, batch_size), batch_size)
        matches = caption_matches(captions)
        tokens = tokenize_texts(matcher, captions)
        i2t = top_candidates(scores, matches, k)  # [N, K] texts per image
        t2i = top_candidates(scores.T, matches.T, k)  # [N, K] images per text
        queries = np.repeat(np.arange(len(captions)), i2t.shape[1])
        i2t_logits = match_pairs(matcher, images, tokens, queries, i2t.ravel(), batch_size)
        t2i_logits = match_pairs(matcher, images, tokens, t2i.ravel(), queries, batch_size)
        metrics = reranked_retrieval_metrics(scores, matches, i2t, i2t_logits.reshape(i2t.shape),
                                             t2i, t2i_logits.reshape(t2i.shape))
        for metric, value in metrics.items():
            results[f"itm_retrieval/{split}/{metric}"] = value
    return results
