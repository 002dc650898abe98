"""CM3leon's retrieval memory: world documents keyed by a trained contrastive run, searched by
inner product.

    key(document)  = (normalise(image embedding) + normalise(text embedding)) / 2
                     (CM3leon's dense retriever: the mean of the L2-normalised modalities)
    search         = maximum inner product over the keys (`ExactIndex`: one matrix product; an
                     index with the same `search(queries [Q, D], k) -> (scores, ids)` method,
                     e.g. a faiss IndexFlatIP or a ScaNN searcher, can replace it)
    retrieve       = the k best documents by score, skipping the query's own document, documents
                     already taken, and near-duplicates (score > max_score, 0.9 by default)

The bank is small (thousands of documents), so embedding and searching run on the host when
the data source is built; the per-example lookup is then a table read.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vlm_jax.curation.semdedup import normalise


class Index(Protocol):
    def __len__(self) -> int: ...  # documents in the bank
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class ExactIndex:
    """Exact maximum-inner-product search over keys [N, D]."""

    def __init__(self, keys: np.ndarray):
        self.keys = np.asarray(keys, np.float32)

    def __len__(self) -> int:
        return len(self.keys)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [Q, k], ids int64 [Q, k]) of the k largest inner products, best
        first (ties: the lower id first)."""
        if not 1 <= k <= len(self.keys):
            raise ValueError(f"search k={k} must be in [1, {len(self.keys)}] (the bank size)")
        scores = np.asarray(queries, np.float32) @ self.keys.T  # [Q, N]
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, ids, axis=1), ids


def document_keys(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Keys [N, D]: the mean of the L2-normalised image [N, D] and text [N, D] embeddings."""
    return (normalise(np.asarray(image_embeddings, np.float64))
            + normalise(np.asarray(text_embeddings, np.float64))) / 2


def retrieve(index: Index, queries: np.ndarray, query_ids: np.ndarray, k: int = 2,
             max_score: float = 0.9, candidates: int = 0) -> np.ndarray:
    """ids int64 [Q, k] of the documents retrieved for each query [Q, D], best first.

    query_ids [Q]: each query's own id in the bank (-1 if not in it), never retrieved;
    a candidate scoring above max_score (a near-duplicate) or already taken is skipped; the
    index is asked for `candidates` (default 4k + 1) per query, and a row short of k
    acceptable ones is refused."""
    candidates = candidates or 4 * k + 1
    scores, ids = index.search(queries, min(candidates, len(index)))
    out = np.full((len(queries), k), -1, np.int64)
    for q in range(len(queries)):
        taken: list[int] = []
        for score, doc in zip(scores[q], ids[q], strict=True):
            if doc == query_ids[q] or score > max_score or doc in taken:
                continue
            taken.append(int(doc))
            if len(taken) == k:
                break
        if len(taken) < k:
            raise ValueError(f"query {q} found {len(taken)} of {k} documents among its "
                             f"{len(ids[q])} candidates (the rest are itself or above "
                             f"max_score={max_score}); raise candidates or max_score")
        out[q] = taken
    return out


def world_bank(scorer, size: int, seed: int = 0, image_size: int = 32,
               batch_size: int = 256) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The memory bank of the first `size` world train examples (image, caption): (images
    uint8 [N, S, S, 3], captions [N], keys [N, D]) embedded by `scorer` (a contrastive run's
    `restore_run(workdir).scorer()`)."""
    from vlm_jax.data.world import World
    from vlm_jax.evals.scoring import embed_images, embed_texts

    world = World("train", seed=seed, image_size=image_size)
    examples = [world[i] for i in range(size)]
    images = np.stack([e["image"] for e in examples])
    captions = [e["caption"] for e in examples]
    keys = document_keys(embed_images(scorer, images, batch_size),
                         embed_texts(scorer, captions, batch_size))
    return images, captions, keys
