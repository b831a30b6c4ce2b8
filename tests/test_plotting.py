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
    view = side_by_side([Image.new("RGB", (10, 6), (200, 0, 0)), Image.new("L", (7, 4), 90)], gap=2)
    assert view.size == (19, 6)
    pixels = np.asarray(view)
    assert (pixels[:, :10] == (200, 0, 0)).all()
    assert (pixels[:, 10:12] == 255).all()  # the gap, white
    assert (pixels[:4, 12:] == 90).all() and (pixels[4:, 12:] == 255).all()  # a shorter panel sits at the top


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
    dice_blue = (image[:, :, 2] > 150) & (image[:, :, 0] < 80)
    rows, columns = np.nonzero(dice_blue)
    # one finite Dice (epoch 3): a single dot, no line, at its panel's lower left (a lone value sits on the axes)
    assert 5 <= len(rows) <= 25
    assert 369 <= rows.min() <= rows.max() <= 373 and 26 <= columns.min() <= columns.max() <= 30


def test_a_full_disk_while_logging_an_epoch_warns_and_training_goes_on(tmp_path: Path, monkeypatch, capsys) -> None:
    """metrics.csv and the curve PNG are logs: a write that fails (found by a review: ENOSPC on the PNG was a
    traceback after the checkpoint's own warning) is one warning line, and the next epoch writes them whole."""
    import errno
    import os

    import utils.run_log as run_log

    log = run_log.RunLog(tmp_path, {}, "disabled")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(run_log, "save_training_curves", no_space)
        patch.setattr(run_log, "atomic_path", no_space)
        log.log_epoch({"epoch": 1, "step": 4, "train_loss": 0.5})
    err = capsys.readouterr().err
    assert f"warning: could not write {tmp_path / 'metrics.csv'} (No space left on device); training goes on" in err
    assert f"could not write {tmp_path / 'training_curves.png'} (No space left on device)" in err
    log.log_epoch({"epoch": 2, "step": 8, "train_loss": 0.4})  # space again: both epochs are written
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3 and (tmp_path / "training_curves.png").is_file()


def test_a_resumed_log_holds_the_earlier_epochs_as_numbers(tmp_path: Path) -> None:
    """Found by a review: after a resume, train.main()'s history held the epochs read back from metrics.csv as
    strings ('1', '1.0947...'), beside numbers for the new ones."""
    import utils.run_log as run_log

    first = run_log.RunLog(tmp_path, {}, "disabled")
    first.log_epoch({"epoch": 1, "step": 4, "train_loss": 0.5, "val_dice": None, "lr": 1e-3, "skipped": 0,
                     "seconds": 2.5})
    first.log_epoch({"epoch": 2, "step": 8, "train_loss": 0.25, "lr": 5e-4, "skipped": 1})
    resumed = run_log.RunLog(tmp_path, {}, "disabled", start_epoch=2)
    assert resumed.rows == [{"epoch": 1, "step": 4, "train_loss": 0.5, "val_dice": "", "val_iou": "", "lr": 1e-3,
                             "skipped": 0, "seconds": 2.5, "images_per_second": "", "data_wait": ""}]
    assert type(resumed.rows[0]["epoch"]) is int and type(resumed.rows[0]["train_loss"]) is float


def test_every_class_of_many_gets_a_colour_of_its_own() -> None:
    """Found by a review: overlay colours repeated after 10 classes (a 21-class VOC overlay was ambiguous)."""
    colours = class_colours(21)
    assert colours.shape == (21, 3) and len({tuple(c) for c in colours}) == 21
    assert tuple(colours[0]) == (0, 0, 0)


def test_overlay_in_blocks_rounds_as_the_whole_image_blend_did() -> None:
    """Found by a code review: rounding the blend in float64 moved some pixels by one level at alpha 0.35."""
    from utils.plotting import BLEND_BLOCK_PIXELS, class_colours, overlay_mask

    image = np.full((3, 4, 3), 45, np.uint8)
    classes = np.ones((3, 4), np.int64)
    assert overlay_mask(image, classes, class_colours(2), alpha=0.35).getpixel((0, 0)) == (110, 38, 56)
    tall = np.random.default_rng(0).integers(0, 256, (BLEND_BLOCK_PIXELS // 16 + 3, 32, 3)).astype(np.uint8)
    labels = np.random.default_rng(1).integers(0, 3, tall.shape[:2])
    blended = tall.astype(np.float32)  # the whole-image blend, in one piece
    blended[labels > 0] = 0.65 * blended[labels > 0] + 0.35 * class_colours(3)[labels[labels > 0]]
    assert np.array_equal(np.asarray(overlay_mask(tall, labels, class_colours(3), alpha=0.35)),
                          blended.round().astype(np.uint8))

