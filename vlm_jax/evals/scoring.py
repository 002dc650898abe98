"""The Scorer every eval consumes, and how to turn it into score matrices in bounded memory.

A Scorer is a model seen from outside: encode images, tokenize and encode texts, and score
every image against every text. Evals never touch parameters, so any family (two towers,
caption-conditioned embeddings, a matching head) plugs in by building one Scorer.

Ties are scored pessimistically everywhere (`pessimistic_rank`): a candidate that ties the
correct answer counts as beating it, so a constant or collapsed model scores zero, not chance.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# Guards the division for an all-zero embedding, whose cosine with anything is then 0.
_NORM_FLOOR = 1e-12


def l2_normalize(embeddings: np.ndarray, axis: int = -1) -> np.ndarray:
    """Embeddings scaled to unit L2 norm along `axis` (all-zero vectors stay zero), in float64."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norm = np.linalg.norm(embeddings, axis=axis, keepdims=True)
    return embeddings / np.maximum(norm, _NORM_FLOOR)


def cosine_similarity(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of every image with every text: [N, D] x [M, D] -> [N, M] float64."""
    image_embeddings = np.asarray(image_embeddings)
    text_embeddings = np.asarray(text_embeddings)
    if image_embeddings.ndim != 2 or text_embeddings.ndim != 2:
        raise ValueError(
            f"cosine_similarity needs 2-D embeddings [N, D] and [M, D], got shapes "
            f"{image_embeddings.shape} and {text_embeddings.shape}; give the Scorer its own "
            "`similarity` for embeddings of other shapes."
        )
    if image_embeddings.shape[1] != text_embeddings.shape[1]:
        raise ValueError(
            f"image and text embeddings differ in width ({image_embeddings.shape[1]} vs "
            f"{text_embeddings.shape[1]}); both towers must project to the same dimension."
        )
    return l2_normalize(image_embeddings) @ l2_normalize(text_embeddings).T


@dataclass(frozen=True)
class Scorer:
    """A model as the evals see it; see the module docstring."""

    encode_images: Callable[[np.ndarray], np.ndarray]  # uint8 [N, S, S, 3] -> [N, ...]
    encode_texts: Callable[[np.ndarray], np.ndarray]  # int32 [M, L] -> [M, ...]
    tokenize: Callable[[Sequence[str]], np.ndarray]  # captions -> int32 [M, L]
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray] = cosine_similarity  # -> [N, M]


def pad_rows(chunk: np.ndarray, size: int) -> np.ndarray:
    """`chunk` [n, ...] grown to [size, ...] by repeating its last row (n <= size).

    Fixed chunk shapes let a jitted function compile once. The last row, not zeros: an
    all-padding token row can make a masked-mean text encoder divide by zero.
    """
    if chunk.shape[0] == size:
        return chunk
    return np.concatenate([chunk, np.repeat(chunk[-1:], size - chunk.shape[0], axis=0)], axis=0)


def embed_in_chunks(
    encode: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch_size: int
) -> np.ndarray:
    """`encode(inputs)` computed `batch_size` rows at a time; returns a NumPy array [N, ...].

    Every call sees exactly `batch_size` rows, so a jitted encoder compiles once: the last
    chunk is padded (`pad_rows`) and the padding is cut from the result.
    """
    inputs = np.asarray(inputs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}; set eval_config.batch_size.")
    num_inputs = inputs.shape[0]
    if num_inputs == 0:
        raise ValueError("embed_in_chunks got no inputs; an eval needs at least one example.")
    chunks = []
    for start in range(0, num_inputs, batch_size):
        chunk = inputs[start : start + batch_size]
        num_real = chunk.shape[0]
        embeddings = np.asarray(encode(pad_rows(chunk, batch_size)))
        if embeddings.ndim == 0 or embeddings.shape[0] != batch_size:
            raise ValueError(
                f"the encoder returned shape {embeddings.shape} for a chunk of {batch_size} "
                "inputs; it must return one embedding per input (leading dimension "
                f"{batch_size})."
            )
        chunks.append(embeddings[:num_real])
    return np.concatenate(chunks, axis=0)


def embed_images(scorer: Scorer, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Image embeddings [N, ...] of uint8 images [N, S, S, 3], `batch_size` at a time."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, S, S, 3], got {images.dtype} {images.shape}.")
    return embed_in_chunks(scorer.encode_images, images, batch_size)


def embed_texts(scorer: Scorer, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Text embeddings [M, ...] of `texts`, tokenized by the scorer, `batch_size` at a time."""
    texts = list(texts)
    text_tokens = np.asarray(scorer.tokenize(texts))  # [M, L]
    if text_tokens.ndim != 2 or text_tokens.shape[0] != len(texts):
        raise ValueError(
            f"scorer.tokenize returned shape {text_tokens.shape} for {len(texts)} texts; "
            "it must return int token ids [M, L], one row per text."
        )
    return embed_in_chunks(scorer.encode_texts, text_tokens, batch_size)


def score_matrix(
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """Scores [N, M] of every image against every text, `batch_size` images at a time.

    Chunking over images keeps the similarity's intermediates at [batch_size, M, ...] (the
    last chunk padded, as in `embed_in_chunks`); the result is float64 so that ties are judged
    on the values the model produced.
    """
    num_images = min(image_embeddings.shape[0], batch_size)
    num_texts = text_embeddings.shape[0]
    rows = []
    for start in range(0, image_embeddings.shape[0], batch_size):
        chunk = image_embeddings[start : start + batch_size]
        scores = np.asarray(
            similarity(pad_rows(chunk, num_images), text_embeddings), dtype=np.float64
        )
        if scores.shape != (num_images, num_texts):
            raise ValueError(
                f"similarity returned shape {scores.shape} for {num_images} images and "
                f"{num_texts} texts; it must return scores [N, M]."
            )
        rows.append(scores[: chunk.shape[0]])
    return np.concatenate(rows, axis=0)


def pessimistic_rank(scores: np.ndarray, matches: np.ndarray) -> np.ndarray:
    """1-based rank [N] of each row's best-scoring match among its candidates; ties lose.

    scores [N, M]; matches bool [N, M], at least one True per row. The rank is 1 + the number
    of non-matching candidates scoring >= the best match, so a non-match tying the best match
    counts as ahead of it; so does a NaN score, and a row whose matches are all NaN ranks
    behind every non-match. A hit at k is `rank <= k`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    matches = np.asarray(matches, dtype=bool)
    if scores.ndim != 2 or scores.shape != matches.shape:
        raise ValueError(
            f"scores and matches must be 2-D and of one shape, got {scores.shape} and "
            f"{matches.shape}."
        )
    if not matches.any(axis=1).all():
        raise ValueError("every row of `matches` needs at least one True (a correct candidate).")
    best_match = np.where(matches & ~np.isnan(scores), scores, -np.inf).max(axis=1)  # [N]
    # `~(s < best)` rather than `s >= best`: a NaN comparison is False, so NaN counts as ahead.
    ahead = ~matches & ~(scores < best_match[:, None])  # [N, M]
    return 1 + ahead.sum(axis=1)
