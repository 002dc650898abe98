"""The synthetic world: procedural scenes with true captions, probe pairs and questions.

Every example is a pure function of (seed, split, index): no files, any process can make any
example. Vocabulary and scene sampling live in world_scene.py, drawing in world_render.py,
words in world_text.py; this module holds the datasets built from them.
"""

from dataclasses import dataclass
from operator import index as as_index

import numpy as np

from vlm_jax.data.world_render import Renderer
from vlm_jax.data.world_scene import (
    ALL_PAIRS,
    COLOURS,
    HELDOUT_CLASSES,
    HELDOUT_PAIR_LIST,
    HELDOUT_PAIRS,
    SEEN_CLASSES,
    SEEN_PAIRS,
    SHAPES,
    SIZES,
    Scene,
    WorldObject,
    sample_scene,
)
from vlm_jax.data.world_text import (
    NUMBER_WORDS,
    QA_KINDS,
    ZEROSHOT_TEMPLATES,
    compare_counts,
    describe,
    plural,
    question_answer,
)

__all__ = [
    "COLOURS", "HELDOUT_CLASSES", "HELDOUT_PAIRS", "PROBE_KINDS", "QA_KINDS", "SEEN_CLASSES",
    "SHAPES", "SIZES", "SPLITS", "WORLD_VERSION", "ZEROSHOT_TEMPLATES", "ProbePair", "QAItem",
    "Scene", "World", "WorldObject", "probe_pairs", "qa_items", "single_object_set",
]

# Bump when scenes, rendering or caption wording change: cached tokenizers are keyed on it.
WORLD_VERSION = 1
SPLITS = ("train", "val", "heldout")
SPLIT_SIZES = {"train": 1_000_000, "val": 10_000, "heldout": 10_000}
PROBE_KINDS = ("relation", "attribute", "count")
# Generators are seeded with [seed, split id, index, stream] (or [seed, stream, id]): independent
# streams, so e.g. caption(scene, i) needs no rendering to reproduce. No id is 0 because
# SeedSequence ignores trailing zeros ([s, 1, 0] seeds the same as [s, 1]).
_SPLIT_IDS = {"train": 1, "val": 2, "heldout": 3}
_SCENE_STREAM, _RENDER_STREAM, _CAPTION_STREAM = 1, 2, 3
_TRAIN_QA_STREAM, _DOC_STREAM = 4, 5
_SINGLE_SET_STREAM, _PROBE_STREAM, _QA_STREAM = 11, 12, 13


def _check_split(split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid splits: {valid}")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    return int(seed)


def _split_pairs(split: str) -> tuple[tuple, tuple]:
    """(pairs objects are drawn from, pairs at least one object must have) for a split."""
    return (ALL_PAIRS, HELDOUT_PAIR_LIST) if split == "heldout" else (SEEN_PAIRS, ())


class World:
    """Random-access dataset of (image, caption) examples for one split.

    train: 1,000,000 examples; val: 10,000 from the same distribution on its own random stream;
    heldout: 10,000 scenes each with at least one colour-shape pair never shown in train or val.
    """

    def __init__(self, split: str = "train", seed: int = 0, image_size: int = 32):
        _check_split(split, SPLITS)
        self.split = split
        self.seed = _check_seed(seed)
        self.image_size = image_size
        self._renderer = Renderer(image_size)
        self.grid = self._renderer.grid
        self._pairs, self._required_pairs = _split_pairs(split)

    def __len__(self) -> int:
        return SPLIT_SIZES[self.split]

    def __repr__(self) -> str:
        return f"World(split={self.split!r}, seed={self.seed}, image_size={self.image_size})"

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index, stream])

    def _check_index(self, index: int) -> int:
        index = as_index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r} of length {len(self)}")
        return index

    def scene(self, index: int) -> Scene:
        """The scene at `index`; the same for every call and every process."""
        rng = self._rng(self._check_index(index), _SCENE_STREAM)
        return sample_scene(rng, self.grid, self._pairs, self._required_pairs)

    def caption(self, scene: Scene, index: int) -> str:
        """One caption true of `scene`; `index` picks the template and word order."""
        return describe(scene, self.grid, self._rng(as_index(index), _CAPTION_STREAM))

    def render(self, scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 [S, S, 3]; with `rng`, objects are shifted inside their cells and noise added."""
        return self._renderer.render(scene, rng)

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        scene = self.scene(index)
        image = self._renderer.render(scene, self._rng(index, _RENDER_STREAM))
        return {"image": image, "caption": self.caption(scene, index), "index": index}

    def question_answer(self, index: int) -> tuple[str, str]:
        """A (question, answer) about example `index`'s scene; kinds cycle like qa_items'.

        Random access, for instruction training (evals keep their own qa_items sets)."""
        return self.conversation(index, 1)[0]

    def conversation(self, index: int, turns: int) -> list[tuple[str, str]]:
        """`turns` (question, answer) pairs about example `index`'s scene (multi-turn
        instruction data): turn t asks kind (index + t) in QA_KINDS' cycle, a kind the scene
        cannot answer passing to the next; turn 0 is `question_answer(index)`."""
        index = self._check_index(index)
        scene, rng = self.scene(index), self._rng(index, _TRAIN_QA_STREAM)
        pairs = []
        for turn in range(turns):
            for shift in range(len(QA_KINDS)):  # a kind the scene cannot answer passes on
                kind = QA_KINDS[(index + turn + shift) % len(QA_KINDS)]
                if (qa := question_answer(scene, self.grid, kind, rng, self._pairs)) is not None:
                    pairs.append(qa)
                    break
            else:
                raise AssertionError("colour and count questions exist for every scene")
        return pairs

    def document(self, index: int, max_images: int) -> dict:
        """An interleaved document: 1..max_images scenes, each followed by its caption, and,
        with two or more, a sentence comparing the first and the last (true by construction).

        {"images": [uint8 [S, S, 3]] * k, "texts": [caption] * k, "closing": str}; image 0 is
        example `index` itself, the others come from the document's own random stream.
        """
        index = self._check_index(index)
        rng = self._rng(index, _DOC_STREAM)
        count = 1 + int(rng.integers(max_images))
        first = self[index]
        images, texts, scenes = [first["image"]], [first["caption"]], [self.scene(index)]
        for _ in range(count - 1):
            scene = sample_scene(rng, self.grid, self._pairs, self._required_pairs)
            images.append(self._renderer.render(scene, rng))
            texts.append(describe(scene, self.grid, rng))
            scenes.append(scene)
        closing = compare_counts(scenes[0], scenes[-1], count) if count > 1 else ""
        return {"images": images, "texts": texts, "closing": closing}


def single_object_set(
    split: str, n: int, seed: int = 0, image_size: int = 32
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Zero-shot classification set: images uint8 [n, S, S, 3], labels int32 [n], class names.

    "val": one object of a seen class per image, names SEEN_CLASSES (24). "heldout": one object
    of a held-out class, names SEEN_CLASSES + HELDOUT_CLASSES (28). Classes are balanced.
    """
    _check_split(split, ("val", "heldout"))
    renderer = Renderer(image_size)
    names = SEEN_CLASSES if split == "val" else SEEN_CLASSES + HELDOUT_CLASSES
    first = 0 if split == "val" else len(SEEN_CLASSES)
    rng = np.random.default_rng([_check_seed(seed), _SINGLE_SET_STREAM, _SPLIT_IDS[split]])
    labels = (first + rng.permutation(np.arange(n) % (len(names) - first))).astype(np.int32)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    for i, label in enumerate(labels):
        colour, shape = names[label].split()
        cell = int(rng.integers(renderer.grid**2))
        obj = WorldObject(shape, colour, SIZES[int(rng.integers(len(SIZES)))],
                          cell // renderer.grid, cell % renderer.grid)
        images[i] = renderer.render(Scene((obj,)), rng)
    return images, labels, names


@dataclass(frozen=True)
class ProbePair:
    kind: str  # "relation" | "attribute" | "count"
    images: tuple[np.ndarray, np.ndarray]  # uint8 [S, S, 3] each
    captions: tuple[str, str]  # captions[i] is true of images[i] and false of images[1 - i]


def _scene(*objects: WorldObject) -> Scene:
    return Scene(tuple(sorted(objects, key=lambda o: (o.row, o.col))))


def _relation_probe(rng: np.random.Generator, grid: int) -> tuple[Scene, Scene, str, str]:
    a, b = (SEEN_PAIRS[k] for k in rng.permutation(len(SEEN_PAIRS))[:2])
    size_a, size_b = (SIZES[k] for k in rng.integers(len(SIZES), size=2))
    line, (first, second) = int(rng.integers(grid)), np.sort(rng.permutation(grid)[:2])
    horizontal = rng.random() < 0.5
    cell = (lambda k: (line, int(k))) if horizontal else (lambda k: (int(k), line))
    scenes = [
        _scene(WorldObject(x[1], x[0], sx, *cell(first)),
               WorldObject(y[1], y[0], sy, *cell(second)))
        for x, sx, y, sy in ((a, size_a, b, size_b), (b, size_b, a, size_a))
    ]
    # scenes[0] has a first (left/top) and b second; the relation word may point either way.
    name_a, name_b = " ".join(a), " ".join(b)
    forward, backward = ("left of", "right of") if horizontal else ("above", "below")
    if rng.random() < 0.5:
        texts = (f"a {name_a} {forward} a {name_b}.", f"a {name_b} {forward} a {name_a}.")
    else:
        texts = (f"a {name_b} {backward} a {name_a}.", f"a {name_a} {backward} a {name_b}.")
    return scenes[0], scenes[1], texts[0], texts[1]


def _attribute_probe(rng: np.random.Generator, grid: int) -> tuple[Scene, Scene, str, str]:
    while True:  # all four colour-shape pairs must be seen ones
        c1, c2 = (COLOURS[k] for k in rng.permutation(len(COLOURS))[:2])
        s1, s2 = (SHAPES[k] for k in rng.permutation(len(SHAPES))[:2])
        if not {(c1, s1), (c2, s2), (c2, s1), (c1, s2)} & HELDOUT_PAIRS:
            break
    p, q = (divmod(int(k), grid) for k in rng.permutation(grid * grid)[:2])
    z1, z2 = (SIZES[k] for k in rng.integers(len(SIZES), size=2))
    return (
        _scene(WorldObject(s1, c1, z1, *p), WorldObject(s2, c2, z2, *q)),
        _scene(WorldObject(s1, c2, z1, *p), WorldObject(s2, c1, z2, *q)),
        f"a {c1} {s1} and a {c2} {s2}.",
        f"a {c2} {s1} and a {c1} {s2}.",
    )


def _count_probe(rng: np.random.Generator, grid: int) -> tuple[Scene, Scene, str, str]:
    (colour, shape), distractor = (SEEN_PAIRS[k] for k in rng.permutation(len(SEEN_PAIRS))[:2])
    low = int(rng.integers(2, 4))  # 2 vs 3 or 3 vs 4; the low image gets a distractor object
    scenes = []
    for k in (low, low + 1):
        cells = [divmod(int(c), grid) for c in rng.permutation(grid * grid)[: low + 1]]
        kinds = [(colour, shape)] * k + [distractor] * (low + 1 - k)
        scenes.append(_scene(*(WorldObject(s, c, SIZES[int(rng.integers(len(SIZES)))], *cell)
                               for (c, s), cell in zip(kinds, cells, strict=True))))
    template = "{} {} {}." if rng.random() < 0.5 else "there are {} {} {}."
    texts = [template.format(NUMBER_WORDS[k], colour, plural(shape)) for k in (low, low + 1)]
    if rng.random() < 0.5:
        return scenes[1], scenes[0], texts[1], texts[0]
    return scenes[0], scenes[1], texts[0], texts[1]


_PROBE_MAKERS = {"relation": _relation_probe, "attribute": _attribute_probe,
                 "count": _count_probe}


def probe_pairs(kind: str, n: int, seed: int = 0, image_size: int = 32) -> list[ProbePair]:
    """n hard-negative pairs of seen colour-shape pairs: relation swapped, attributes swapped
    between two objects, or count changed by one."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; valid kinds: {PROBE_KINDS}")
    renderer = Renderer(image_size)
    kind_id = 1 + PROBE_KINDS.index(kind)
    rng = np.random.default_rng([_check_seed(seed), _PROBE_STREAM, kind_id])
    pairs = []
    for _ in range(n):
        scene0, scene1, text0, text1 = _PROBE_MAKERS[kind](rng, renderer.grid)
        images = (renderer.render(scene0, rng), renderer.render(scene1, rng))
        pairs.append(ProbePair(kind, images, (text0, text1)))
    return pairs


@dataclass(frozen=True)
class QAItem:
    image: np.ndarray  # uint8 [S, S, 3]
    question: str
    answer: str
    kind: str  # "colour" | "count" | "spatial" | "yesno"
    scene: Scene


def qa_items(n: int, split: str = "val", seed: int = 0, image_size: int = 32) -> list[QAItem]:
    """n questions with one-word (or position) answers, kinds cycling colour/count/spatial/yesno,
    on scenes drawn like the split's (heldout scenes contain a held-out pair)."""
    _check_split(split, SPLITS)
    renderer = Renderer(image_size)
    pairs, required = _split_pairs(split)
    rng = np.random.default_rng([_check_seed(seed), _QA_STREAM, _SPLIT_IDS[split]])
    items = []
    for i in range(n):
        kind = QA_KINDS[i % len(QA_KINDS)]
        qa = None
        while qa is None:  # a few scenes (e.g. only repeated objects) cannot answer "where is"
            scene = sample_scene(rng, renderer.grid, pairs, required)
            qa = question_answer(scene, renderer.grid, kind, rng, pairs)
        items.append(QAItem(renderer.render(scene, rng), qa[0], qa[1], kind, scene))
    return items
