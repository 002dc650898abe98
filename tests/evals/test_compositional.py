import numpy as np
import pytest

from vlm_jax.evals.compositional import (
    blind_score_blocks,
    pair_score_blocks,
    winoground_metrics,
)


def dot_similarity(images, texts):
    return images @ texts.T


def test_winoground_metrics_on_hand_built_pairs():
    pair_scores = np.array(
        [
            [[2.0, 1.0], [0.0, 3.0]],  # text ok (2>1, 3>0); image ok (2>0, 3>1): group
            [[2.0, 1.0], [3.0, 4.0]],  # text ok (2>1, 4>3); image no (2>3 fails)
            [[1.0, 2.0], [0.0, 3.0]],  # text no (1>2 fails); image ok (1>0, 3>2); acc2 1/2
            [[1.0, 1.0], [0.0, 1.0]],  # text no (tie 1=1); image ok (1>0, 1>1 fails) -> no
        ]
    )
    metrics = winoground_metrics(pair_scores)
    assert metrics["text"] == 0.5
    assert metrics["image"] == 0.5
    assert metrics["group"] == 0.25
    # Per image, true caption strictly ahead: pair 0: 2, pair 1: 2, pair 2: 1, pair 3: 1.
    assert metrics["acc2"] == pytest.approx(6 / 8)


def test_a_constant_scorer_scores_zero():
    metrics = winoground_metrics(np.full((10, 2, 2), 0.3))
    assert metrics == {"text": 0.0, "image": 0.0, "group": 0.0, "acc2": 0.0}


def test_an_oracle_scores_one():
    metrics = winoground_metrics(np.broadcast_to(np.eye(2), (10, 2, 2)))
    assert metrics == {"text": 1.0, "image": 1.0, "group": 1.0, "acc2": 1.0}


def test_random_scores_are_at_chance():
    rng = np.random.default_rng(0)
    num_pairs = 4000
    metrics = winoground_metrics(rng.normal(size=(num_pairs, 2, 2)))
    # Independent continuous scores: each of the four inequalities holds with probability 1/2;
    # text and image need two each (1/4); group needs all four orderings compatible (1/6:
    # the diagonal pair must both beat the off-diagonal pair, 4 of the 24 orderings).
    for metric, chance in (("acc2", 1 / 2), ("text", 1 / 4), ("image", 1 / 4), ("group", 1 / 6)):
        count = 2 * num_pairs if metric == "acc2" else num_pairs
        standard_error = np.sqrt(chance * (1 - chance) / count)
        assert abs(metrics[metric] - chance) < 3 * standard_error, metric


def test_chance_levels_by_brute_force_over_every_ordering():
    """All 24 orderings of four distinct scores, equally likely under random scores: exactly
    1/2 acc2, 1/4 text, 1/4 image, 1/6 group (the README's chance levels)."""
    import itertools

    orderings = np.array(list(itertools.permutations(range(4))), float).reshape(-1, 2, 2)
    metrics = winoground_metrics(orderings)
    for metric, chance in (("acc2", 1 / 2), ("text", 1 / 4), ("image", 1 / 4), ("group", 1 / 6)):
        assert metrics[metric] == pytest.approx(chance, abs=1e-12), metric


def test_pair_score_blocks_take_the_diagonal_blocks_of_the_full_matrix():
    rng = np.random.default_rng(1)
    num_pairs = 7
    images, captions = rng.normal(size=(2 * num_pairs, 4)), rng.normal(size=(2 * num_pairs, 4))
    full = dot_similarity(images, captions)
    expected = np.array(
        [
            [[full[2 * p + i, 2 * p + j] for j in range(2)] for i in range(2)]
            for p in range(num_pairs)
        ]
    )
    for batch_size in (1, 4, 5, 64):  # 1, 2, 2 and 32 pairs per chunk
        np.testing.assert_allclose(
            pair_score_blocks(dot_similarity, images, captions, batch_size), expected
        )


def test_the_blind_model_never_wins_a_group_and_gets_at_most_half_acc2():
    rng = np.random.default_rng(2)
    captions = rng.normal(size=(2 * 50, 8))
    mean_image = rng.normal(size=(1, 8))
    blind = winoground_metrics(blind_score_blocks(dot_similarity, mean_image, captions))
    # No ties (continuous captions): exactly one of each pair's two images is right.
    assert blind == {"text": 0.0, "image": 0.0, "group": 0.0, "acc2": 0.5}


def test_the_blind_model_loses_both_images_when_the_captions_tie():
    captions = np.repeat(np.random.default_rng(3).normal(size=(5, 8)), 2, axis=0)  # equal pairs
    blind = winoground_metrics(blind_score_blocks(dot_similarity, np.ones((1, 8)), captions))
    assert blind["acc2"] == 0.0


def test_winoground_metrics_need_two_by_two_blocks():
    with pytest.raises(ValueError, match=r"\[P, 2, 2\]"):
        winoground_metrics(np.zeros((3, 2, 3)))
