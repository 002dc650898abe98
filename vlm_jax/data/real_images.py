"""A real-image smoke set from files that ship inside PyPI packages: scikit-image's
`skimage.data` photographs and scikit-learn's bundled 8x8 digits, written as image files with
a JSONL of captions and converted by vlm_jax/data/convert.py into ArrayRecord shards.

    python -m vlm_jax.data.real_images --output=/tmp/real   # needs pip install .[real]

Proves the real-data path (files -> converter -> records -> decode -> crop), not accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vlm_jax.data import convert

# skimage.data loader -> caption; every one is a photograph or scan stored in the package.
PHOTOS = {
    "astronaut": "a photo of an astronaut.",
    "camera": "a photo of a man with a camera.",
    "cat": "a photo of a cat.",
    "chelsea": "a photo of a cat.",
    "coffee": "a photo of a cup of coffee.",
    "coins": "a photo of coins.",
    "horse": "a silhouette of a horse.",
    "moon": "a photo of the moon.",
    "page": "a scan of a page of text.",
    "rocket": "a photo of a rocket.",
    "hubble_deep_field": "a photo of galaxies.",
    "immunohistochemistry": "a microscope photo of cells.",
}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _save(image: np.ndarray, path: str) -> None:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:  # float images in [0, 1]
        image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)


def write_photos(folder: str) -> list[dict]:
    """skimage.data photographs as PNG files; returns their caption rows."""
    import skimage.data

    rows = []
    for name, caption in PHOTOS.items():
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue  # a loader an older scikit-image lacks
        path = os.path.join(folder, f"{name}.png")
        _save(loader(), path)
        rows.append({"image": os.path.basename(path), "caption": caption, "name": name})
    return rows


def write_digits(folder: str, per_class: int = 10) -> list[dict]:
    """The first `per_class` sklearn digits of each class as PNGs (values 0..16 -> 0..240)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = []
    for label in range(10):
        for k, index in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            path = os.path.join(folder, f"digit{label}_{k}.png")
            _save((digits.images[index] * 15).astype(np.uint8), path)
            rows.append({"image": os.path.basename(path), "label": label,
                         "caption": f"a photo of the digit {DIGIT_NAMES[label]}."})
    return rows


def build(output: str, per_class: int = 10, progress: bool = False) -> dict[str, dict]:
    """Convert photos and digits into {output}/photos-* and {output}/digits-* shards.

    Returns {"photos": summary, "digits": summary}; each digits record's metadata holds its
    label, and the class names are the captions of DIGIT_NAMES.
    """
    summaries = {}
    for name, writer in (("photos", write_photos),
                         ("digits", lambda f: write_digits(f, per_class))):
        folder = os.path.join(output, f"{name}_files")
        os.makedirs(folder, exist_ok=True)
        rows = writer(folder)
        captions = os.path.join(folder, "captions.jsonl")
        with open(captions, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        summaries[name] = convert.convert("folder", folder, output, prefix=name,
                                          captions=captions, examples_per_shard=len(rows),
                                          progress=progress)
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--per_class", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        summaries = build(args.output, args.per_class, progress=True)
    except ImportError as error:
        print(f"real_images: {error}; install the extra: pip install '.[real]'", file=sys.stderr)
        return 2
    for name, summary in summaries.items():
        print(f"{name}: {summary['examples']} examples -> {summary['pattern']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
