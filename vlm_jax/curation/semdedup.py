"""SemDeDup: spherical k-means on embeddings; inside each cluster, ordered farthest from the
centroid first, drop item j when its cosine to an earlier item exceeds 1 - eps (so the first
of every near-duplicate group stays)."""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def spherical_kmeans(embeddings: np.ndarray, num_clusters: int, *, iterations: int = 20,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(assignments int [n], unit centroids [k, d]) by cosine k-means from k random points."""
    x = normalise(np.asarray(embeddings, np.float64))
    num_clusters = min(num_clusters, len(x))
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), num_clusters, replace=False)]
    for _ in range(iterations):
        assign = np.argmax(x @ centroids.T, axis=1)
        for c in range(num_clusters):
            members = x[assign == c]
            if len(members):  # an empty cluster keeps its old centroid
                centroids[c] = normalise(members.sum(0))
    return np.argmax(x @ centroids.T, axis=1), centroids


def semdedup_keep(embeddings: np.ndarray, eps: float, *, num_clusters: int = 1,
                  iterations: int = 20, seed: int = 0) -> np.ndarray:
    """bool [n]: False for the items SemDeDup drops at threshold 1 - eps."""
    x = normalise(np.asarray(embeddings, np.float64))
    assign, centroids = spherical_kmeans(x, num_clusters, iterations=iterations, seed=seed)
    keep = np.ones(len(x), bool)
    for c in range(len(centroids)):
        members = np.flatnonzero(assign == c)
        if len(members) < 2:
            continue
        # Farthest from the centroid first (lowest cosine), ties by index.
        members = members[np.argsort(-(1.0 - x[members] @ centroids[c]), kind="stable")]
        cos = x[members] @ x[members].T  # [m, m]
        earlier_max = np.max(np.triu(cos, k=1), axis=0)  # M_j = max_{i<j} cos(x_i, x_j)
        earlier_max[0] = -np.inf
        keep[members[earlier_max > 1.0 - eps]] = False
    return keep
