"""Real images: decode encoded bytes of any mode to RGB, resize for eval, random-resized-crop
for training, and re-encode at a maximum side for storage. (The flip, and its left/right
caption swap, stays in the pipeline: it applies after any crop.)

Every function returns uint8 [H, W, 3]. Decoding and cropping use Pillow, imported here only:
the raw-array records of the synthetic world never need it.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class UndecodableImageError(ValueError):
    """Bytes that Pillow cannot read as an image (truncated, corrupt, not an image)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """A Pillow image of any mode as RGB; transparency is composited onto white.

    CMYK JPEGs (including Adobe's inverted ones, which Pillow's decoder already handles),
    grayscale, 16-bit grayscale, palette and RGBA images all arrive here.
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits (Pillow's convert("L") clips instead).
        values = np.asarray(image, np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        grey = np.clip(np.round(values * 255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


def open_image(data: bytes) -> Image.Image:
    """Encoded bytes -> a fully decoded RGB Pillow image (EXIF rotation applied)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated file fails here, not later in a worker
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UndecodableImageError(f"cannot decode image bytes ({error})") from error


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, GIF, WebP, ...) -> uint8 [H, W, 3]."""
    return np.asarray(open_image(data), np.uint8)


def encode_image(image: np.ndarray | Image.Image, fmt: str = "JPEG", quality: int = 95) -> bytes:
    """uint8 [H, W, 3] (or a Pillow image) -> JPEG/PNG bytes."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    buffer = io.BytesIO()
    if fmt.upper() == "JPEG":
        pil.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        pil.save(buffer, format=fmt.upper())
    return buffer.getvalue()


def limit_side(data: bytes, max_side: int, quality: int = 95) -> bytes:
    """The bytes unchanged when the image's longer side is <= max_side (or max_side is 0);
    otherwise the image shrunk to that side (aspect kept, bicubic) and re-encoded (PNG stays
    PNG, everything else becomes JPEG)."""
    image = Image.open(io.BytesIO(data))
    if max_side <= 0 or max(image.size) <= max_side:
        image.load()  # still check that the bytes decode
        return data
    fmt = "PNG" if image.format == "PNG" else "JPEG"
    rgb = open_image(data)
    scale = max_side / max(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    return encode_image(rgb.resize(size, Image.Resampling.BICUBIC), fmt, quality)


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Eval transform: the shorter side resized to `size` (bicubic), then the centre square.

    uint8 [H, W, 3] -> uint8 [size, size, 3]. An image already size x size is returned as is.
    """
    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), np.uint8)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: tuple[float, float] = (0.5, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3),
                            attempts: int = 10) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w): area share in `scale`, aspect (w/h) log-uniform in `ratio`.

    After `attempts` boxes that do not fit, the centre crop of the largest in-range aspect.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        crop_h, crop_w = height, round(height * ratio[1])
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Training transform: a random box (see random_resized_crop_box) resized to size x size.

    uint8 [H, W, 3] -> uint8 [size, size, 3]; the same rng state gives the same crop.
    """
    image = np.asarray(image, np.uint8)
    top, left, crop_h, crop_w = random_resized_crop_box(rng, *image.shape[:2], scale, ratio)
    box = (left, top, left + crop_w, top + crop_h)
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(resized, np.uint8)


CROPS = ("fit", "center", "random_resized")


def crop_image(image: np.ndarray, size: int, crop: str, rng: np.random.Generator,
               scale: tuple[float, float] = (0.5, 1.0)) -> np.ndarray:
    """uint8 [H, W, C] of any size -> uint8 [size, size, 3] by the named crop.

    "fit": the pipeline's original nearest-pixel centre crop (raw-array world records);
    "center": bicubic shorter-side resize + centre crop (eval); "random_resized": a random box
    from `rng` (training; seed it per example so every run draws the same crop).
    """
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = np.ascontiguousarray(image[:, :, :3])
    if crop == "fit":
        from vlm_jax.data.pipeline import fit_image  # the pipeline imports this module lazily

        return fit_image(image, size)
    if crop == "center":
        return center_crop_resize(image, size)
    if crop == "random_resized":
        return random_resized_crop(image, size, rng, scale)
    raise ValueError(f"Unknown data.crop {crop!r}; choose one of {CROPS}.")
