"""Drawing scenes with NumPy: anti-aliased shape masks precomputed per size, pasted into cells."""

import numpy as np

from vlm_jax.data.world_scene import COLOURS, SHAPES, SIZES, Scene, grid_size

COLOUR_RGB = {
    "red": (230, 45, 45),
    "green": (40, 200, 70),
    "blue": (50, 100, 255),
    "yellow": (240, 220, 40),
    "purple": (165, 70, 225),
    "cyan": (40, 225, 235),
    "white": (245, 245, 245),
}
BACKGROUND_RGB = (14, 14, 22)
NOISE_AMPLITUDE = 7.0  # uniform noise in [-7, 7] (std 4): mild, and cheaper than Gaussian
# Fraction of a cell an object spans: at 32 px (16 px cells) small is 8 px and large 12 px,
# big enough for a small ViT to tell a triangle from a circle.
EXTENT_FRACTION = {"small": 0.5, "large": 0.75}
_SUPERSAMPLE = 4


def shape_alpha(shape: str, extent: int) -> np.ndarray:
    """Coverage in [0, 1] of `shape` drawn in an extent x extent box, float32 [extent, extent].

    Straight edges of squares and crosses fall on pixel boundaries, so small shapes stay crisp.
    """
    t = (np.arange(extent * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE  # sample centres, pixel units
    y, x = np.meshgrid(t, t, indexing="ij")
    half = extent / 2
    border = 1.0  # px left empty around squares and above the triangle
    if shape == "circle":
        inside = (x - half) ** 2 + (y - half) ** 2 <= half**2
    elif shape == "square":
        inside = (np.abs(x - half) <= half - border) & (np.abs(y - half) <= half - border)
    elif shape == "triangle":  # apex up, so a horizontal flip leaves it unchanged
        inside = (y >= border) & (np.abs(x - half) <= (y - border) / (extent - border) * half)
    elif shape == "cross":  # a plus sign; arm width has the parity of extent to stay centred
        arm = round(0.36 * extent)
        arm -= (extent - arm) % 2
        inside = (np.abs(x - half) <= arm / 2) | (np.abs(y - half) <= arm / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid shapes: {SHAPES}")
    coverage = inside.reshape(extent, _SUPERSAMPLE, extent, _SUPERSAMPLE).mean(axis=(1, 3))
    return coverage.astype(np.float32)


class Renderer:
    """Renders scenes at one image size; masks and colours are built once here."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.grid = grid_size(image_size)
        self.cell = image_size // self.grid
        self.margin = (image_size - self.grid * self.cell) // 2
        self.extent = {s: max(3, round(EXTENT_FRACTION[s] * self.cell)) for s in SIZES}
        self._alpha = {  # [e, e, 1], broadcast over RGB
            (shape, size): shape_alpha(shape, self.extent[size])[..., None]
            for shape in SHAPES
            for size in SIZES
        }
        self._rgb = {c: np.asarray(COLOUR_RGB[c], np.float32) for c in COLOURS}
        self._background = np.asarray(BACKGROUND_RGB, np.float32)

    def render(self, scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 [S, S, 3]. Without `rng` objects are centred in their cells and there is no
        noise; with it each object is shifted within its cell and mild noise is added."""
        size = self.image_size
        canvas = np.empty((size, size, 3), np.float32)
        canvas[...] = self._background
        for obj in scene.objects:
            extent = self.extent[obj.size]
            slack = self.cell - extent
            if rng is None:
                dy = dx = slack // 2
            else:
                # Keep a 1 px gap to the cell border so neighbouring objects never touch.
                low = min(1, slack // 2)
                dy, dx = rng.integers(low, slack - low + 1, size=2)
            y = self.margin + obj.row * self.cell + int(dy)
            x = self.margin + obj.col * self.cell + int(dx)
            region = canvas[y : y + extent, x : x + extent]
            region += self._alpha[obj.shape, obj.size] * (self._rgb[obj.colour] - region)
        if rng is not None:
            noise = rng.random(canvas.shape, dtype=np.float32)  # [S, S, 3] in [0, 1)
            canvas += (2.0 * NOISE_AMPLITUDE) * noise - (NOISE_AMPLITUDE - 0.5)  # +0.5 rounds
        else:
            canvas += 0.5
        np.clip(canvas, 0.0, 255.0, out=canvas)
        return canvas.astype(np.uint8)
