"""Caption heuristics (DataComp's basic filter, text part): enough words and characters, and
not one token repeated for most of the caption."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def caption_keep(captions: Sequence[str], *, min_words: int = 3, min_chars: int = 6,
                 max_repeat_share: float = 0.5) -> np.ndarray:
    """bool [n]: > min_words - 1 words, >= min_chars characters, and the most frequent word
    at most max_repeat_share of the words."""
    keep = []
    for caption in captions:
        words = caption.lower().replace(".", " ").replace(",", " ").split()
        top = Counter(words).most_common(1)[0][1] if words else 0
        keep.append(len(words) >= min_words and len(caption.strip()) >= min_chars
                    and top <= max_repeat_share * len(words))
    return np.array(keep, bool)
