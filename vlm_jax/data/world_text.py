"""Words about scenes: true captions in varied templates and word orders, and question-answer pairs.

Semantics every generated sentence follows (the tests parse captions against these rules):
  * a number word ("one".."four") before a thing states its exact count in the scene;
  * "a <colour> <shape>" states that at least one such object exists;
  * "X left of / right of / above / below Y" holds for some X and some Y (by grid cell);
  * "X at the top left" places an X in that cell; "the circle is red" needs a single circle.
Every caption of a single-object scene names the object's colour and shape together.
"""

import numpy as np

from vlm_jax.data.world_scene import Scene, WorldObject, position_name

ZEROSHOT_TEMPLATES: tuple[str, ...] = (
    "a {}.",
    "there is a {}.",
    "a picture with a {}.",
    "an image of a {}.",
    "a photo of a {}.",
    "one {}.",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATIONS = ("left of", "right of", "above", "below")
QA_KINDS = ("colour", "count", "spatial", "yesno")

# {np} is an optional size, the colour and the shape, and maybe a position.
_SINGLE_TEMPLATES = (
    "a {np}.",
    "there is a {np}.",
    "a picture with a {np}.",
    "an image of a {np}.",
    "a photo of a {np}.",
    "one {np}.",
    "there is one {np}.",
    "a single {np}.",
    "just a {np}.",
    "only one {np}.",
    "a lone {np}.",
    "a {np} on a dark background.",
    "the picture shows a {np}.",
    "a drawing of a {np}.",
    "a {np}, nothing else.",
    "{pos} there is a {np}.",
)
_LIST_PREFIXES = ("", "", "there is ", "a picture with ", "an image of ", "a scene with ",
                  "{n} objects: ", "there are {n} objects: ", "{n} shapes: ")
_RELATION_TEMPLATES = (
    "{a} {rel} {b}.",
    "{a} is {rel} {b}.",
    "there is {a} {rel} {b}.",
    "{a} {rel} {b}, {n} objects in all.",
    "{a} is {rel} {b} in a picture with {n} objects.",
)
_THINGS = (("object", "objects"), ("shape", "shapes"), ("thing", "things"))


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def relations_between(a: WorldObject, b: WorldObject) -> list[str]:
    """Relations that hold from a to b, judged by grid cell."""
    holds = (a.col < b.col, a.col > b.col, a.row < b.row, a.row > b.row)
    return [rel for rel, ok in zip(RELATIONS, holds, strict=True) if ok]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def position_phrase(obj: WorldObject, grid: int, rng: np.random.Generator) -> str:
    name = position_name(obj.row, obj.col, grid)
    forms = ["at the {}", "in the {}"] + (["in the {} corner"] if " " in name else [])
    return _pick(rng, forms).format(name)


def noun_phrase(obj: WorldObject, grid: int, rng: np.random.Generator, size_p: float,
                position_p: float) -> str:
    """"[size] colour shape [position]", e.g. "small red circle at the top left"."""
    text = f"{obj.size} {obj.name}" if rng.random() < size_p else obj.name
    if rng.random() < position_p:
        text += " " + position_phrase(obj, grid, rng)
    return text


def _number_phrase(k: int, singular: str, plural_form: str) -> str:
    return f"{NUMBER_WORDS[k]} {singular if k == 1 else plural_form}"


def _join(items: list[str], rng: np.random.Generator) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} {_pick(rng, ('and', 'and', 'with'))} {items[1]}"
    return ", ".join(items[:-1]) + " and " + items[-1]


def _groups(scene: Scene) -> list[list[WorldObject]]:
    groups: dict[tuple[str, str], list[WorldObject]] = {}
    for obj in scene.objects:
        groups.setdefault((obj.colour, obj.shape), []).append(obj)
    return list(groups.values())


def _single_caption(obj: WorldObject, grid: int, rng: np.random.Generator) -> str:
    template = _pick(rng, _SINGLE_TEMPLATES)
    if "{pos}" in template:
        return template.format(pos=position_phrase(obj, grid, rng),
                               np=noun_phrase(obj, grid, rng, 0.5, 0.0))
    return template.format(np=noun_phrase(obj, grid, rng, 0.5, 0.4))


def _group_phrase(group: list[WorldObject], grid: int, rng: np.random.Generator) -> str:
    obj = group[0]
    if len(group) == 1:
        article = "a" if rng.random() < 0.8 else "one"
        return f"{article} {noun_phrase(obj, grid, rng, 0.4, 0.3)}"
    sizes = {o.size for o in group}
    size = f"{obj.size} " if len(sizes) == 1 and rng.random() < 0.3 else ""
    return f"{NUMBER_WORDS[len(group)]} {size}{obj.colour} {plural(obj.shape)}"


def _list_caption(scene: Scene, grid: int, rng: np.random.Generator) -> str:
    groups = _groups(scene)
    items = [_group_phrase(groups[i], grid, rng) for i in rng.permutation(len(groups))]
    prefix = _pick(rng, _LIST_PREFIXES).format(n=NUMBER_WORDS[len(scene.objects)])
    if prefix == "there is " and not items[0].startswith(("a ", "one ")):
        prefix = "there are "
    return f"{prefix}{_join(items, rng)}."


def _relation_caption(scene: Scene, grid: int, rng: np.random.Generator) -> str:
    i, j = rng.permutation(len(scene.objects))[:2]
    a, b = scene.objects[i], scene.objects[j]
    rel = _pick(rng, relations_between(a, b))
    if rel.endswith(" of") and rng.random() < 0.4:
        rel = "to the " + rel
    return _pick(rng, _RELATION_TEMPLATES).format(
        a="a " + noun_phrase(a, grid, rng, 0.3, 0.0),
        b="a " + noun_phrase(b, grid, rng, 0.3, 0.0),
        rel=rel,
        n=NUMBER_WORDS[len(scene.objects)],
    )


def _count_caption(scene: Scene, rng: np.random.Generator) -> str:
    objects = scene.objects
    obj = _pick(rng, objects)
    thing, things = _pick(rng, _THINGS)
    colour_count = sum(o.colour == obj.colour for o in objects)
    shape_count = sum(o.shape == obj.shape for o in objects)
    pair_count = sum(o.name == obj.name for o in objects)
    facts = [
        (pair_count, _number_phrase(pair_count, obj.name, f"{obj.colour} {plural(obj.shape)}")),
        (colour_count, _number_phrase(colour_count, f"{obj.colour} {thing}",
                                      f"{obj.colour} {things}")),
        (shape_count, _number_phrase(shape_count, obj.shape, plural(obj.shape))),
        (len(objects), _number_phrase(len(objects), thing, things)),
    ]
    # Lead with a fact naming a colour or shape; the bare total alone says too little.
    first = int(rng.integers(3))
    chosen = [facts[first]]
    if rng.random() < 0.5:
        chosen.append(facts[_pick(rng, [k for k in range(len(facts)) if k != first])])
    text = " and ".join(phrase for _, phrase in chosen)
    if rng.random() < 0.6:
        text = ("there is " if chosen[0][0] == 1 else "there are ") + text
    return text + "."


def _binding_caption(scene: Scene, rng: np.random.Generator) -> str | None:
    """ "the circle is red" for a shape seen once, "the red one is a circle" for a colour seen
    once; up to two such facts about different objects."""
    objects = scene.objects
    facts = {}  # object index -> sentence about it
    for k in rng.permutation(len(objects)):
        obj = objects[k]
        forms = []
        if sum(o.shape == obj.shape for o in objects) == 1:
            forms.append(f"the {obj.shape} is {obj.colour}")
        if sum(o.colour == obj.colour for o in objects) == 1:
            thing = _pick(rng, ("shape", "object", "one", "thing"))
            forms.append(f"the {obj.colour} {thing} is a {obj.shape}")
        if forms:
            facts[k] = _pick(rng, forms)
    if not facts:
        return None
    count = 2 if len(facts) >= 2 and rng.random() < 0.7 else 1
    return " and ".join(list(facts.values())[:count]) + "."


def describe(scene: Scene, grid: int, rng: np.random.Generator) -> str:
    """One caption that is true of `scene`, its template and word order drawn from `rng`."""
    if len(scene.objects) == 1:
        return _single_caption(scene.objects[0], grid, rng)
    kind = _pick(rng, ("list", "list", "relation", "relation", "count", "binding"))
    if kind == "relation":
        return _relation_caption(scene, grid, rng)
    if kind == "count":
        return _count_caption(scene, rng)
    if kind == "binding":
        caption = _binding_caption(scene, rng)
        if caption is not None:
            return caption
    return _list_caption(scene, grid, rng)


def _unique(scene: Scene) -> list[WorldObject]:
    counts = scene.pair_counts()
    return [o for o in scene.objects if counts[o.colour, o.shape] == 1]


def question_answer(
    scene: Scene, grid: int, kind: str, rng: np.random.Generator,
    pairs: tuple[tuple[str, str], ...],
) -> tuple[str, str] | None:
    """A (question, answer) of `kind` about `scene`, or None if the scene cannot support one.

    Absent objects in yes/no questions are drawn from `pairs` (the split's colour-shape pairs).
    """
    objects = scene.objects
    if kind == "colour":
        obj = _pick(rng, objects)
        if sum(o.shape == obj.shape for o in objects) == 1:
            return f"what colour is the {obj.shape}?", obj.colour
        return f"what colour is the {obj.shape} {position_phrase(obj, grid, rng)}?", obj.colour
    if kind == "count":
        obj = _pick(rng, objects)
        options = [
            ("how many objects are there?", len(objects)),
            (f"how many {obj.colour} {plural(obj.shape)} are there?",
             sum(o.name == obj.name for o in objects)),
            (f"how many {obj.colour} objects are there?",
             sum(o.colour == obj.colour for o in objects)),
            (f"how many {plural(obj.shape)} are there?",
             sum(o.shape == obj.shape for o in objects)),
        ]
        question, count = _pick(rng, options)
        return question, NUMBER_WORDS[count]
    unique = _unique(scene)
    if kind == "spatial":
        if not unique:
            return None
        obj = _pick(rng, unique)
        return f"where is the {obj.name}?", position_name(obj.row, obj.col, grid)
    if kind == "yesno":
        if len(unique) >= 2 and rng.random() < 0.5:
            i, j = rng.permutation(len(unique))[:2]
            a, b = unique[i], unique[j]
            true_rels = relations_between(a, b)
            answer = "yes" if rng.random() < 0.5 else "no"
            rel = _pick(rng, true_rels if answer == "yes"
                        else [r for r in RELATIONS if r not in true_rels])
            return f"is the {a.name} {rel} the {b.name}?", answer
        present = scene.pair_counts()
        if rng.random() < 0.5:
            colour, shape = _pick(rng, list(present))
        else:
            absent = [p for p in pairs if p not in present]
            colour, shape = _pick(rng, absent)
        return f"is there a {colour} {shape}?", "yes" if (colour, shape) in present else "no"
    raise ValueError(f"unknown question kind {kind!r}; valid kinds: {QA_KINDS}")


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


def compare_counts(first: Scene, last: Scene, count: int) -> str:
    """A sentence comparing the object counts of a document's first and last (count-th) image."""
    a, b = len(first.objects), len(last.objects)
    relation = "more objects than" if a > b else "fewer objects than" if a < b else (
        "as many objects as")
    return f"the first picture has {relation} the {ORDINALS[count - 1]}."
