"""The grain training pipeline: shuffled per-process order -> load and flip examples (in chunks,
optionally in worker processes) -> skip corrupt records -> batch -> tokenize -> prefetch.

Each process yields batches {"image": uint8 [b, S, S, 3], "text_tokens": int32 [b, L],
"num_corrupt": int32 [b]} with b = global_batch_size // process_count. Example order is fixed by
(seed, global batch size) alone: process p takes slots [p*b, (p+1)*b) of every global batch, so
the processes together see exactly the global batches of a one-process run, for any number of
workers. The iterator's get_state()/set_state() resume that order exactly.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import grain
import numpy as np
from absl import flags, logging

from vlm_jax.data.sources import CorruptRecordError, ExampleSource, make_source

# A run of this many undecodable records means the data (or its format) is wrong, not noisy.
MAX_CONSECUTIVE_CORRUPT = 1000
MAX_LOGGED_CORRUPT = 20
_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left",
         "LEFT": "RIGHT", "RIGHT": "LEFT"}


def swap_left_right(caption: str) -> str:
    """The caption of the mirrored image: "left" and "right" exchanged as whole words."""
    return _LEFT_RIGHT.sub(lambda match: _SWAP.get(match.group(0), match.group(0)), caption)


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: grey expanded to RGB, centre-cropped square, nearest-resized."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[:, :, :3]  # drop alpha
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    pick = (np.arange(size) * side) // size  # nearest source pixel of each output pixel
    return image[top + pick[:, None], left + pick[None, :]]


class ProcessOrder(grain.MapDataset):
    """Element i: this process's (position, example index) pairs of global batch i, endlessly.

    The global order lays out epochs of steps_per_epoch * global_batch positions (the rest of
    each shuffled epoch is dropped); process p takes positions [p*b, (p+1)*b) of each batch.
    """

    def __init__(self, num_examples: int, global_batch: int, process_index: int,
                 process_count: int, *, seed: int, shuffle: bool):
        super().__init__()
        self.num_examples, self.global_batch, self.seed, self.shuffle = (
            num_examples, global_batch, seed, shuffle)
        self.local_batch = global_batch // process_count
        self.first_slot = process_index * self.local_batch
        self.epoch_length = (num_examples // global_batch) * global_batch

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, step):
        if isinstance(step, slice):
            return self.slice(step)
        start = step * self.global_batch + self.first_slot
        return [(position, self.example_index(position))
                for position in range(start, start + self.local_batch)]

    def example_index(self, position: int) -> int:
        epoch, offset = divmod(position, self.epoch_length)
        if not self.shuffle:
            return offset
        epoch_seed = (self.seed + epoch) % 2**32  # a new permutation every epoch
        return grain.experimental.index_shuffle(
            offset, max_index=self.num_examples - 1, seed=epoch_seed, rounds=4)


class LoadChunk:
    """[(position, index)] -> {"image": [n, S, S, 3], "caption": [n], "corrupt": [n]} arrays.

    corrupt[k] is the reason record k could not be decoded ("" when it could). Whole chunks,
    not single examples, cross from worker processes: one shared-memory block per array.
    """

    def __init__(self, source: ExampleSource, image_size: int, flip: bool, seed: int,
                 crop: str = "fit"):
        self.source, self.image_size, self.flip, self.seed = source, image_size, flip, seed
        self.crop = crop  # "fit" | "center" | "random_resized" (vlm_jax/data/images.py)

    def __call__(self, chunk: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        images = np.zeros((len(chunk), self.image_size, self.image_size, 3), np.uint8)
        captions, corrupt = [""] * len(chunk), [""] * len(chunk)
        for k, (position, index) in enumerate(chunk):
            try:
                example = self.source[index]
            except CorruptRecordError as error:
                corrupt[k] = str(error)
                continue
            if self.crop == "fit":
                image = fit_image(example["image"], self.image_size)
            else:  # the crop's own stream (seed, position, 1): the flip coin below is unchanged
                from vlm_jax.data.images import crop_image

                image = crop_image(example["image"], self.image_size, self.crop,
                                   np.random.default_rng((self.seed, position, 1)))
            caption = example["caption"]
            # The coin depends on the global position only: the same for any process count.
            if self.flip and np.random.default_rng((self.seed, position)).random() < 0.5:
                image, caption = image[:, ::-1], swap_left_right(caption)
            images[k], captions[k] = image, caption
        return {"image": images, "caption": np.array(captions), "corrupt": np.array(corrupt)}


class Unchunk(grain.experimental.FlatMapTransform):
    """A chunk -> its examples in order, a corrupt record as {"corrupt": reason}."""

    def flat_map(self, chunk: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [{"corrupt": str(reason)} if reason else {"image": image, "caption": str(caption)}
                for image, caption, reason in
                zip(chunk["image"], chunk["caption"], chunk["corrupt"], strict=True)]


class SkipCorrupt(grain.IterDataset):
    """Drops corrupt markers; each example carries num_corrupt, the markers dropped before it."""

    def __iter__(self) -> grain.DatasetIterator:
        return _SkipCorruptIterator(self._parent.__iter__())


class _SkipCorruptIterator(grain.DatasetIterator):
    def __next__(self) -> dict[str, Any]:
        skipped = 0
        while "corrupt" in (example := next(self._parent)):
            skipped += 1
            # The batches count every skip (num_corrupt); the log names the first few.
            logging.log_first_n(logging.WARNING, "Skipping a corrupt record: %s",
                                MAX_LOGGED_CORRUPT, example["corrupt"])
            if skipped >= MAX_CONSECUTIVE_CORRUPT:
                raise RuntimeError(
                    f"{skipped} consecutive records failed to decode (last: "
                    f"{example['corrupt']}); the data files or data.source settings are wrong."
                )
        return {**example, "num_corrupt": np.int32(skipped)}

    # Between examples nothing is pending, so the parent's state is the whole state.
    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


class Tokenize:
    """Batch of captions -> text_tokens int32 [b, L] (the caption strings are dropped)."""

    def __init__(self, tokenizer, text_length: int):
        self.tokenizer, self.text_length = tokenizer, text_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens = self.tokenizer.encode(batch["caption"].tolist(), self.text_length)
        return {"image": batch["image"], "text_tokens": np.asarray(tokens, np.int32),
                "num_corrupt": batch["num_corrupt"]}


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Examples per process per step; the global batch must split evenly over processes."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"Global batch size {global_batch_size} must be a positive multiple of the process "
            f"count {process_count}; change the batch size."
        )
    return global_batch_size // process_count


def make_train_dataset(source: ExampleSource, data_config, tokenizer, global_batch_size: int,
                       *, seed: int, process_index: int = 0,
                       process_count: int = 1) -> grain.IterDataset:
    """The endless batched dataset of this process over `source` (see the module docstring)."""
    if seed < 0:
        raise ValueError(f"The data seed must be >= 0, got {seed}.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count}).")
    local_batch = local_batch_size(global_batch_size, process_count)
    if len(source) < global_batch_size:
        raise ValueError(
            f"{source!r} has {len(source)} examples, fewer than one global batch "
            f"({global_batch_size}); lower the batch size or add data."
        )
    order = ProcessOrder(len(source), global_batch_size, process_index, process_count,
                         seed=seed, shuffle=data_config.shuffle)
    chunks = order.map(LoadChunk(source, data_config.image_size, data_config.flip, seed,
                                 data_config.get("crop", "fit")))
    # Chunks load synchronously (in a worker process, or in the prefetch thread below): the
    # sources are CPU-bound NumPy/decode work, where more threads only contend for the GIL.
    dataset = chunks.to_iter_dataset(grain.ReadOptions(num_threads=0))
    if data_config.workers > 0:
        # grain's worker processes read absl flags; outside absl.app.run they are unparsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        # Worker w loads chunks w, w + workers, ... and grain interleaves them back in order,
        # so the example stream (and every batch) is the same for any worker count.
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=data_config.workers,
            per_worker_buffer_size=max(1, data_config.prefetch)))
    # Skipping is many-to-one, so it runs after the workers (grain's advice for elasticity).
    dataset = grain.experimental.FlatMapIterDataset(dataset, Unchunk())
    dataset = SkipCorrupt(dataset).batch(local_batch, drop_remainder=True)
    dataset = dataset.map(Tokenize(tokenizer, data_config.text_length))
    if data_config.prefetch > 0:  # a background thread, so batches overlap the train step
        dataset = grain.experimental.ThreadPrefetchIterDataset(
            dataset, prefetch_buffer_size=data_config.prefetch)
    return dataset


def make_train_iterator(data_config, tokenizer, global_batch_size: int, *, seed: int,
                        process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """Endless iterator of this process's batches; get_state()/set_state() are JSON-ready."""
    source = make_source(data_config, "train")
    dataset = make_train_dataset(source, data_config, tokenizer, global_batch_size, seed=seed,
                                 process_index=process_index, process_count=process_count)
    return iter(dataset)
