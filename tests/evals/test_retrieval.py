import numpy as np
import pytest

from vlm_jax.evals.retrieval import caption_matches, retrieval_metrics

KEYS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "chance_r1"]


def test_a_perfect_scorer_recalls_everything():
    metrics = retrieval_metrics(np.eye(20) + 0.01 * np.arange(20)[None, :])
    assert list(metrics) == KEYS
    assert all(metrics[key] == 1.0 for key in KEYS[:-1])
    assert metrics["chance_r1"] == pytest.approx(1 / 20)


def test_a_constant_scorer_recalls_nothing():
    # Every candidate ties the match, so the match ranks last (20th): no hit at k <= 10.
    metrics = retrieval_metrics(np.zeros((20, 20)))
    assert all(metrics[key] == 0.0 for key in KEYS[:-1])


def test_recall_on_a_hand_built_matrix_in_both_directions():
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.0],  # image 0: text 0 first
            [0.5, 0.4, 0.0, 0.0],  # image 1: text 1 second
            [0.3, 0.3, 0.3, 0.0],  # image 2: text 2 tied with two -> rank 3
            [0.8, 0.9, 0.1, 0.7],  # image 3: text 3 third
        ]
    )
    metrics = retrieval_metrics(scores, recall_at=(1, 2, 3))
    # image->text ranks 1, 2, 3, 3; text->image (columns) ranks: text 0: 1 (0.9 vs 0.5, 0.3,
    # 0.8), text 1: 2 (0.9 beats 0.4), text 2: 1, text 3: 1.
    assert metrics["i2t_r1"] == 0.25
    assert metrics["i2t_r2"] == 0.5
    assert metrics["i2t_r3"] == 1.0
    assert metrics["t2i_r1"] == 0.75
    assert metrics["t2i_r2"] == 1.0


def test_duplicate_captions_all_count_as_matches():
    captions = ["a red circle.", "a blue square.", "a red circle."]
    matches = caption_matches(captions)
    np.testing.assert_array_equal(
        matches, [[True, False, True], [False, True, False], [True, False, True]]
    )
    # A model scoring by caption text cannot separate texts 0 and 2; with duplicates as
    # matches it is perfect, with the diagonal alone the tie would cost it.
    scores = matches.astype(float)
    assert retrieval_metrics(scores, matches)["i2t_r1"] == 1.0
    assert retrieval_metrics(scores)["i2t_r1"] == pytest.approx(1 / 3)
    assert retrieval_metrics(scores, matches)["chance_r1"] == pytest.approx(5 / 9)


def test_random_scores_are_at_chance():
    rng = np.random.default_rng(0)
    num_examples = 600
    metrics = retrieval_metrics(rng.normal(size=(num_examples, num_examples)))
    for direction in ("i2t", "t2i"):
        for k in (1, 5, 10):
            chance = k / num_examples
            standard_error = np.sqrt(chance * (1 - chance) / num_examples)
            assert abs(metrics[f"{direction}_r{k}"] - chance) < 3 * standard_error


def test_retrieval_needs_a_square_matrix():
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(np.zeros((3, 4)))
