"""CM3leon's two training sources over the world (configs/cm3leon.py):

    "retrieval"     stage 1: example i is world train document i (its image and caption,
                    `data.retrieval.document_images` = 1 image by default), preceded by the k
                    (image, caption) documents the retriever finds for it in the memory bank:
                    document(i) = ret_1, .., ret_k, then world.document(i). The bank is the
                    first `data.retrieval.bank_size` train documents and the source holds
                    exactly those (so every query is in the bank; its own id is skipped by
                    retrieval.retrieve's query_ids). k = 0 is plain pretraining on the same
                    documents, in the same order, at the same sequence budget.
    "instructions"  stage 2: one image and one task per example, by index: i % 3 == 1 a VQA
                    pair (texts [question], closing answer: the answer is its own span of the
                    interleaved format), otherwise a caption (the trainer makes half of those
                    caption-first: text -> image). No retrieval (CM3leon's SFT prompts carry none).

Retrieval runs on the host when the source is built: the bank's keys (retrieval.world_bank
over the retriever run's scorer) are embedded once and cached (`keys_cache_path`, keyed by the
retriever's path and checkpoint step, the bank size, world seed and image size), so a resumed
or repeated run does not embed again; the neighbours of all bank documents are then one search,
and a training example's lookup is a table read.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from vlm_jax import retrieval
from vlm_jax.data.sources import WorldSource
from vlm_jax.data.world import World

VQA_EVERY = 3  # instructions: index % 3 == 1 is a VQA pair, the rest captions


def keys_cache_path(retriever: str, bank_size: int, seed: int, image_size: int,
                    cache_dir: str = "") -> str:
    """Where the bank's keys [bank_size, D] are cached: cache_dir (default
    $VLM_JAX_CACHE or ~/.cache/vlm_jax, under retrieval/), named by a hash of what fixes them."""
    from vlm_jax.data.tokenizer import default_cache_dir

    workdir = os.path.realpath(retriever)
    steps = os.path.join(workdir, "checkpoints")
    latest = max((int(d) for d in os.listdir(steps) if d.isdigit()), default=-1) if \
        os.path.isdir(steps) else -1
    name = f"{workdir}|{latest}|{bank_size}|{seed}|{image_size}"
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    directory = cache_dir or os.path.join(default_cache_dir(), "retrieval")
    return os.path.join(directory, f"keys-{bank_size}-{digest}.npy")


def bank_keys(retriever: str, bank_size: int, seed: int, cache_dir: str = "") -> np.ndarray:
    """Keys [bank_size, D] of the first bank_size world train documents under the contrastive
    run in `retriever` (its scorer, at its own image size), from the cache when present."""
    from vlm_jax import restore

    if not retriever or not os.path.exists(os.path.join(retriever, "config.json")):
        raise ValueError(f"data.retrieval.retriever={retriever!r} holds no run: train "
                         "configs/siglip.py:tiny and pass retriever=<its workdir>")
    run = restore.restore_run(retriever)
    scorer = run.scorer()
    if scorer is None:
        raise ValueError(f"retriever={retriever} is a {run.config.trainer!r} run, which cannot "
                         "embed; pass a contrastive run (configs/siglip.py:tiny)")
    image_size = run.config.data.image_size
    path = keys_cache_path(retriever, bank_size, seed, image_size, cache_dir)
    if os.path.exists(path):
        return np.load(path)
    _, _, keys = retrieval.world_bank(scorer, bank_size, seed=seed, image_size=image_size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}.tmp.npy"
    np.save(partial, keys.astype(np.float32))
    os.replace(partial, path)  # a killed run leaves no half-written cache
    return np.load(path)


def neighbours(keys: np.ndarray, k: int, max_score: float) -> np.ndarray:
    """ids int64 [N, k]: the documents retrieved for each bank document (itself skipped)."""
    return retrieval.retrieve(retrieval.ExactIndex(keys), keys, np.arange(len(keys)), k=k,
                              max_score=max_score)


class RetrievalSource:
    """Stage 1's source (module doc): world train documents 0..N-1, each after its retrieved
    ones. `retrieved` int [N, k] (k may be 0) names them."""

    def __init__(self, world: World, retrieved: np.ndarray, document_images: int = 1):
        self.world, self.document_images = world, document_images
        self.retrieved = np.asarray(retrieved, np.int64).reshape(len(retrieved), -1)

    def __len__(self) -> int:
        return len(self.retrieved)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.world[self._check(index)]
        return {"image": example["image"], "caption": example["caption"]}

    def document(self, index: int, max_images: int) -> dict[str, Any]:
        """ret_1 .. ret_k (image, caption) then world.document(index); max_images is the
        format's budget, which must hold them all."""
        index = self._check(index)
        k = self.retrieved.shape[1]
        if k + self.document_images > max_images:
            raise ValueError(f"data.max_images={max_images} cannot hold {k} retrieved documents "
                             f"and {self.document_images} of the document's own; set "
                             f"data.max_images={k + self.document_images}")
        own = self.world.document(index, self.document_images)
        found = [self.world[int(j)] for j in self.retrieved[index]]
        return {"images": [e["image"] for e in found] + own["images"],
                "texts": [e["caption"] for e in found] + own["texts"],
                "closing": own["closing"]}

    def _check(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is outside the bank of {len(self)} documents")
        return int(index)

    def __repr__(self) -> str:
        return f"RetrievalSource({len(self)} documents, k={self.retrieved.shape[1]})"


class InstructionSource(WorldSource):
    """Stage 2's source (module doc): one-image captioning and VQA documents of the world."""

    def document(self, index: int, max_images: int) -> dict[str, Any]:
        del max_images  # always one image
        example = self.world[index]
        if index % VQA_EVERY == 1:
            question, answer = self.world.question_answer(index)
            return {"images": [example["image"]], "texts": [question], "closing": answer}
        return {"images": [example["image"]], "texts": [example["caption"]], "closing": ""}

    def __repr__(self) -> str:
        return f"InstructionSource({self.world!r})"


def make_source(data_config, split: str):
    """The "retrieval" or "instructions" source of data_config (train split only)."""
    if split != "train":
        raise ValueError(f"data.source={data_config.source!r} is a training source; split "
                         f"{split!r} has none (evals read the world directly)")
    world = World("train", seed=data_config.world_seed, image_size=data_config.image_size)
    if data_config.source == "instructions":
        return InstructionSource(world)
    settings = data_config.retrieval
    if settings.k > 0:
        keys = bank_keys(settings.retriever, settings.bank_size, data_config.world_seed,
                         settings.get("cache_dir", ""))
        table = neighbours(keys, settings.k, settings.max_score)
    else:
        table = np.zeros((settings.bank_size, 0), np.int64)
    return RetrievalSource(world, table, settings.document_images)
