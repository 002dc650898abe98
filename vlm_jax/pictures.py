"""Image grids as PNG files: reconstructions, samples and masks one would rather look at.

Every family that makes or rebuilds images (masked-image models, the VQ tokenizer, text-to-image
generation) saves its pictures through `save_image_grid`, so they all read the same way: one
row per example (or per prompt), one column per view (original, masked, rebuilt, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 4, gap: int = 2,
               background: int = 255) -> np.ndarray:
    """uint8 [H, W, 3] tiling `rows` (each a sequence of uint8 [S, S, 3] images, all of one
    size), every image enlarged `scale` times (nearest neighbour: tiny images stay sharp)."""
    if not rows or not all(len(row) for row in rows):
        raise ValueError("image_grid needs at least one non-empty row of images")
    width = max(len(row) for row in rows)
    size = np.asarray(rows[0][0]).shape[:2]
    cell_h, cell_w = size[0] * scale, size[1] * scale
    grid = np.full((len(rows) * (cell_h + gap) + gap, width * (cell_w + gap) + gap, 3),
                   background, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            image = np.asarray(image)
            if image.shape[:2] != size:
                raise ValueError(f"image_grid: image ({r}, {c}) is {image.shape[:2]}, the first "
                                 f"is {size}; resize them to one size first")
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=-1)
            image = np.clip(image, 0, 255).astype(np.uint8)
            big = image.repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
            grid[top:top + cell_h, left:left + cell_w] = big[..., :3]
    return grid


def save_image_grid(path: str | Path, rows: Sequence[Sequence[np.ndarray]], scale: int = 4,
                    gap: int = 2) -> Path:
    """Write `image_grid(rows)` as a PNG at `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(rows, scale, gap)).save(path)
    return path


def labelled_image_grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str],
                        scale: int = 4, gap: int = 2, label_width: int = 260) -> np.ndarray:
    """uint8 [H, label_width + W, 3]: `image_grid(rows)` with each row's label written in black
    in a white band to its left (vertically centred on the row)."""
    from PIL import ImageDraw

    if len(labels) != len(rows):
        raise ValueError(f"labelled_image_grid: {len(labels)} labels for {len(rows)} rows; "
                         "give one label per row")
    grid = image_grid(rows, scale, gap)
    canvas = Image.new("RGB", (label_width + grid.shape[1], grid.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    cell_h = np.asarray(rows[0][0]).shape[0] * scale
    for r, label in enumerate(labels):
        top = gap + r * (cell_h + gap)
        draw.multiline_text((4, top + cell_h // 2), label, fill=(0, 0, 0), anchor="lm")
    return np.asarray(canvas)


def save_labelled_image_grid(path: str | Path, rows: Sequence[Sequence[np.ndarray]],
                             labels: Sequence[str], scale: int = 4, gap: int = 2,
                             label_width: int = 260) -> Path:
    """Write `labelled_image_grid(rows, labels)` as a PNG at `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labelled_image_grid(rows, labels, scale, gap, label_width)).save(path)
    return path
