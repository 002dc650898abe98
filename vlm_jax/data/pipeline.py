"""The grain training pipeline: per-process order of global positions -> load a step's examples
(optionally in worker processes), a corrupt record replaced by a fallback drawn from its
position -> the batch format (formats.py) -> prefetch.

Each process yields batches of b = global_batch_size // process_count examples: the keys of
data.format (or of every format in data.mixture, plus format_id), and num_corrupt int32 [b]
(failed decodes behind each example). The data position is a function of the global step
alone: step s holds global positions [s*B, (s+1)*B), process p takes [p*b, (p+1)*b) of them,
position -> example index through the epoch's shuffle of hash(seed, epoch), and a record that
cannot be decoded is replaced by the first decodable one of a sequence drawn from (seed,
position). So a run resumed at step s on any number of processes, with any number of workers,
sees exactly the examples of an uninterrupted one (start_step=s; see resume.py for the check
that global batch, seed and source did not change).
"""

from __future__ import annotations

import re
import sys
from typing import Any

import grain
import numpy as np
from absl import flags, logging

from vlm_jax import preemption
from vlm_jax.data import formats, images
from vlm_jax.data.sources import CorruptRecordError, ExampleSource, make_source

# This many failed decodes for one position means the data (or its format) is wrong, not noisy:
# with half the records corrupt, an honest source fails 100 in a row with chance 1e-30.
MAX_FALLBACK_ATTEMPTS = 100
MAX_LOGGED_CORRUPT = 20
_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left",
         "LEFT": "RIGHT", "RIGHT": "LEFT"}
_EPOCH_STREAM, _FALLBACK_STREAM = 31, 32


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
    """Element i: this process's (position, example index) pairs of global batch start_step + i.

    The global order lays out epochs of steps_per_epoch * global_batch positions (the rest of
    each shuffled epoch is dropped); process p takes positions [p*b, (p+1)*b) of each batch.
    """

    def __init__(self, num_examples: int, global_batch: int, process_index: int,
                 process_count: int, *, seed: int, shuffle: bool, start_step: int = 0):
        super().__init__()
        self.num_examples, self.global_batch, self.seed, self.shuffle = (
            num_examples, global_batch, seed, shuffle)
        self.local_batch = global_batch // process_count
        self.first_slot = process_index * self.local_batch
        self.epoch_length = (num_examples // global_batch) * global_batch
        self.start_step = start_step

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, step):
        if isinstance(step, slice):
            return self.slice(step)
        start = (self.start_step + step) * self.global_batch + self.first_slot
        return [(position, self.example_index(position))
                for position in range(start, start + self.local_batch)]

    def example_index(self, position: int) -> int:
        epoch, offset = divmod(position, self.epoch_length)
        if not self.shuffle:
            return offset
        return grain.experimental.index_shuffle(
            offset, max_index=self.num_examples - 1, seed=epoch_seed(self.seed, epoch), rounds=4)


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of an epoch: a hash of (seed, epoch), so no two (seed, epoch) pairs
    share a permutation (seed + epoch made seed 0's epoch 1 seed 1's epoch 0)."""
    return int(np.random.SeedSequence([_EPOCH_STREAM, seed, epoch]).generate_state(1)[0])


def fallback_index(seed: int, position: int, attempt: int, num_examples: int) -> int:
    """The example tried at `position` after `attempt` failed decodes (attempt >= 1)."""
    rng = np.random.default_rng([_FALLBACK_STREAM, seed, position, attempt])
    return int(rng.integers(num_examples))


class LoadChunk:
    """[(position, index)] of one step -> the raw arrays that formats.BuildBatch consumes.

    {"image": [n, S, S, 3], "caption": [n], "format_id": [n], "num_corrupt": [n]} and, when
    the formats need them, "question"/"answer" [n] and "images" [n, M, S, S, 3], "doc_texts"
    [n, M], "closing" [n], "doc_count" [n]. Whole steps, not single examples, cross from worker
    processes: one shared-memory block per array.
    """

    def __init__(self, source: ExampleSource, data_config, seed: int):
        self.source, self.config, self.seed = source, data_config, seed
        mixture = formats.mixture_of(data_config)
        self.draw = formats.FormatDraw(mixture, seed)
        names = {name for name, _ in mixture}
        self.needs_qa = bool(names & set(formats.QA_FORMATS))
        self.needs_docs = "interleaved" in names

    def load(self, position: int, index: int) -> tuple[int, dict[str, Any], int]:
        """(index used, example, failed decodes): the record at `index`, or the first decodable
        fallback of `position`."""
        for attempt in range(MAX_FALLBACK_ATTEMPTS + 1):
            if attempt:
                index = fallback_index(self.seed, position, attempt, len(self.source))
            try:
                return index, self.source[index], attempt
            except CorruptRecordError as error:
                # The batches count every failure (num_corrupt); the log names the first few.
                logging.log_first_n(logging.WARNING, "Replacing a corrupt record: %s",
                                    MAX_LOGGED_CORRUPT, str(error))
                last = error
        raise RuntimeError(
            f"{MAX_FALLBACK_ATTEMPTS + 1} records in a row failed to decode at data position "
            f"{position} (last: {last}); the data files or data.source settings are wrong.")

    def __call__(self, chunk: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        n, size, config = len(chunk), self.config.image_size, self.config
        raw: dict[str, Any] = {
            "image": np.zeros((n, size, size, 3), np.uint8), "caption": [""] * n,
            "format_id": np.zeros(n, np.int32), "num_corrupt": np.zeros(n, np.int32)}
        turns = config.get("chat_turns", 1)
        if self.needs_qa:
            empty = lambda: [""] * n if turns == 1 else [[""] * turns for _ in range(n)]
            raw["question"], raw["answer"] = empty(), empty()
        if self.needs_docs:
            raw["images"] = np.zeros((n, config.max_images, size, size, 3), np.uint8)
            raw["doc_texts"] = [[""] * config.max_images for _ in range(n)]
            raw["closing"], raw["doc_count"] = [""] * n, np.zeros(n, np.int32)
        for k, (position, index) in enumerate(chunk):
            index, example, failures = self.load(position, index)
            raw["num_corrupt"][k] = failures
            raw["format_id"][k] = self.draw(position)
            fmt = formats.FORMATS[raw["format_id"][k]]
            # The coin depends on the global position only: the same for any process count.
            flip = self.flip_coin(position)
            image, caption = self.fit(example["image"], position), example["caption"]
            raw["image"][k], raw["caption"][k] = _flipped(image, caption, flip)
            if fmt in formats.QA_FORMATS:
                swap = swap_left_right if flip else (lambda text: text)
                if turns == 1:
                    question, answer = self.question_answer(index, caption)
                    raw["question"][k], raw["answer"][k] = swap(question), swap(answer)
                else:
                    for turn, (question, answer) in enumerate(
                            self.conversation(index, caption, turns)):
                        raw["question"][k][turn], raw["answer"][k][turn] = (
                            swap(question), swap(answer))
            elif fmt == "interleaved":
                document = self.document(index, image, caption)
                count = len(document["images"])
                raw["doc_count"][k], raw["closing"][k] = count, document["closing"]
                for m in range(count):
                    raw["images"][k, m], raw["doc_texts"][k][m] = _flipped(
                        fit_image(document["images"][m], size), document["texts"][m], flip)
        for key in ("caption", "question", "answer", "closing", "doc_texts"):
            if key in raw:
                raw[key] = np.array(raw[key], dtype=str)
        return raw

    def fit(self, image: np.ndarray, position: int) -> np.ndarray:
        """`image` at the run's size: fitted (the world's own size), or cropped per `data.crop`
        with the crop's own stream (seed, position, 1), so the flip coin is unchanged."""
        crop, size = self.config.get("crop", "fit"), self.config.image_size
        if crop == "fit":
            return fit_image(image, size)
        return images.crop_image(image, size, crop,
                                 np.random.default_rng((self.seed, position, 1)))

    def flip_coin(self, position: int) -> bool:
        return bool(self.config.flip
                    and np.random.default_rng((self.seed, position)).random() < 0.5)

    def question_answer(self, index: int, caption: str) -> tuple[str, str]:
        """The source's own question about the example, else "describe the picture" -> caption."""
        if hasattr(self.source, "question_answer"):
            return self.source.question_answer(index)
        return self.config.caption_prompt, caption

    def conversation(self, index: int, caption: str, turns: int) -> list[tuple[str, str]]:
        """Up to `turns` (question, answer) pairs about the example: the source's own
        conversation (the world's), else its one question_answer."""
        if hasattr(self.source, "conversation"):
            return self.source.conversation(index, turns)
        return [self.question_answer(index, caption)]

    def document(self, index: int, image: np.ndarray, caption: str) -> dict[str, Any]:
        """The source's own document at `index`, else a one-image document of the example."""
        if hasattr(self.source, "document"):
            return self.source.document(index, self.config.max_images)
        return {"images": [image], "texts": [caption], "closing": ""}


def _flipped(image: np.ndarray, caption: str, flip: bool) -> tuple[np.ndarray, str]:
    return (image[:, ::-1], swap_left_right(caption)) if flip else (image, caption)


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Examples per process per step; the global batch must split evenly over processes."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"Global batch size {global_batch_size} must be a positive multiple of the process "
            f"count {process_count}; change the batch size."
        )
    return global_batch_size // process_count


def make_train_dataset(source: ExampleSource, data_config, tokenizer, global_batch_size: int,
                       *, seed: int, process_index: int = 0, process_count: int = 1,
                       start_step: int = 0) -> grain.IterDataset:
    """The endless batched dataset of this process over `source`, from global step
    `start_step` on (see the module docstring)."""
    if seed < 0:
        raise ValueError(f"The data seed must be >= 0, got {seed}.")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count}).")
    local_batch_size(global_batch_size, process_count)
    formats.check_lengths(data_config)
    if len(source) < global_batch_size:
        raise ValueError(
            f"{source!r} has {len(source)} examples, fewer than one global batch "
            f"({global_batch_size}); lower the batch size or add data."
        )
    order = ProcessOrder(len(source), global_batch_size, process_index, process_count,
                         seed=seed, shuffle=data_config.shuffle, start_step=start_step)
    steps = order.map(LoadChunk(source, data_config, seed))
    # Steps load synchronously (in a worker process, or in the prefetch thread below): the
    # sources are CPU-bound NumPy/decode work, where more threads only contend for the GIL.
    dataset = steps.to_iter_dataset(grain.ReadOptions(num_threads=0))
    if data_config.workers > 0:
        # grain's worker processes read absl flags; outside absl.app.run they are unparsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        # Worker w loads steps w, w + workers, ... and grain interleaves them back in order,
        # so every batch is the same for any worker count.
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=data_config.workers,
            per_worker_buffer_size=max(1, data_config.prefetch)),
            worker_init_fn=preemption.die_with_parent)  # no worker outlives a kill -9
    # Tokenizing runs here, in the trainer process: tokenizers need not cross to workers.
    dataset = dataset.map(formats.BuildBatch(tokenizer, data_config))
    if data_config.prefetch > 0:  # a background thread, so batches overlap the train step
        dataset = grain.experimental.ThreadPrefetchIterDataset(
            dataset, prefetch_buffer_size=data_config.prefetch)
    return dataset


def make_train_iterator(data_config, tokenizer, global_batch_size: int, *, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        start_step: int = 0) -> grain.DatasetIterator:
    """Endless iterator of this process's batches from global step `start_step` on."""
    source = make_source(data_config, "train")
    dataset = make_train_dataset(source, data_config, tokenizer, global_batch_size, seed=seed,
                                 process_index=process_index, process_count=process_count,
                                 start_step=start_step)
    return iter(dataset)
