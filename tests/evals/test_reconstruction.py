"""The reconstruction eval against NumPy: masked-patch MSE of a known reconstruction and of
the mean-colour baseline, written out with loops over images and patches; the PNG's size and
rows; the missing output directory named."""

import numpy as np
import pytest
from PIL import Image

from vlm_jax import evals
from vlm_jax.data import world
from vlm_jax.evals import reconstruction

SIZE, PATCH, N = 16, 4, 6  # 4 x 4 patches per image
GRID = SIZE // PATCH


def eval_config(tmp_path):
    config = evals.default_eval_config()
    config.update(image_size=SIZE, reconstruction_size=N, reconstruction_pictures=4,
                  batch_size=4, output_dir=str(tmp_path))
    return config


def stand_in():
    """Masks: patches (b + k) % 3 == 0 of image b; reconstruction: every true patch halved."""
    def draw_masks(rng, batch):
        del rng
        return np.array([[(b + k) % 3 == 0 for k in range(GRID * GRID)] for b in range(batch)])

    def reconstruct(images, captions, patch_mask):
        assert len(captions) == len(images) == len(patch_mask)
        patches = images.astype(np.float64) / 127.5 - 1.0
        return 0.5 * patches.reshape(len(images), GRID, PATCH, GRID, PATCH, 3).transpose(
            0, 1, 3, 2, 4, 5).reshape(len(images), GRID * GRID, -1)

    return reconstruction.Reconstructor(PATCH, draw_masks, reconstruct)


def test_mse_and_baseline_equal_numpy_and_the_png_has_three_rows_per_group(tmp_path):
    results = evals.run_served(("reconstruction",), {"reconstructor": stand_in()},
                               eval_config(tmp_path))
    source = world.World("val", seed=0, image_size=SIZE)
    errors, baseline_errors = [], []
    for b in range(N):
        pixels = source[b]["image"].astype(np.float64) / 127.5 - 1.0  # [S, S, 3]
        blocks = {(r, c): pixels[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH]
                  for r in range(GRID) for c in range(GRID)}
        masked = [key for k, key in enumerate(blocks) if (b + k) % 3 == 0]
        visible = np.concatenate([blocks[key].reshape(-1, 3) for key in blocks
                                  if key not in masked])
        colour = visible.mean(0)
        for key in masked:
            errors.append(np.mean((0.5 * blocks[key] - blocks[key]) ** 2))
            baseline_errors.append(np.mean((colour - blocks[key]) ** 2))
    assert results["reconstruction/val/masked_mse"] == pytest.approx(np.mean(errors), rel=1e-6)
    assert results["reconstruction/val/mean_colour_mse"] == pytest.approx(
        np.mean(baseline_errors), rel=1e-6)
    picture = np.asarray(Image.open(tmp_path / reconstruction.PICTURE))
    cell = SIZE * 4 + 2  # scale 4, gap 2
    assert picture.shape == (3 * cell + 2, 4 * cell + 2, 3)
    # Image 0's patch 0 is masked: mid-grey in the masked row, halved in the rebuilt one.
    original = source[0]["image"]
    np.testing.assert_array_equal(picture[2:6:4, 2:6:4], original[:1, :1])
    assert (picture[cell + 2, 2] == 128).all()
    halved = np.round((0.5 * (original[0, 0] / 127.5 - 1.0) + 1.0) * 127.5)
    np.testing.assert_array_equal(picture[2 * cell + 2, 2], halved.astype(np.uint8))


def test_without_an_output_dir_the_eval_names_the_field(tmp_path):
    config = eval_config(tmp_path)
    config.output_dir = ""
    with pytest.raises(ValueError, match="evals.output_dir, which is empty"):
        evals.run_served(("reconstruction",), {"reconstructor": stand_in()}, config)
    with pytest.raises(ValueError, match="needs a reconstructor, which this model does not serve"):
        evals.run_served(("reconstruction",), {"scorer": None}, eval_config(tmp_path))
