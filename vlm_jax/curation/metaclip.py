"""MetaCLIP balancing: match captions to metadata entries (space-padded substring match),
keep an entry's pairs with probability min(1, t / count), keep a pair if any of its entries
keeps it; pairs matching no entry are dropped."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlm_jax.data.world_scene import COLOURS, SHAPES


def world_metadata() -> tuple[str, ...]:
    """Our default entries: the world's colour, shape (and plural) and relation words."""
    shapes = tuple(SHAPES) + tuple(s + ("es" if s.endswith(("s", "x")) else "s") for s in SHAPES)
    return tuple(COLOURS) + shapes + ("left of", "right of", "above", "below")


def _padded(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else " " for ch in text.lower())
    return " " + " ".join(cleaned.split()) + " "


def match_entries(captions: Sequence[str], entries: Sequence[str]) -> np.ndarray:
    """bool [n, E]: entry e occurs in caption i as whole words (" e " in " caption ")."""
    padded = [_padded(c) for c in captions]
    keys = [_padded(e) for e in entries]
    return np.array([[key in text for key in keys] for text in padded], bool).reshape(
        len(captions), len(entries))


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """p_e = min(1, t / count_e) (1 for entries that never occur)."""
    counts = np.asarray(counts, np.float64)
    return np.where(counts > 0, np.minimum(1.0, t / np.maximum(counts, 1)), 1.0)


def metaclip_keep(captions: Sequence[str], entries: Sequence[str], t: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(keep bool [n], counts int [E]): one Bernoulli(p_e) per (pair, matched entry)."""
    matches = match_entries(captions, entries)  # [n, E]
    counts = matches.sum(0)
    passed = matches & (rng.random(matches.shape) < entry_probabilities(counts, t)[None, :])
    return passed.any(axis=1), counts
