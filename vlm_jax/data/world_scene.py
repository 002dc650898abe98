"""The vocabulary of the synthetic world (shapes, colours, sizes, held-out pairs) and its scenes.

A scene is 1-4 objects, each in its own cell of a small grid (2x2 below 48 px, 3x3 from 48 px).
Sampling is a pure function of a NumPy generator, so any process can rebuild any scene.
"""

from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan", "white")
SIZES = ("small", "large")

# One held-out pair per shape and a different colour for each, so every colour and every shape
# is still seen in train; only these combinations are new.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("yellow", "circle"), ("green", "square"), ("blue", "triangle"), ("purple", "cross")}
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
SEEN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)
HELDOUT_PAIR_LIST = tuple(p for p in ALL_PAIRS if p in HELDOUT_PAIRS)
SEEN_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c, s in SEEN_PAIRS)
HELDOUT_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c, s in HELDOUT_PAIR_LIST)

MAX_OBJECTS = 4
# Single-object scenes are about a third of the data: they teach the colour-shape names that
# zero-shot classification asks for; the rest teach relations, counts and binding.
OBJECT_COUNT_PROBS = (0.35, 0.30, 0.20, 0.15)
_OBJECT_COUNT_CDF = tuple(accumulate(OBJECT_COUNT_PROBS))[:-1]
# Share of multi-object scenes whose first k objects repeat one colour-shape pair, so count
# words above "one" are common.
GROUP_PROB = 0.4
MIN_IMAGE_SIZE = 16


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    size: str
    row: int
    col: int

    @property
    def name(self) -> str:
        """The class name, e.g. "red circle"."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]

    def pair_counts(self) -> Counter:
        """Number of objects per (colour, shape)."""
        return Counter((o.colour, o.shape) for o in self.objects)


def grid_size(image_size: int) -> int:
    """Cells per side: 2 below 48 px (16 px cells at 32 px), 3 from 48 px."""
    if not isinstance(image_size, int | np.integer) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be an int >= {MIN_IMAGE_SIZE} (objects need room to be drawn); "
            f"got {image_size!r}"
        )
    return 2 if image_size < 48 else 3


def position_name(row: int, col: int, grid: int) -> str:
    """Words for a cell: "top left" on 2x2; on 3x3 also "top", "left", ..., "centre"."""
    vertical = ("top", "bottom") if grid == 2 else ("top", "", "bottom")
    horizontal = ("left", "right") if grid == 2 else ("left", "", "right")
    words = [w for w in (vertical[row], horizontal[col]) if w]
    return " ".join(words) or "centre"


def sample_scene(
    rng: np.random.Generator,
    grid: int,
    pairs: tuple[tuple[str, str], ...],
    required_pairs: tuple[tuple[str, str], ...] = (),
) -> Scene:
    """A scene of 1-4 objects in distinct cells, colour-shape pairs drawn from `pairs`.

    With `required_pairs`, at least one object (or the whole repeated group) is drawn from them.
    Objects are ordered by (row, col), so equal scenes compare equal.
    """
    n = 1 + bisect_right(_OBJECT_COUNT_CDF, rng.random())  # faster than rng.choice(p=...)
    cells = rng.permutation(grid * grid)[:n]
    chosen = [pairs[i] for i in rng.integers(len(pairs), size=n)]
    group = int(rng.integers(2, n + 1)) if n >= 2 and rng.random() < GROUP_PROB else 1
    chosen[:group] = [chosen[0]] * group
    if required_pairs:
        required = required_pairs[int(rng.integers(len(required_pairs)))]
        j = int(rng.integers(n))
        if j < group:
            chosen[:group] = [required] * group
        else:
            chosen[j] = required
    sizes = rng.integers(len(SIZES), size=n)
    objects = [
        WorldObject(shape, colour, SIZES[size], int(cell) // grid, int(cell) % grid)
        for (colour, shape), size, cell in zip(chosen, sizes, cells, strict=True)
    ]
    return Scene(tuple(sorted(objects, key=lambda o: (o.row, o.col))))
