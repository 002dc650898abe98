"""Scores of generated images against their prompts (text -> image models).

  colour check   the dominant non-background colour of an image (each pixel goes to the
                 nearest of the world's palette and its background, `world_render.COLOUR_RGB`;
                 the most frequent palette colour wins) equals the first colour word of the
                 prompt. Right on real world images of one object, at chance (1 / 7) when the
                 prompts are shuffled.
  CLIPScore      `caption_metrics.clip_score` of (image, prompt) under a judge Scorer (a
                 trained contrastive run, `restore.restore_run(workdir).scorer()`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlm_jax.data import world
from vlm_jax.data.world_render import BACKGROUND_RGB, COLOUR_RGB
from vlm_jax.data.world_scene import COLOURS, HELDOUT_PAIR_LIST
from vlm_jax.evals.caption_metrics import clip_score
from vlm_jax.evals.scoring import Scorer

# Row 0 is the background; rows 1.. the palette in COLOURS order.
_PALETTE = np.asarray([BACKGROUND_RGB, *(COLOUR_RGB[c] for c in COLOURS)], np.float32)


def dominant_colours(images: np.ndarray) -> list[str]:
    """uint8 [N, S, S, 3] -> the most frequent non-background palette colour of each image
    ("" for an image that is all background)."""
    pixels = np.asarray(images, np.float32).reshape(len(images), -1, 1, 3)
    nearest = np.argmin(((pixels - _PALETTE) ** 2).sum(-1), axis=-1)  # [N, S*S]
    out = []
    for row in nearest:
        counts = np.bincount(row, minlength=len(_PALETTE))[1:]
        out.append(COLOURS[int(np.argmax(counts))] if counts.sum() else "")
    return out


def prompt_colour(prompt: str) -> str:
    """The first of the world's colour words in `prompt` ("" when none)."""
    words = prompt.lower().replace(".", " ").replace(",", " ").split()
    return next((w for w in words if w in COLOURS), "")


def colour_accuracy(images: np.ndarray, colours: Sequence[str]) -> float:
    """Fraction of images whose dominant colour is the given one."""
    found = dominant_colours(images)
    return float(np.mean([f == c for f, c in zip(found, colours, strict=True)]))


def colour_prompts(n: int, image_size: int = 32, heldout: bool = False
                   ) -> tuple[list[str], list[str]]:
    """n fixed prompts and their colours: captions of the first one-object scenes, cycling
    through the colours of val scenes (so each colour appears) or, `heldout`, through the
    colour-shape pairs never captioned in training (world_scene.HELDOUT_PAIR_LIST, from the
    "heldout" split)."""
    source = world.World("heldout" if heldout else "val", image_size=image_size)
    prompts, colours, index = [], [], 0
    while len(prompts) < n:
        objects = source.scene(index).objects
        if heldout:
            colour, shape = HELDOUT_PAIR_LIST[len(prompts) % len(HELDOUT_PAIR_LIST)]
            found = len(objects) == 1 and (objects[0].colour, objects[0].shape) == (colour,
                                                                                    shape)
        else:
            colour = COLOURS[len(prompts) % len(COLOURS)]
            found = len(objects) == 1 and objects[0].colour == colour
        if found:
            prompts.append(str(source[index]["caption"]))
            colours.append(colour)
        index += 1
    return prompts, colours


def generated_clip_score(judge: Scorer, images: np.ndarray, prompts: Sequence[str]) -> float:
    """Mean CLIPScore of images [N, S, S, 3] with prompts N under the judge."""
    return float(np.mean(clip_score(judge.encode_images(images),
                                    judge.encode_texts(judge.tokenize(list(prompts))))))


def score_generated(images: np.ndarray, prompts: Sequence[str], colours: Sequence[str],
                    judge: Scorer | None = None) -> dict[str, float]:
    """images [P, n, S, S, 3] (n samples per prompt): colour accuracy, its value with the
    prompts shuffled (a derangement: the chance reference), and CLIPScore with a judge."""
    p, n = images.shape[:2]
    flat = images.reshape(p * n, *images.shape[2:])
    per_image = [c for c in colours for _ in range(n)]
    shifted = [colours[(k + 1) % p] for k in range(p) for _ in range(n)]
    out = {"colour_accuracy": colour_accuracy(flat, per_image),
           "colour_accuracy_shuffled_prompts": colour_accuracy(flat, shifted),
           "chance": 1.0 / len(COLOURS)}
    if judge is not None:
        out["clipscore"] = generated_clip_score(judge, flat, [q for q in prompts for _ in range(n)])
    return out
