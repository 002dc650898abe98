"""Random-access example sources: the synthetic world, ArrayRecord files, TFDS datasets.

Every source has `len(source)` and `source[index] -> {"image": uint8 [H, W, C], "caption": str}`.
A record that cannot be decoded raises `CorruptRecordError`, which the pipeline replaces (by a
fallback drawn from its position) and counts. A source may also offer `question_answer(index)`
and `document(index, max_images)` (the world does) for prefix_lm and interleaved batches.
"""

from __future__ import annotations

import glob
import io
import os
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from grain.sources import ArrayRecordDataSource

from vlm_jax.data.world import World

SOURCES = ("world", "array_record", "tfds", "retrieval", "instructions")


class CorruptRecordError(ValueError):
    """A stored record could not be decoded into an example."""


class ExampleSource(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict[str, Any]: ...


class WorldSource:
    """The procedural world as a source (its "index" field dropped)."""

    def __init__(self, world: World):
        self.world = world

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.world[index]
        return {"image": example["image"], "caption": example["caption"]}

    def question_answer(self, index: int) -> tuple[str, str]:
        """The world's question about example `index` (prefix_lm batches)."""
        return self.world.question_answer(index)

    def conversation(self, index: int, turns: int) -> list[tuple[str, str]]:
        """The world's multi-turn questions about example `index` (data.chat_turns > 1)."""
        return self.world.conversation(index, turns)

    def document(self, index: int, max_images: int) -> dict[str, Any]:
        """The world's interleaved document at `index` (interleaved batches)."""
        return self.world.document(index, max_images)

    def __repr__(self) -> str:
        return f"WorldSource({self.world!r})"


# ArrayRecord record format: the bytes of `np.savez` with two arrays, "image" (uint8 [H, W, C])
# and "caption" (a 0-d unicode array). Self-describing, readable with plain NumPy.
# Converted real data (vlm_jax/data/convert.py) stores "image_bytes" (uint8 [n], the JPEG/PNG
# file) instead of "image", plus "metadata" (a 0-d JSON string); it is decoded to RGB on read.


def encode_example(example: Mapping[str, Any]) -> bytes:
    """Serialises {"image": uint8 [H, W, C], "caption": str} into one record."""
    image = np.asarray(example["image"])
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            f"encode_example needs a uint8 [H, W, C] image, got {image.dtype} {image.shape}."
        )
    buffer = io.BytesIO()
    np.savez(buffer, image=image, caption=np.array(str(example["caption"])))
    return buffer.getvalue()


def decode_example(record: bytes) -> dict[str, Any]:
    """Inverse of `encode_example`; raises CorruptRecordError for bytes it cannot read."""
    try:
        with np.load(io.BytesIO(record), allow_pickle=False) as arrays:
            if "image_bytes" in arrays:
                return decode_encoded_example(arrays["image_bytes"], arrays["caption"])
            image, caption = arrays["image"], arrays["caption"]
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
        if isinstance(error, CorruptRecordError):
            raise
        if "allow_pickle" in str(error):  # numpy's hint would be an unsafe one to follow
            raise CorruptRecordError("not an encode_example record (it holds a pickled object "
                                     "array; records are never unpickled)") from error
        raise CorruptRecordError(f"not an encode_example record ({error})") from error
    if image.dtype != np.uint8 or image.ndim != 3 or caption.dtype.kind != "U" or caption.ndim:
        raise CorruptRecordError(
            f"record holds image {image.dtype} {image.shape} and caption {caption.dtype} "
            f"{caption.shape}; expected uint8 [H, W, C] and one string"
        )
    return {"image": image, "caption": str(caption)}


def decode_encoded_example(image_bytes: np.ndarray, caption: np.ndarray) -> dict[str, Any]:
    """A converted record's JPEG/PNG bytes and caption -> {"image": uint8 [H, W, 3], ...}."""
    from vlm_jax.data import images  # Pillow, only for converted records

    if caption.dtype.kind != "U" or caption.ndim:
        raise CorruptRecordError(f"record caption is {caption.dtype} {caption.shape}, not a string")
    try:
        image = images.decode_image(image_bytes.tobytes())
    except images.UndecodableImageError as error:
        raise CorruptRecordError(str(error)) from error
    return {"image": image, "caption": str(caption)}


def write_array_record(path: str, examples: Iterable[Mapping[str, Any]]) -> int:
    """Writes examples to one .array_record file (random-access layout); returns their count."""
    writer = ArrayRecordWriter(os.fspath(path), "group_size:1")
    count = 0
    try:
        for example in examples:
            writer.write(encode_example(example))
            count += 1
    finally:
        writer.close()
    return count


class ArrayRecordSource:
    """Examples stored with `write_array_record` in the files matching a glob pattern."""

    def __init__(self, pattern: str):
        self.paths = sorted(glob.glob(os.path.expanduser(pattern)))
        if not self.paths:
            raise FileNotFoundError(
                f"No files match array_record_pattern {pattern!r}; check the path, or write "
                "shards with vlm_jax.data.sources.write_array_record."
            )
        self._records = ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return decode_example(self._records[index])
        except CorruptRecordError as error:
            raise CorruptRecordError(f"record {index} of {self!r}: {error}") from error

    def __repr__(self) -> str:
        return f"ArrayRecordSource({len(self.paths)} files, first {self.paths[0]!r})"


def _lookup(features: Mapping[str, Any], key: str) -> Any:
    for part in key.split("/"):  # "a/b" reaches nested feature dicts
        features = features[part]
    return features


class TfdsSource:
    """A prepared TFDS dataset (ArrayRecord format) read with `tfds.data_source`; no TensorFlow.

    Image features stored as PNG/JPEG need pillow or opencv to decode; `tfds.features.Tensor`
    images need nothing else.
    """

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
                 image_key: str = "image", caption_key: str = "caption"):
        import tensorflow_datasets as tfds  # heavy import, only when this source is used

        self.name, self.split = name, split
        self.image_key, self.caption_key = image_key, caption_key
        try:
            self._examples = tfds.data_source(name, split=split, data_dir=data_dir or None,
                                              download=False)
        except Exception as error:
            raise FileNotFoundError(
                f"Cannot open TFDS dataset {name!r} split {split!r} in data_dir "
                f"{data_dir or '~/tensorflow_datasets'!r} ({type(error).__name__}). Prepare it "
                f"there in ArrayRecord format first, e.g. `tfds build {name} "
                "--file_format=array_record --data_dir=DIR`; nothing is downloaded at run time."
            ) from error

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r} of {len(self)} examples")
        try:
            features = self._examples[index]
        except Exception as error:  # tfds raises many types when a stored record is damaged
            raise CorruptRecordError(f"record {index} of {self!r}: {error}") from error
        try:
            image, caption = _lookup(features, self.image_key), _lookup(features, self.caption_key)
        except KeyError as error:
            raise KeyError(
                f"{self!r} has no feature {error}; set image_key/caption_key to one of "
                f"{sorted(features)} (nested features as 'a/b')."
            ) from None
        if isinstance(caption, np.ndarray) and caption.ndim == 0:
            caption = caption.item()
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8")
        if not isinstance(caption, str):
            raise TypeError(
                f"{self!r}: caption_key {self.caption_key!r} gives {type(caption).__name__}, "
                "expected one string per example; point caption_key at a single-text feature."
            )
        return {"image": np.asarray(image), "caption": caption}

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r})"


def make_source(data_config, split: str) -> ExampleSource:
    """The source named by data_config.source, for split "train" (or another split name).

    array_record_pattern may contain "{split}". For TFDS, split "train" reads
    data_config.tfds_split (e.g. "train[:90%]") and any other split is passed to TFDS as is.
    """
    kind = data_config.source
    if kind == "world":
        return WorldSource(World(split, seed=data_config.world_seed,
                                 image_size=data_config.image_size))
    if kind == "array_record":
        if not data_config.array_record_pattern:
            raise ValueError(
                "data.source='array_record' needs data.array_record_pattern, a glob of "
                ".array_record files, e.g. '/data/shards/{split}-*.array_record'."
            )
        return ArrayRecordSource(data_config.array_record_pattern.replace("{split}", split))
    if kind == "tfds":
        if not data_config.tfds_name:
            raise ValueError("data.source='tfds' needs data.tfds_name, e.g. 'coco_captions'.")
        return TfdsSource(
            data_config.tfds_name,
            split=data_config.tfds_split if split == "train" else split,
            data_dir=data_config.tfds_data_dir or None,
            image_key=data_config.image_key,
            caption_key=data_config.caption_key,
        )
    if kind in ("retrieval", "instructions"):  # CM3leon's stages (data/cm3leon_sources.py)
        from vlm_jax.data import cm3leon_sources

        return cm3leon_sources.make_source(data_config, split)
    raise ValueError(f"Unknown data.source {kind!r}; choose one of {SOURCES}.")
