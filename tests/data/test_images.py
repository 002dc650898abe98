"""Decoding and cropping real images (vlm_jax/data/images.py) against Pillow and NumPy."""

import io

import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import images


def _bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo(height=20, width=30, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"),
                                      ("RGB", "PNG"), ("L", "PNG"), ("P", "PNG")])
def test_decode_equals_pillow(mode, fmt):
    source = Image.fromarray(_photo()).convert(mode)
    data = _bytes(source, fmt)
    decoded = images.decode_image(data)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert decoded.dtype == np.uint8 and decoded.shape == (20, 30, 3)
    np.testing.assert_array_equal(decoded, expected)


def test_grey_decodes_to_three_equal_channels():
    data = _bytes(Image.fromarray(_photo()[:, :, 0]), "PNG")
    decoded = images.decode_image(data)
    np.testing.assert_array_equal(decoded[..., 0], _photo()[:, :, 0])
    np.testing.assert_array_equal(decoded[..., 1], decoded[..., 2])


def test_rgba_composites_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red 200
    rgba[..., 3] = 64  # alpha 64/255
    decoded = images.decode_image(_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    alpha = 64 / 255
    # NumPy formula: out = a * colour + (1 - a) * 255, per channel.
    expected = np.array([200 * alpha + 255 * (1 - alpha), 255 * (1 - alpha), 255 * (1 - alpha)])
    np.testing.assert_allclose(decoded[0, 0], expected, atol=1.0)


def test_sixteen_bit_grey_scales_to_eight_bits():
    values = np.array([[0, 65535], [32768, 257]], np.uint16)
    decoded = images.decode_image(_bytes(Image.fromarray(values), "PNG"))
    np.testing.assert_array_equal(decoded[..., 0], np.round(values / 257).astype(np.uint8))


def test_corrupt_bytes_raise_undecodable():
    data = _bytes(Image.fromarray(_photo()), "JPEG")
    with pytest.raises(images.UndecodableImageError):
        images.decode_image(data[: len(data) // 2])
    with pytest.raises(images.UndecodableImageError):
        images.decode_image(b"not an image at all")


def test_center_crop_resize_matches_pillow_formula():
    photo = _photo(40, 60)
    out = images.center_crop_resize(photo, 16)
    # Shorter side 40 -> 16: width 60 -> 24, then the centre 16 columns (offset 4).
    resized = np.asarray(Image.fromarray(photo).resize((24, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, resized[:, 4:20])


def test_random_resized_crop_is_deterministic_and_in_range():
    photo = _photo(50, 70)
    a = images.random_resized_crop(photo, 16, np.random.default_rng(3))
    b = images.random_resized_crop(photo, 16, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (16, 16, 3)
    for seed in range(50):
        top, left, h, w = images.random_resized_crop_box(
            np.random.default_rng(seed), 50, 70, scale=(0.3, 1.0))
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 70
        assert 0.3 * 3500 * 0.9 <= h * w <= 3500  # rounding of both sides allows ~10%


def test_random_resized_crop_equals_pillow_on_its_box():
    photo = _photo(50, 70)
    top, left, h, w = images.random_resized_crop_box(np.random.default_rng(5), 50, 70)
    expected = Image.fromarray(photo).resize((16, 16), Image.Resampling.BICUBIC,
                                             box=(left, top, left + w, top + h))
    out = images.random_resized_crop(photo, 16, np.random.default_rng(5))
    np.testing.assert_array_equal(out, np.asarray(expected))


def test_limit_side_keeps_small_and_shrinks_large():
    small = _bytes(Image.fromarray(_photo(20, 30)), "JPEG")
    assert images.limit_side(small, 64) is small
    large = _bytes(Image.fromarray(_photo(100, 200)), "PNG")
    shrunk = images.limit_side(large, 50)
    with Image.open(io.BytesIO(shrunk)) as image:
        assert image.size == (50, 25) and image.format == "PNG"


def test_crop_image_fit_is_the_old_pipeline_rule():
    from vlm_jax.data.pipeline import fit_image

    photo = _photo(24, 36)
    np.testing.assert_array_equal(images.crop_image(photo, 12, "fit", None), fit_image(photo, 12))
    with pytest.raises(ValueError, match="data.crop"):
        images.crop_image(photo, 12, "zoom", None)
