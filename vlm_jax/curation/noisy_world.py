"""A noisy world for the curation experiment: the synthetic world with a share of mismatched
captions, duplicated images and a skewed concept distribution, as a finite source.

Example i of NoisyWorld is built from the clean train world: with probability `skew_drop`,
a scene whose first object's colour is not the dominant colour is replaced by the next scene
that has it (so one colour is over-represented, like a web crawl's head concepts); with
probability `duplicate_share` the example copies an earlier pool example (a near-duplicate:
the same image and caption); with probability `mismatch_share` its caption is the caption of
an unrelated example (alt-text noise). Every draw is seeded by (seed, i): any process rebuilds
the same pool, and `flags(i)` says which noise an example carries, for the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_jax.data.world import World


class NoisyWorld:
    def __init__(self, size: int, *, mismatch_share: float = 0.3, duplicate_share: float = 0.3,
                 skew_drop: float = 0.0, dominant_colour: str = "red", seed: int = 0,
                 image_size: int = 32):
        for name, share in (("mismatch_share", mismatch_share),
                            ("duplicate_share", duplicate_share), ("skew_drop", skew_drop)):
            if not 0.0 <= share < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {share}.")
        self.size, self.seed = size, seed
        self.mismatch_share, self.duplicate_share = mismatch_share, duplicate_share
        self.skew_drop, self.dominant_colour = skew_drop, dominant_colour
        self.world = World("train", seed=seed, image_size=image_size)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (f"NoisyWorld({self.size}, mismatch={self.mismatch_share}, "
                f"duplicate={self.duplicate_share}, skew_drop={self.skew_drop})")

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 7919, index])

    def _clean_index(self, index: int, rng: np.random.Generator) -> int:
        """The world index example `index` shows (skewed towards the dominant colour)."""
        world_index = index
        if rng.random() < self.skew_drop:
            while self.world.scene(world_index).objects[0].colour != self.dominant_colour:
                world_index += self.size  # stays disjoint from other pool slots' indices
        return world_index

    def flags(self, index: int) -> dict[str, Any]:
        """{"source": pool index it copies (itself if none), "mismatched": bool,
        "world_index": the world example of its image}."""
        rng = self._rng(index)
        duplicate = index > 0 and rng.random() < self.duplicate_share
        origin = int(rng.integers(index)) if duplicate else index
        mismatched = rng.random() < self.mismatch_share
        if duplicate:
            return self.flags(origin)  # a copy carries its original's image, caption and flags
        return {"source": index, "mismatched": bool(mismatched),
                "world_index": self._clean_index(index, rng)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self!r}")
        flags = self.flags(index)
        example = self.world[flags["world_index"]]
        caption = example["caption"]
        if flags["mismatched"]:  # a caption of an unrelated scene, beyond the pool's indices
            other = self.world.caption(self.world.scene(flags["world_index"] + 7 * self.size + 1),
                                       flags["world_index"] + 7 * self.size + 1)
            caption = other
        return {"image": example["image"], "caption": caption}
