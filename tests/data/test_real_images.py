"""The real-image smoke set (skimage photographs, sklearn digits) converts and decodes."""

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402

from vlm_jax.data import convert, real_images, sources  # noqa: E402


def test_real_images_convert_and_decode(tmp_path):
    summaries = real_images.build(str(tmp_path), per_class=2)
    photos = sources.ArrayRecordSource(summaries["photos"]["pattern"])
    assert len(photos) == summaries["photos"]["examples"] >= 10
    assert summaries["photos"]["corrupt"] == 0
    import skimage.data

    first = photos._records[0]
    name = convert.read_metadata(first)["name"]
    expected = np.asarray(getattr(skimage.data, name)())
    decoded = photos[0]["image"]
    if expected.ndim == 2:  # grey photographs decode to three equal channels
        expected = np.repeat(expected[:, :, None], 3, axis=-1)
    np.testing.assert_array_equal(decoded, expected[:, :, :3])

    digits = sources.ArrayRecordSource(summaries["digits"]["pattern"])
    assert len(digits) == 20
    reference = load_digits()
    index = np.flatnonzero(reference.target == 3)[1]
    record = digits[7]  # label 3, second example
    assert record["caption"] == "a photo of the digit three."
    assert convert.read_metadata(digits._records[7])["label"] == 3
    np.testing.assert_array_equal(record["image"][:, :, 0], reference.images[index] * 15)
