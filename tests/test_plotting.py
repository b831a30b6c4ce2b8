"""Overlays and training curves drawn with Pillow."""

from pathlib import Path

import numpy as np
from PIL import Image

from utils.plotting import class_colours, overlay_mask, save_training_curves, side_by_side


def test_overlay_colours_only_foreground_pixels() -> None:
    image = np.full((4, 5, 3), 100, np.uint8)
    classes = np.zeros((4, 5), np.int64)
    classes[1, 2] = 1
    classes[3, 4] = 2
    colours = class_colours(3)
    out = np.asarray(overlay_mask(image, classes, colours, alpha=0.5))
    assert (out[classes == 0] == 100).all()
    np.testing.assert_array_equal(out[1, 2], np.round(0.5 * 100 + 0.5 * colours[1]).astype(np.uint8))
    assert not np.array_equal(out[1, 2], out[3, 4])


def test_colour_masks_keep_their_own_colours() -> None:
    colours = class_colours(2, [[0, 0, 0], [10, 200, 30]])
    assert colours.tolist() == [[0, 0, 0], [10, 200, 30]]


def test_side_by_side_puts_panels_in_a_row() -> None:
    view = side_by_side([Image.new("RGB", (10, 6)), Image.new("L", (7, 6))], gap=2)
    assert view.size == (19, 6)


def test_training_curves_png_handles_missing_and_nan_values(tmp_path: Path) -> None:
    rows = [{"epoch": 1, "train_loss": 0.9, "val_dice": None, "lr": 1e-3},
            {"epoch": 2, "train_loss": 0.5, "val_dice": float("nan"), "lr": 5e-4},
            {"epoch": 3, "train_loss": 0.4, "val_dice": 0.8, "lr": 1e-4}]
    path = tmp_path / "curves.png"
    save_training_curves(rows, path)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (600, 640, 3)
    loss_red = (image[:200, :, 0] > 150) & (image[:200, :, 1] < 80)
    assert loss_red.sum() > 50  # the loss line is drawn in its panel
