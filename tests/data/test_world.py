"""Tests of the synthetic world: determinism, splits, images and captions true of their scenes.

Images are decoded back into objects from pixels alone, and captions and answers are checked by
an independent parser of the sentence forms, so neither check reuses the generator's logic.
"""

import hashlib
import os
import re
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from vlm_jax.data import world
from vlm_jax.data.world_render import BACKGROUND_RGB, COLOUR_RGB

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
NUM = "|".join(NUMBERS)
COL = "|".join(world.COLOURS)
SH = "|".join(world.SHAPES)
POSITIONS = {
    2: {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)},
    3: {"top left": (0, 0), "top": (0, 1), "top right": (0, 2), "left": (1, 0), "centre": (1, 1),
        "right": (1, 2), "bottom left": (2, 0), "bottom": (2, 1), "bottom right": (2, 2)},
}
POS = "top left|top right|bottom left|bottom right|top|bottom|left|right|centre"
THING = r"(?:objects?|shapes?|things?)"


def grid_of(image_size):
    return 2 if image_size < 48 else 3


# ---------------------------------------------------------------- images -> objects, from pixels
def decode_image(image, image_size):
    """(shape, colour, size, row, col) of each object, found from pixels cell by cell."""
    grid = grid_of(image_size)
    cell = image_size // grid
    margin = (image_size - grid * cell) // 2
    background = np.asarray(BACKGROUND_RGB, float)
    found = []
    for row in range(grid):
        for col in range(grid):
            y, x = margin + row * cell, margin + col * cell
            patch = image[y : y + cell, x : x + cell].astype(float) - background  # [c, c, 3]
            distance = np.linalg.norm(patch, axis=-1)
            if distance.max() < 80:  # noise only
                continue
            mean = patch[distance > 0.8 * distance.max()].mean(0) + background
            colour = min(COLOUR_RGB, key=lambda c: np.linalg.norm(mean - COLOUR_RGB[c]))
            direction = np.asarray(COLOUR_RGB[colour], float) - background
            alpha = np.clip(patch @ direction / (direction @ direction), 0, 1)  # [c, c]
            ys, xs = np.nonzero(alpha > 0.5)
            height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
            fill = alpha.sum() / (height * width)
            centroid = (alpha.sum(1) @ np.arange(cell)) / alpha.sum()
            lean = (centroid - (ys.min() + ys.max()) / 2) / height  # > 0: mass low, apex up
            if lean > 0.08 or width > height:  # the apex row is faint, so triangles are wide
                shape = "triangle"
            elif fill > 0.9:
                shape = "square"
            elif fill > 0.72:
                shape = "circle"
            else:
                shape = "cross"
            size = "large" if max(height, width) > 0.5625 * cell else "small"
            found.append((shape, colour, size, row, col))
    return sorted(found)


def as_tuples(scene):
    return sorted((o.shape, o.colour, o.size, o.row, o.col) for o in scene.objects)


# -------------------------------------------------------------- caption -> checks against objects
def shape_of(word):
    """"crosses" -> "cross", "circles" -> "circle", "circle" -> "circle"."""
    for shape in world.SHAPES:
        if word in (shape, shape + "s", shape + "es"):
            return shape
    raise ValueError(word)


def caption_checks(caption, objects, grid):
    """List of (kind, holds) for every claim the parser recognises in `caption`.

    objects: (shape, colour, size, row, col) tuples.
    """
    def matching(colour=None, shape=None, size=None):
        return [o for o in objects if (shape is None or o[0] == shape)
                and (colour is None or o[1] == colour) and (size is None or o[2] == size)]

    checks = []
    for size, colour, shape in re.findall(rf"\b(?:(small|large) )?({COL}) ({SH})", caption):
        checks.append(("mention", bool(matching(colour, shape, size or None))))
    for num, size, colour, shape in re.findall(
            rf"\b({NUM}) (?:(small|large) )?({COL}) ({SH})(?:es|s)?\b", caption):
        checks.append(("pair_count", len(matching(colour, shape, size or None)) == NUMBERS[num]))
    for num, colour in re.findall(rf"\b({NUM}) ({COL}) {THING}\b", caption):
        checks.append(("colour_count", len(matching(colour=colour)) == NUMBERS[num]))
    for num, shape in re.findall(rf"\b({NUM}) ((?:{SH})(?:es|s)?)\b", caption):
        checks.append(("shape_count", len(matching(shape=shape_of(shape))) == NUMBERS[num]))
    for num in re.findall(rf"\b({NUM}) {THING}\b", caption):
        checks.append(("total", len(objects) == NUMBERS[num]))
    relation = (rf"(?:a|the) (?:(small|large) )?({COL}) ({SH}) (?:is )?(?:to the )?"
                rf"(left of|right of|above|below) (?:a|the) (?:(small|large) )?({COL}) ({SH})\b")
    for za, ca, sa, rel, zb, cb, sb in re.findall(relation, caption):
        holds = {"left of": lambda a, b: a[4] < b[4], "right of": lambda a, b: a[4] > b[4],
                 "above": lambda a, b: a[3] < b[3], "below": lambda a, b: a[3] > b[3]}[rel]
        checks.append(("relation", any(holds(a, b) for a in matching(ca, sa, za or None)
                                       for b in matching(cb, sb, zb or None))))
    where = rf"(?:at|in) the ({POS})(?: corner)?"
    placed = re.findall(rf"(?:(small|large) )?({COL}) ({SH}) {where}", caption)
    placed += [(z, c, s, p) for p, z, c, s in re.findall(
        rf"{where} there is (?:a|one) (?:(small|large) )?({COL}) ({SH})", caption)]
    for size, colour, shape, position in placed:
        cell = POSITIONS[grid][position]
        candidates = matching(colour, shape, size or None)
        checks.append(("position", any(o[3:] == cell for o in candidates)))
    for shape, colour in re.findall(rf"\bthe ({SH}) is ({COL})\b", caption):
        only = matching(shape=shape)
        checks.append(("binding", len(only) == 1 and only[0][1] == colour))
    for colour, shape in re.findall(rf"\bthe ({COL}) (?:shape|object|one|thing) is a ({SH})\b",
                                    caption):
        only = matching(colour=colour)
        checks.append(("binding", len(only) == 1 and only[0][0] == shape))
    return checks


def caption_true(caption, objects, grid):
    checks = caption_checks(caption, objects, grid)
    return bool(checks) and all(holds for _, holds in checks)


# ------------------------------------------------------------------------------------- tests
def test_vocabulary():
    assert len(world.SEEN_CLASSES) == 24 and len(world.HELDOUT_CLASSES) == 4
    assert {s for _, s in world.HELDOUT_PAIRS} == set(world.SHAPES)  # one per shape
    assert not set(world.SEEN_CLASSES) & set(world.HELDOUT_CLASSES)
    rgb = np.asarray([COLOUR_RGB[c] for c in world.COLOURS], float)
    gaps = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + 1e9 * np.eye(len(rgb))
    assert gaps.min() > 90  # colours clearly distinct
    assert all("{}" in t for t in world.ZEROSHOT_TEMPLATES)


def test_example_is_deterministic_per_seed_and_index():
    a, b = world.World("train", seed=0), world.World("train", seed=0)
    for i in (0, 17, 999_999):
        x, y = a[i], b[i]
        assert x["image"].tobytes() == y["image"].tobytes() and x["caption"] == y["caption"]
        assert x["index"] == i and x["image"].dtype == np.uint8 and x["image"].shape == (32, 32, 3)
        assert a.caption(a.scene(i), i) == x["caption"]
    other = world.World("train", seed=1)
    assert sum(a[i]["image"].tobytes() != other[i]["image"].tobytes() for i in range(20)) >= 18
    val = world.World("val", seed=0)
    assert sum(a.scene(i) != val.scene(i) for i in range(20)) >= 15  # own random stream


def _digest():
    h = hashlib.sha256()
    for split in world.SPLITS:
        source = world.World(split, seed=3)
        for i in range(30):
            example = source[i]
            h.update(example["image"].tobytes() + example["caption"].encode())
    for item in world.qa_items(12, "heldout", seed=3):
        h.update(item.image.tobytes() + (item.question + item.answer).encode())
    for kind in world.PROBE_KINDS:
        for pair in world.probe_pairs(kind, 4, seed=3):
            h.update(b"".join(i.tobytes() for i in pair.images) + "".join(pair.captions).encode())
    return h.hexdigest()


def test_examples_identical_in_another_process():
    code = "from tests.data.test_world import _digest; print(_digest())"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=root, check=True)
    assert out.stdout.strip() == _digest()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="valid splits"):
        world.World("test")
    with pytest.raises(ValueError, match="image_size"):
        world.World("train", image_size=8)
    with pytest.raises(ValueError, match="seed"):
        world.World("train", seed=-1)
    with pytest.raises(IndexError, match="out of range"):
        world.World("val")[10_000]
    with pytest.raises(ValueError, match="valid kinds"):
        world.probe_pairs("colour", 1)
    with pytest.raises(ValueError, match="valid splits"):
        world.single_object_set("train", 4)


def test_split_sizes_and_held_out_pairs():
    assert [len(world.World(s)) for s in world.SPLITS] == [1_000_000, 10_000, 10_000]
    for split in ("train", "val"):
        source = world.World(split)
        pairs = Counter((o.colour, o.shape) for i in range(3000) for o in source.scene(i).objects)
        assert not set(pairs) & world.HELDOUT_PAIRS
        assert len(pairs) == 24  # every seen pair occurs
    heldout = world.World("heldout")
    for i in range(2000):
        assert {(o.colour, o.shape) for o in heldout.scene(i).objects} & world.HELDOUT_PAIRS


def test_scene_distribution():
    source = world.World("train")
    scenes = [source.scene(i) for i in range(4000)]
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {1, 2, 3, 4}
    assert abs(counts[1] / 4000 - 0.35) < 0.03  # a third single-object scenes
    for scene in scenes[:500]:
        cells = [(o.row, o.col) for o in scene.objects]
        assert len(set(cells)) == len(cells) and all(0 <= r < 2 and 0 <= c < 2 for r, c in cells)
    repeated = sum(max(s.pair_counts().values()) >= 2 for s in scenes)
    assert repeated / 4000 > 0.2  # count words above "one" are common


@pytest.mark.parametrize("image_size", [32, 48, 64])
def test_images_show_their_scene(image_size):
    source = world.World("train", seed=0, image_size=image_size)
    for i in range(150):
        example = source[i]
        assert example["image"].shape == (image_size, image_size, 3)
        assert decode_image(example["image"], image_size) == as_tuples(source.scene(i)), i
    heldout = world.World("heldout", image_size=image_size)
    for i in range(50):
        assert decode_image(heldout[i]["image"], image_size) == as_tuples(heldout.scene(i))


@pytest.mark.parametrize("split,image_size", [("train", 32), ("heldout", 32), ("val", 48)])
def test_captions_are_true_of_their_scene(split, image_size):
    source = world.World(split, image_size=image_size)
    kinds = Counter()
    for i in range(1500):
        scene, caption = source.scene(i), source[i]["caption"]
        objects = as_tuples(scene)
        checks = caption_checks(caption, objects, source.grid)
        assert checks and all(holds for _, holds in checks), (caption, objects, checks)
        kinds.update(kind for kind, _ in checks)
        if len(objects) == 1:
            assert f"{objects[0][1]} {objects[0][0]}" in caption, caption
    # The parser really exercised every kind of claim.
    for kind in ("mention", "pair_count", "colour_count", "shape_count", "total", "relation",
                 "position", "binding"):
        assert kinds[kind] >= 20, kinds


def test_parser_catches_false_captions():
    objects = [("circle", "red", "large", 0, 0), ("square", "blue", "small", 1, 1)]
    assert caption_true("a red circle left of a blue square.", objects, 2)
    for false in ("a blue square left of a red circle.", "two red circles.",
                  "a blue circle and a red square.", "the circle is blue.",
                  "a red circle at the bottom right.", "three objects.", "a large blue square."):
        assert not caption_true(false, objects, 2), false


def duplicate_rate(source, batches=20, batch_size=256):
    """Mean fraction of captions in a batch of consecutive indices equal to an earlier one."""
    rates = []
    for b in range(batches):
        captions = [source.caption(source.scene(i), i)
                    for i in range(b * batch_size, (b + 1) * batch_size)]
        rates.append(1 - len(set(captions)) / batch_size)
    return float(np.mean(rates))


def test_captions_rarely_repeat_in_a_batch():
    rate = duplicate_rate(world.World("train"))
    print(f"duplicate caption rate in batches of 256: {rate:.4f}")
    assert rate < 0.05


@pytest.mark.parametrize("split", ["val", "heldout"])
def test_single_object_set(split):
    images, labels, names = world.single_object_set(split, 56, seed=1)
    assert images.shape == (56, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.shape == (56,)
    if split == "val":
        assert names == world.SEEN_CLASSES and set(labels) == set(range(24))
    else:
        assert names == world.SEEN_CLASSES + world.HELDOUT_CLASSES
        assert set(labels) == {24, 25, 26, 27}
        assert np.bincount(labels)[24:].tolist() == [14, 14, 14, 14]  # balanced
    for image, label in zip(images, labels, strict=True):
        (shape, colour, *_), = decode_image(image, 32)
        assert f"{colour} {shape}" == names[label]
    again, again_labels, _ = world.single_object_set(split, 56, seed=1)
    assert np.array_equal(again, images) and np.array_equal(again_labels, labels)


@pytest.mark.parametrize("kind", world.PROBE_KINDS)
@pytest.mark.parametrize("image_size", [32, 48])
def test_probe_pairs_are_hard_negatives(kind, image_size):
    pairs = world.probe_pairs(kind, 40, seed=0, image_size=image_size)
    grid = grid_of(image_size)
    assert len(pairs) == 40
    for pair in pairs:
        assert pair.kind == kind and pair.captions[0] != pair.captions[1]
        objects = [decode_image(image, image_size) for image in pair.images]
        for i in (0, 1):
            assert caption_true(pair.captions[i], objects[i], grid), (pair.captions, objects)
            assert not caption_true(pair.captions[i], objects[1 - i], grid), (pair.captions,
                                                                              objects)
        words = [c.rstrip(".").split() for c in pair.captions]
        if kind == "count":
            assert len(objects[0]) == len(objects[1])  # same number of objects in both images
            differing = [a != b for a, b in zip(*words, strict=True)]
            assert len(words[0]) == len(words[1]) and sum(differing) == 1
        else:
            assert sorted(words[0]) == sorted(words[1])
        for found in objects:
            assert not {(colour, shape) for shape, colour, *_ in found} & world.HELDOUT_PAIRS


def answer_of(question, objects, grid):
    """Independent answer to a generated question about objects (shape, colour, size, row, col)."""
    positions = POSITIONS[grid]
    number = {v: k for k, v in NUMBERS.items()}
    if m := re.fullmatch(rf"what colour is the ({SH})(?: (?:at|in) the ({POS})(?: corner)?)?\?",
                         question):
        shape, position = m.groups()
        (found,) = [o for o in objects if o[0] == shape
                    and (position is None or o[3:] == positions[position])]
        return found[1]
    if question == "how many objects are there?":
        return number[len(objects)]
    if m := re.fullmatch(rf"how many ({COL}) objects are there\?", question):
        return number[sum(o[1] == m[1] for o in objects)]
    if m := re.fullmatch(rf"how many ({COL}) ((?:{SH})(?:es|s)) are there\?", question):
        return number[sum(o[1] == m[1] and o[0] == shape_of(m[2]) for o in objects)]
    if m := re.fullmatch(rf"how many ((?:{SH})(?:es|s)) are there\?", question):
        return number[sum(o[0] == shape_of(m[1]) for o in objects)]
    if m := re.fullmatch(rf"where is the ({COL}) ({SH})\?", question):
        (found,) = [o for o in objects if o[1] == m[1] and o[0] == m[2]]
        return {v: k for k, v in positions.items()}[found[3:]]
    if m := re.fullmatch(rf"is there a ({COL}) ({SH})\?", question):
        return "yes" if any(o[1] == m[1] and o[0] == m[2] for o in objects) else "no"
    question_text = question.rstrip("?")
    return "yes" if caption_true(question_text.replace("is the ", "the ", 1), objects, grid) \
        else "no"


@pytest.mark.parametrize("split,image_size", [("val", 32), ("heldout", 32), ("train", 48)])
def test_qa_answers_match_the_scene(split, image_size):
    items = world.qa_items(200, split=split, seed=0, image_size=image_size)
    grid = grid_of(image_size)
    assert [item.kind for item in items[:4]] == list(world.QA_KINDS)
    answers = Counter()
    for item in items:
        objects = as_tuples(item.scene)
        assert decode_image(item.image, image_size) == objects
        assert answer_of(item.question, objects, grid) == item.answer, (item.question, objects)
        if item.kind == "yesno":
            answers[item.answer] += 1
        if split != "heldout":
            assert not {(o[1], o[0]) for o in objects} & world.HELDOUT_PAIRS
    assert min(answers["yes"], answers["no"]) >= 15  # yes/no roughly balanced (50 questions)
    relation_questions = [i for i in items if re.match(rf"is the ({COL})", i.question)]
    assert relation_questions  # relation yes/no questions are exercised


def test_getitem_is_fast():
    source = world.World("train")
    start = time.process_time()
    for i in range(1000):
        source[i]
    per_example = (time.process_time() - start) / 1000
    print(f"World.__getitem__ at 32 px: {1 / per_example:.0f} examples/s (CPU time)")
    assert per_example < 1e-3
