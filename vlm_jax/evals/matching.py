"""What ITM-scored evals are given: a Matcher (the "matcher" capability of a trainer)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Matcher:
    """match(images uint8 [N, S, S, 3], tokens int32 [N, L]) -> float [N]: the log-odds that
    image i and text i match (pairs aligned row by row)."""

    match: Callable[[np.ndarray, np.ndarray], np.ndarray]
