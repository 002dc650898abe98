"""The examples an eval scores: the synthetic world's eval splits by default, or any stored
dataset (ArrayRecord files, a prepared TFDS dataset), named by an eval-dataset spec.

`config.evals.<eval>` (for the evals in DATASET_EVALS) is a spec (`dataset_spec()`):
  source: "world" (the eval's own world splits, seeded by `evals.seed`) | "array_record" |
      "tfds";
  split_name: the split's name in the results ("zeroshot/<split_name>/top1"); the world
      keeps its own split names;
  array_record_pattern / tfds_name, tfds_split, tfds_data_dir / image_key, caption_key: where
      the examples are, as in `config.data` (records in `vlm_jax.data.sources`' format);
  class_names, templates: zero-shot only. An example's label is its caption text, which must
      be one of `class_names` ("" -> the sorted distinct captions of the set); each class is
      prompted with every template ("a photo of a {}.").
A source set is its first `size` examples (the eval's *_size field), or all of them when it
holds fewer; images are centre-cropped and resized to `evals.image_size` like training data.
Corrupt records are skipped and counted in a printed line, never silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_collections
import numpy as np

from vlm_jax.data import world
from vlm_jax.data.pipeline import fit_image
from vlm_jax.data.sources import ArrayRecordSource, CorruptRecordError, ExampleSource, TfdsSource

SOURCES = ("world", "array_record", "tfds")
# Evals whose examples come from a spec; the others probe what only the world knows (hard
# negatives, question-answer items, object lists) and always read it.
DATASET_EVALS = ("zeroshot", "retrieval", "captioning")
SOURCE_TEMPLATES = ("a photo of a {}.",)
# zero-shot: split name in the results -> split of `world.single_object_set`.
WORLD_ZEROSHOT_SPLITS = {"single_object": "val", "heldout_single_object": "heldout"}


def dataset_spec(**fields) -> ml_collections.ConfigDict:
    """An eval-dataset spec (see the module docstring); the default is the world."""
    defaults = dict(
        source="world", split_name="dataset",
        array_record_pattern="", tfds_name="", tfds_split="test", tfds_data_dir="",
        image_key="image", caption_key="caption",
        class_names=(), templates=(),
    )
    unknown = sorted(set(fields) - set(defaults))
    if unknown:
        raise ValueError(f"eval-dataset spec fields {unknown} are unknown; known: "
                         f"{sorted(defaults)}")
    return ml_collections.ConfigDict({**defaults, **fields})


@dataclass(frozen=True)
class LabeledImages:
    """A zero-shot set: images uint8 [N, S, S, 3], labels int [N] into class_names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    templates: tuple[str, ...]


@dataclass(frozen=True)
class CaptionedImages:
    """Images uint8 [N, S, S, 3], each with its true captions (references[i][0]: its own)."""

    images: np.ndarray
    references: list[list[str]]

    @property
    def captions(self) -> list[str]:
        return [refs[0] for refs in self.references]


def spec_of(eval_config, eval_name: str) -> ml_collections.ConfigDict:
    """`eval_config.<eval_name>`, checked; the world when the config has none."""
    spec = eval_config.get(eval_name) if hasattr(eval_config, "get") else None
    if spec is None:
        return dataset_spec()
    check_spec(eval_name, spec)
    return spec


def check_spec(eval_name: str, spec) -> None:
    """ValueError naming the field when `spec` cannot name a dataset."""
    where = f"evals.{eval_name}"
    if spec.source not in SOURCES:
        raise ValueError(f"{where}.source {spec.source!r} must be one of {', '.join(SOURCES)}")
    if spec.source == "array_record" and not spec.array_record_pattern:
        raise ValueError(f"{where}.source='array_record' needs {where}.array_record_pattern, a "
                         "glob of .array_record files written by data.sources.write_array_record")
    if spec.source == "tfds" and not spec.tfds_name:
        raise ValueError(f"{where}.source='tfds' needs {where}.tfds_name, e.g. 'coco_captions'")
    if spec.source != "world" and not spec.split_name:
        raise ValueError(f"{where}.split_name must name the split in the results, e.g. 'coco'")


def zeroshot_sets(spec, size: int, seed: int, image_size: int) -> dict[str, LabeledImages]:
    """{split name: zero-shot set}: the world's two single-object splits, or the source's."""
    if spec.source == "world":
        sets = {}
        for split_name, world_split in WORLD_ZEROSHOT_SPLITS.items():
            images, labels, class_names = world.single_object_set(
                world_split, size, seed=seed, image_size=image_size)
            sets[split_name] = LabeledImages(images, labels, tuple(class_names),
                                             tuple(spec.templates) or world.ZEROSHOT_TEMPLATES)
        return sets
    images, captions = _read(spec, size, image_size)
    class_names = tuple(spec.class_names) or tuple(sorted(set(captions)))
    index = {name: label for label, name in enumerate(class_names)}
    unknown = sorted({caption for caption in captions if caption not in index})
    if unknown:
        raise ValueError(
            f"zero-shot labels {unknown[:5]} of {_describe(spec)} are not in "
            f"evals.zeroshot.class_names {list(class_names)[:8]}; list every class (the "
            "record's caption is its class name), or leave class_names empty")
    labels = np.array([index[caption] for caption in captions], np.int32)
    return {spec.split_name: LabeledImages(images, labels, class_names,
                                           tuple(spec.templates) or SOURCE_TEMPLATES)}


def caption_sets(spec, world_splits: tuple[str, ...], size: int, seed: int, image_size: int,
                 references: int = 1) -> dict[str, CaptionedImages]:
    """{split name: captioned images}: the world's `world_splits` (each image with
    `references` true captions), or the source's (each with its one stored caption)."""
    if spec.source == "world":
        sets = {}
        for split in world_splits:
            split_world = world.World(split, seed=seed, image_size=image_size)
            if not 1 <= size <= len(split_world):
                raise ValueError(f"eval size {size} must lie in [1, {len(split_world)}] (the "
                                 f"size of the world's {split!r} split)")
            images = np.stack([split_world[index]["image"] for index in range(size)])
            refs = [world_references(split_world, index, references) for index in range(size)]
            sets[split] = CaptionedImages(images, refs)
        return sets
    images, captions = _read(spec, size, image_size)
    return {spec.split_name: CaptionedImages(images, [[caption] for caption in captions])}


def world_references(split_world: world.World, index: int, count: int) -> list[str]:
    """`count` true captions of example `index` (the first is the dataset's own): each index
    r * len(split) + index draws its own template and word order for the same scene."""
    scene = split_world.scene(index)
    return [split_world.caption(scene, index + r * len(split_world)) for r in range(count)]


def open_source(spec) -> ExampleSource:
    """The stored dataset `spec` names (not the world)."""
    if spec.source == "array_record":
        return ArrayRecordSource(spec.array_record_pattern)
    return TfdsSource(spec.tfds_name, split=spec.tfds_split, data_dir=spec.tfds_data_dir or None,
                      image_key=spec.image_key, caption_key=spec.caption_key)


def _read(spec, size: int, image_size: int) -> tuple[np.ndarray, list[str]]:
    """The first `size` readable examples of the source: images [n, S, S, 3] and captions."""
    source = open_source(spec)
    images, captions, corrupt = [], [], 0
    for index in range(len(source)):
        if len(captions) == size:
            break
        try:
            example = source[index]
        except CorruptRecordError:
            corrupt += 1
            continue
        images.append(fit_image(example["image"], image_size))
        captions.append(str(example["caption"]).strip())
    if corrupt:
        print(f"{_describe(spec)}: skipped {corrupt} corrupt records")
    if not captions:
        raise ValueError(f"{_describe(spec)} holds no readable example")
    return np.stack(images), captions


def _describe(spec) -> str:
    if spec.source == "array_record":
        return f"array_record {spec.array_record_pattern!r}"
    return f"tfds {spec.tfds_name!r} split {spec.tfds_split!r}"
