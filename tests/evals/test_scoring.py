import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.evals.scoring import (
    Scorer,
    cosine_similarity,
    embed_in_chunks,
    embed_texts,
    pessimistic_rank,
    score_matrix,
)


class RecordingEncoder:
    """Doubles its input and remembers every chunk it was called with."""

    def __init__(self):
        self.chunks = []

    def __call__(self, inputs):
        self.chunks.append(inputs.copy())
        return inputs.astype(np.float32) * 2


def test_embed_in_chunks_pads_the_last_chunk_and_cuts_the_padding():
    inputs = np.arange(10 * 3).reshape(10, 3)
    encoder = RecordingEncoder()
    embeddings = embed_in_chunks(encoder, inputs, batch_size=4)
    np.testing.assert_array_equal(embeddings, inputs * 2)
    assert [chunk.shape for chunk in encoder.chunks] == [(4, 3)] * 3
    # The last chunk holds rows 8, 9 and then row 9 repeated as padding.
    np.testing.assert_array_equal(encoder.chunks[-1], inputs[[8, 9, 9, 9]])


def test_embed_in_chunks_pads_inputs_smaller_than_one_batch():
    encoder = RecordingEncoder()
    embeddings = embed_in_chunks(encoder, np.ones((3, 2)), batch_size=8)
    assert embeddings.shape == (3, 2)
    assert [chunk.shape for chunk in encoder.chunks] == [(8, 2)]


def test_a_jitted_encoder_compiles_once_for_every_chunk():
    traces = []

    @jax.jit
    def encode(images):
        traces.append(images.shape)  # runs only while tracing
        return jnp.mean(images.astype(jnp.float32), axis=(1, 2))  # [N, 3]

    images = np.random.default_rng(0).integers(0, 256, size=(23, 4, 4, 3), dtype=np.uint8)
    embeddings = embed_in_chunks(encode, images, batch_size=8)
    assert traces == [(8, 4, 4, 3)]
    assert isinstance(embeddings, np.ndarray)
    np.testing.assert_allclose(embeddings, images.mean(axis=(1, 2)), rtol=1e-6)


def test_embed_in_chunks_rejects_an_encoder_that_drops_rows():
    with pytest.raises(ValueError, match="one embedding per input"):
        embed_in_chunks(lambda chunk: chunk[:-1], np.ones((5, 2)), batch_size=4)


def test_embed_texts_tokenizes_then_encodes():
    scorer = Scorer(
        encode_images=lambda images: images,
        encode_texts=lambda tokens: tokens.sum(axis=1, keepdims=True).astype(np.float32),
        tokenize=lambda texts: np.array([[len(text), 1] for text in texts], np.int32),
    )
    embeddings = embed_texts(scorer, ["a", "bbb", "cc"], batch_size=2)
    np.testing.assert_array_equal(embeddings, [[2], [4], [3]])


def test_embed_texts_rejects_a_tokenizer_with_the_wrong_row_count():
    scorer = Scorer(
        encode_images=lambda images: images,
        encode_texts=lambda tokens: tokens,
        tokenize=lambda texts: np.zeros((1, 4), np.int32),
    )
    with pytest.raises(ValueError, match="one row per text"):
        embed_texts(scorer, ["a", "b"], batch_size=2)


def test_cosine_similarity_matches_the_formula():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
    expected = np.array(
        [[a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in texts] for a in images]
    )
    np.testing.assert_allclose(cosine_similarity(images, texts), expected, rtol=1e-12)


def test_cosine_similarity_of_a_zero_embedding_is_zero():
    scores = cosine_similarity(np.zeros((1, 3)), np.eye(3))
    np.testing.assert_array_equal(scores, np.zeros((1, 3)))


def test_cosine_similarity_rejects_other_shapes():
    with pytest.raises(ValueError, match="own `similarity`"):
        cosine_similarity(np.zeros((2, 3, 4)), np.zeros((2, 4)))


def test_score_matrix_in_padded_chunks_equals_one_call():
    rng = np.random.default_rng(1)
    images, texts = rng.normal(size=(11, 6)), rng.normal(size=(9, 6))
    chunk_shapes = []

    def similarity(image_chunk, text_embeddings):
        chunk_shapes.append(image_chunk.shape)
        return cosine_similarity(image_chunk, text_embeddings)

    np.testing.assert_array_equal(
        score_matrix(similarity, images, texts, batch_size=4), cosine_similarity(images, texts)
    )
    assert chunk_shapes == [(4, 6)] * 3


def test_score_matrix_rejects_a_similarity_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"scores \[N, M\]"):
        score_matrix(lambda a, b: a @ b.T[:, :1], np.ones((2, 3)), np.ones((4, 3)), 8)


def test_pessimistic_rank_counts_ties_and_nans_as_ahead():
    scores = np.array(
        [
            [3.0, 1.0, 2.0],  # match 0 strictly best -> rank 1
            [1.0, 1.0, 0.0],  # match 0 ties candidate 1 -> rank 2
            [0.0, 2.0, 1.0],  # match 2 beaten by candidate 1 -> rank 2
            [5.0, np.nan, 1.0],  # NaN candidate counts as ahead -> rank 2
            [np.nan, 0.0, 1.0],  # NaN match is behind everything -> rank 3
            [1.0, 4.0, 4.0],  # two matches (1, 2) tie each other: no penalty -> rank 1
        ]
    )
    matches = np.zeros((6, 3), bool)
    matches[[0, 1, 2, 3, 4], [0, 0, 2, 0, 0]] = True
    matches[5, [1, 2]] = True
    np.testing.assert_array_equal(pessimistic_rank(scores, matches), [1, 2, 2, 2, 3, 1])


def test_pessimistic_rank_needs_a_match_in_every_row():
    with pytest.raises(ValueError, match="at least one True"):
        pessimistic_rank(np.zeros((2, 2)), np.array([[True, False], [False, False]]))
