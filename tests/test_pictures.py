import numpy as np
import pytest
from PIL import Image

from vlm_jax.pictures import image_grid, save_image_grid


def test_grid_places_each_image_enlarged():
    rng = np.random.default_rng(0)
    rows = [[rng.integers(0, 256, (3, 3, 3), dtype=np.uint8) for _ in range(2)] for _ in range(2)]
    grid = image_grid(rows, scale=2, gap=1)
    assert grid.shape == (2 * 7 + 1, 2 * 7 + 1, 3)
    # Row 1, column 0 starts at (1 + 7, 1); pixel (i, j) of the image fills a 2 x 2 block.
    top, left = 8, 1
    np.testing.assert_array_equal(grid[top:top + 6:2, left:left + 6:2], rows[1][0])
    np.testing.assert_array_equal(grid[top + 1:top + 6:2, left + 1:left + 6:2], rows[1][0])
    assert (grid[0] == 255).all()  # the gap is background


def test_save_round_trips_and_refuses_mixed_sizes(tmp_path):
    image = np.zeros((4, 4, 3), np.uint8)
    path = save_image_grid(tmp_path / "a" / "grid.png", [[image, image + 100]], scale=1, gap=0)
    np.testing.assert_array_equal(np.asarray(Image.open(path))[:, 4:], image + 100)
    with pytest.raises(ValueError, match="one size"):
        image_grid([[image, np.zeros((5, 5, 3), np.uint8)]])


def test_labelled_grid_puts_the_grid_right_of_a_band_with_one_label_per_row():
    from vlm_jax.pictures import labelled_image_grid

    rng = np.random.default_rng(1)
    rows = [[rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(3)] for _ in range(2)]
    out = labelled_image_grid(rows, ["red circle", ""], scale=4, gap=2, label_width=100)
    grid = image_grid(rows, scale=4, gap=2)
    assert out.shape == (grid.shape[0], 100 + grid.shape[1], 3)
    np.testing.assert_array_equal(out[:, 100:], grid)
    band = out[:, :100]
    cell = 4 * 4
    first, second = band[2:2 + cell], band[4 + cell:4 + 2 * cell]
    assert (first.min(-1) < 128).sum() > 10  # text drawn in row 0's band
    assert (second == 255).all()  # an empty label leaves the band white
    with pytest.raises(ValueError, match="one label per row"):
        labelled_image_grid(rows, ["only one"])
