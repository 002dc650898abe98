"""Hard negatives mined from the contrastive similarities: never a positive, drawn with the
softmax's probabilities (checked against NumPy over many draws)."""

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.losses.hard_negatives import same_text, sample_hard_negatives


def numpy_negative_probabilities(similarity, positives):
    """Row i: softmax over j of s[i, j] with the positives' weight set to zero."""
    weights = np.exp(similarity - similarity.max(axis=1, keepdims=True)) * ~positives
    return weights / weights.sum(axis=1, keepdims=True)


def test_draws_follow_the_softmax_without_the_positives():
    rng = np.random.default_rng(0)
    similarity = rng.normal(size=(5, 5)) * 2.0
    positives = np.eye(5, dtype=bool)
    positives[1, 3] = positives[3, 1] = True  # rows 1 and 3 share a caption
    draws = 20000
    keys = jax.random.split(jax.random.PRNGKey(0), draws)
    texts, images, valid = jax.vmap(lambda k: sample_hard_negatives(
        k, jnp.asarray(similarity), jnp.asarray(positives)))(keys)
    texts, images = np.asarray(texts), np.asarray(images)
    assert np.asarray(valid).all()
    for row in range(5):
        assert not positives[row, texts[:, row]].any()  # never a positive text
        assert not positives[images[:, row], row].any()  # never a positive image
    expected_texts = numpy_negative_probabilities(similarity, positives)
    expected_images = numpy_negative_probabilities(similarity.T, positives.T)
    for expected, drawn in ((expected_texts, texts), (expected_images, images)):
        frequencies = np.stack([np.bincount(drawn[:, row], minlength=5) / draws
                                for row in range(5)])
        standard_error = np.sqrt(expected * (1 - expected) / draws)
        np.testing.assert_array_less(np.abs(frequencies - expected), 4 * standard_error + 1e-9)


def test_a_batch_of_one_caption_has_no_valid_negative():
    tokens = jnp.array([[5, 6, 3, 0], [5, 6, 3, 0], [7, 3, 0, 0]])
    positives = same_text(tokens)
    np.testing.assert_array_equal(positives, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    _, _, valid = sample_hard_negatives(jax.random.PRNGKey(0), jnp.zeros((3, 3)), positives)
    assert np.asarray(valid).all()
    _, _, valid = sample_hard_negatives(jax.random.PRNGKey(0), jnp.zeros((2, 2)),
                                        jnp.ones((2, 2), bool))
    assert not np.asarray(valid).any()

