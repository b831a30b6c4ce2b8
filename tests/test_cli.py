"""train -> checkpoint -> predict -> evaluate through the real command lines (their `__main__` blocks, see
conftest.run_script), on tiny generated data."""

import argparse
import csv
import inspect
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import NARROW_UNET, run_script
from PIL import Image

from unet import UNet
from utils.atomic_files import temporary_path
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import UserError
from utils.mask_writer import written_by_predict
from utils.plotting import class_colours, overlay_mask

REPO = Path(__file__).resolve().parents[1]
ANY_WIDTH_FLAGS = ["--scale", "1", "--batch-size", "4", "--learning-rate", "1e-2", "--wandb", "disabled",
                   "--workers", "0", "--log-every", "1"]
TRAIN_FLAGS = [*ANY_WIDTH_FLAGS, *NARROW_UNET]


def write_carvana_like(folder: Path, count: int, size: tuple[int, int] = (48, 32), seed: int = 0) -> Path:
    """<id>_NN.jpg images and <id>_NN_mask.gif 0/1 palette masks: a bright disc on a noisy background."""
    rng = np.random.default_rng(seed)
    (folder / "imgs").mkdir(parents=True)
    (folder / "masks").mkdir()
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    for i in range(count):
        cy, cx, r = rng.integers(10, height - 10), rng.integers(10, width - 10), rng.integers(5, 9)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
        image = rng.normal(90, 15, (height, width, 3)) + mask[..., None] * np.array([110, 60, -40])
        name = f"c0ffee{i:06d}_{i % 16 + 1:02d}"
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / "imgs" / f"{name}.jpg")
        gif = Image.fromarray(mask, mode="P")
        gif.putpalette([0, 0, 0, 255, 255, 255])
        gif.save(folder / "masks" / f"{name}_mask.gif")
    return folder


def run(script: str, *args: str, cwd: Path, check: bool = True, real_process: bool = False
        ) -> subprocess.CompletedProcess:
    result = run_script(script, *args, cwd=cwd, real_process=real_process)
    if check and result.returncode != 0:
        pytest.fail(f"{script} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result


def headline(result: subprocess.CompletedProcess) -> str:
    """evaluate.py's line of mean scores."""
    return next(line for line in result.stdout.splitlines() if line.startswith("mean foreground Dice"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-class model trained for 3 epochs with the default data folders (data/imgs, data/masks)."""
    root = tmp_path_factory.mktemp("run")
    write_carvana_like(root / "data", 10)
    run("train.py", "--epochs", "3", "--validation", "20", *TRAIN_FLAGS, cwd=root)
    return root


def test_train_writes_checkpoints_metrics_and_curves(trained: Path) -> None:
    folder = trained / "checkpoints"
    assert {"last.pth", "best.pth", "metrics.csv", "training_curves.png"} <= {p.name for p in folder.iterdir()}
    checkpoint = load_checkpoint(folder / "last.pth")
    assert checkpoint["model_args"] == {"n_channels": 3, "n_classes": 2, "bilinear": False, "base_channels": 16}
    assert checkpoint["mask_values"] == [0, 1]
    assert checkpoint["scale"] == 1.0 and checkpoint["epoch"] == 3
    assert checkpoint["step"] == 3 * 2  # 8 training images in batches of 4
    assert checkpoint["args"]["batch_size"] == 4
    with open(folder / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert all(0 <= float(r["val_dice"]) <= 1 for r in rows)
    curves = np.asarray(Image.open(folder / "training_curves.png").convert("RGB"))
    loss_red = (curves[:200, :, 0] > 150) & (curves[:200, :, 1] < 80)  # the loss panel's line (utils/plotting.py)
    assert loss_red.sum() > 50
    best = load_checkpoint(folder / "best.pth")
    assert best["best_dice"] == max(float(r["val_dice"]) for r in rows) == pytest.approx(best["val_dice"])


def test_predict_writes_binary_mask_at_original_size(trained: Path) -> None:
    image = sorted((trained / "data" / "imgs").iterdir())[0]
    run("predict.py", "-m", "checkpoints/best.pth", "-i", image, "-o", "out.png", "--overlay", cwd=trained)
    mask = np.asarray(Image.open(trained / "out.png"))
    assert mask.shape == (32, 48)
    assert set(np.unique(mask)) <= {0, 255}
    overlay = Image.open(trained / "out_overlay.png")
    assert overlay.size == (48, 32) and overlay.mode == "RGB"
    pixels, shown = np.asarray(Image.open(image).convert("RGB")).astype(float), np.asarray(overlay).astype(float)
    foreground = mask == 255
    assert foreground.any() and (~foreground).any()
    assert np.array_equal(shown[~foreground], pixels[~foreground])  # the image itself around the objects
    colour = np.array(class_colours(2)[1], float)
    np.testing.assert_allclose(shown[foreground], np.round(0.5 * pixels[foreground] + 0.5 * colour), atol=1)


def test_csv_outputs_replace_only_their_own_files_and_a_file_in_the_way_is_said_first(trained: Path) -> None:
    """Found by a review: --csv checkpoints/metrics.csv (or evaluate.py -o it) replaced a training run's history
    without a word; an output under a file failed only after predicting, blaming permissions."""
    image = sorted((trained / "data" / "imgs").iterdir())[0]
    history = (trained / "checkpoints" / "metrics.csv").read_text()
    flags = ["-m", "checkpoints/best.pth", "--workers", "0"]
    for script, args in (("predict.py", ["-i", image, "-o", "m.png", "--csv", "checkpoints/metrics.csv"]),
                         ("evaluate.py", ["-o", "checkpoints/metrics.csv"])):
        result = run(script, *flags, *args, cwd=trained, check=False)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].endswith(
            "checkpoints/metrics.csv exists and was not written by this tool: give another file name, or move that "
            "file away first")
    assert (trained / "checkpoints" / "metrics.csv").read_text() == history and not (trained / "m.png").exists()

    run("predict.py", *flags, "-i", "data/imgs", "-o", "again/", "--csv", cwd=trained)
    result = run("predict.py", *flags, "-i", image, "-o", "again/", "--csv", cwd=trained)  # its own: replaced
    assert "again/predictions.csv is replaced: it held 10 rows of an earlier run" in result.stderr
    assert len((trained / "again" / "predictions.csv").read_text().splitlines()) == 2
    long_name = trained / ("a" * 246 + image.suffix)  # its _overlay.png: over 255 bytes
    shutil.copy(image, long_name)
    refused = run("predict.py", *flags, "-i", long_name, "-o", "again/", "--csv", "--overlay", cwd=trained,
                  check=False)
    assert refused.returncode == 2 and "is replaced" not in refused.stderr  # found by a review: it was said, and kept
    assert len((trained / "again" / "predictions.csv").read_text().splitlines()) == 2
    run("evaluate.py", *flags, "-o", "scores.json", cwd=trained)
    run("evaluate.py", *flags, "-o", "scores.json", cwd=trained)  # an earlier evaluation's file may be replaced

    (trained / "in_the_way").write_text("a file")
    result = run("predict.py", *flags, "-i", image, "-o", "in_the_way/m.png", cwd=trained, check=False)
    assert result.stderr.strip().splitlines()[-1] == ("error: cannot make the folder in_the_way for --output "
                                                      "(in_the_way is a file, not a folder): pick another path")
    assert "predict" not in result.stdout  # said before the model ran
    result = run("predict.py", *flags, "-i", image, "--tile", "64", "--overlap", "0.99", cwd=trained, check=False)
    assert result.returncode == 2 and "--overlap must be a fraction of the tile from 0 to 0.9" in result.stderr


def test_evaluate_and_predict_say_when_tile_auto_tiles(trained: Path, tmp_path: Path) -> None:
    """Found by a review: under --tile auto, images over the memory budget were scored and predicted in tiles
    without a word (evaluate's summary names only a --tile N), and tiled scores differ from whole-image ones."""
    note = "note: 48x32 is predicted in tiles of 64: whole, it does not fit in the memory the forward pass may use"
    flags = ["-m", "checkpoints/best.pth", "--workers", "0"]
    tiled = run("evaluate.py", *flags, "--max-memory", "0.0001", "-o", tmp_path / "auto.csv", cwd=trained)
    assert tiled.stderr.count(note) == 1  # once, for the 10 images of that size
    assert headline(run("evaluate.py", *flags, "--tile", "64", "-o", tmp_path / "64.csv", cwd=trained)) == headline(
        tiled)  # the tiles said are those scored
    image = sorted((trained / "data" / "imgs").iterdir())[0]
    result = run("predict.py", *flags, "--max-memory", "0.0001", "-i", image, "-o", tmp_path / "m.png", cwd=trained)
    assert result.stderr.count(note) == 1


def test_predict_several_inputs_viz_without_saving(trained: Path) -> None:
    images = sorted((trained / "data" / "imgs").iterdir())[:2]
    result = run("predict.py", "-m", "checkpoints/last.pth", "-i", *images, "--viz", "--no-save", cwd=trained)
    assert not list((trained / "data" / "imgs").glob("*_OUT.png"))
    for image in images:  # no display here: the side-by-side view is saved instead of shown
        viz = Image.open(image.with_name(f"{image.stem}_OUT_viz.png"))
        assert viz.height == 32 and viz.width > 3 * 48
        assert str(image) in result.stdout
        # image | mask in class colours | overlay: the mask's classes read back from its colours
        panels = np.asarray(viz.convert("RGB"))
        gap = (viz.width - 3 * 48) // 2
        picture, drawn, overlay = (panels[:, i * (48 + gap):i * (48 + gap) + 48] for i in range(3))
        colours = class_colours(2)
        assert np.array_equal(picture, np.asarray(Image.open(image).convert("RGB")))
        classes = (drawn == colours[1]).all(-1).astype(np.int64)
        assert np.array_equal(drawn, colours[classes])  # every pixel one class colour or the other
        assert np.array_equal(overlay, np.asarray(overlay_mask(picture, classes, colours)))
        image.with_name(f"{image.stem}_OUT_viz.png").unlink()


def test_a_no_save_run_lists_no_mask_file_in_its_csv(trained: Path, tmp_path: Path) -> None:
    """predictions.csv names each mask written; with --no-save none is, and its column is empty, not a path to
    a file that does not exist."""
    image = sorted((trained / "data" / "imgs").iterdir())[0]
    run("predict.py", "-m", "checkpoints/last.pth", "-i", image, "-o", tmp_path / "m.png", "--no-save", "--csv",
        tmp_path / "rows.csv", cwd=trained)
    with open(tmp_path / "rows.csv", newline="") as file:
        [row] = list(csv.DictReader(file))
    assert row["image"] == str(image) and row["mask"] == "" and not (tmp_path / "m.png").exists()
    assert float(row["fraction_0"]) + float(row["fraction_1"]) == pytest.approx(1, abs=1e-5)


def test_predict_folder_streams_to_mirrored_names_with_probs_and_csv(trained: Path) -> None:
    images = sorted((trained / "data" / "imgs").iterdir())
    result = run("predict.py", "-m", "checkpoints/last.pth", "-i", "data/imgs", "-o", "preds/", "--batch-size", "3",
                 "--workers", "2", "--writers", "2", "--save-probs", "--csv", cwd=trained)
    summary = [line for line in result.stdout.splitlines() if line.startswith("predicted ")]
    assert len(summary) == 1 and f"predicted {len(images)} images in " in summary[0]
    assert "for decoding (--workers 2)" in summary[0] and "for writing (--writers 2)" in summary[0]
    assert f"masks of {len(images)} images saved in preds\n" in result.stdout  # found by a review: not said
    masks = sorted(p.name for p in (trained / "preds").glob("*.png"))
    assert masks == [f"{p.stem}.png" for p in images]  # one mask per input, named like it
    with open(trained / "preds" / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["image"] for row in rows] == [f"data/imgs/{p.name}" for p in images]  # input order
    for row in rows:
        mask = np.asarray(Image.open(trained / row["mask"]))
        assert mask.shape == (32, 48) and set(np.unique(mask)) <= {0, 255}  # binary masks are written 0/255
        assert float(row["fraction_1"]) == pytest.approx((mask == 255).mean(), abs=1e-6)
        assert float(row["fraction_0"]) + float(row["fraction_1"]) == pytest.approx(1)
        probs = np.load(trained / "preds" / f"{Path(row['mask']).stem}_probs.npy")
        assert probs.shape == (2, 32, 48) and probs.dtype == np.float16
        assert probs.min() >= 0 and probs.max() <= 1  # probabilities, not logits
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1, atol=2e-3)
        agree = (probs.argmax(0) == (mask == 255)).mean()
        assert agree > 0.99  # float16 rounding may flip pixels at exactly 0.5


def test_skip_existing_finishes_a_stopped_folder_run_with_the_same_masks_and_csv(trained: Path) -> None:
    """A run stopped after some masks: --skip-existing predicts the rest, leaves the finished masks alone, predicts
    a mask again that is not one (a file from elsewhere: with --overwrite), and counts predictions.csv's rows from
    the files."""
    def outputs() -> tuple[dict[str, bytes], list[dict]]:  # masks and overlays, and the CSV's rows
        masks = {path.name: path.read_bytes() for path in (trained / "full").glob("*.png")}
        with open(trained / "full" / "predictions.csv", newline="") as file:
            return masks, list(csv.DictReader(file))

    flags = ["-m", "checkpoints/last.pth", "-i", "data/imgs", "-o", "full/", "--csv", "--overlay"]
    run("predict.py", *flags, cwd=trained)
    expected_masks, expected_rows = outputs()
    assert any(float(row["fraction_1"]) > 0.01 for row in expected_rows)  # real foreground to count
    names = sorted(name for name in expected_masks if not name.endswith("_overlay.png"))
    (trained / "full" / names[0]).unlink()  # never written
    (trained / "full" / f"{Path(names[1]).stem}_overlay.png").unlink()  # its overlay missing
    (trained / "full" / names[2]).write_bytes(b"not a mask")  # unreadable: predicted again
    (trained / "full" / "predictions.csv").unlink()
    kept = {name: (trained / "full" / name).stat().st_mtime_ns for name in names[3:]}
    refused = run("predict.py", *flags, "--skip-existing", cwd=trained, check=False)  # not predict.py's: kept
    assert refused.returncode == 2
    assert f"full/{names[2]} exists without the mark of predict.py's outputs" in refused.stderr
    result = run("predict.py", *flags, "--skip-existing", "--overwrite", cwd=trained)
    assert f"--skip-existing: {len(names) - 3} of {len(names)} images already have their outputs; 3 to predict" \
        in result.stdout
    assert outputs() == (expected_masks, expected_rows)
    assert {name: (trained / "full" / name).stat().st_mtime_ns for name in names[3:]} == kept  # not rewritten


def test_predict_removes_the_unfinished_files_of_a_killed_run_and_no_others(trained: Path, tmp_path: Path) -> None:
    """predict.py killed outright (SIGKILL, power loss) left its hidden .<name>.<pid>.tmp files beside the outputs
    for good. The next run writing those outputs removes those untouched for 10 minutes whose process is gone, and
    only those (a review: a process id alone says nothing of a writer in another container or on another host)."""
    images = sorted((trained / "data" / "imgs").iterdir())[:2]
    long_name = tmp_path / ("b" * 245 + images[0].suffix)  # its temporary name is hashed to fit 255 bytes
    shutil.copy(images[0], long_name)
    images.append(long_name)
    out = tmp_path / "out"
    out.mkdir()
    gone = 2**22 + 1  # above Linux's largest process id: no process has it
    with mock.patch("os.getpid", return_value=gone):  # as that process named it (a review: a shorter pid than
        long_temporary = temporary_path(out / f"{long_name.stem}.png").name  # ours was not found)
    dead = [out / f".{images[0].stem}.png.{gone}.tmp", out / f".{images[1].stem}_overlay.png.{gone}.tmp",
            out / f".predictions.csv.{gone}.tmp", out / long_temporary]
    kept = [out / f".{images[1].stem}.png.{os.getppid()}.tmp",  # its process is still there: writing it still
            out / f".notes.txt.{gone}.tmp", out / f".{images[0].stem}_probs.npy.{gone}.tmp",  # not this run's
            out / f".{images[0].stem}_overlay.png.{gone}.tmp"]  # touched under 10 minutes ago
    for path in dead + kept:
        path.write_bytes(b"half")
        if path != kept[-1]:
            os.utime(path, (time.time() - 601, time.time() - 601))
    refused = run("predict.py", "-m", "checkpoints/best.pth", "-i", *images, "-o", out, "--overlay", "--csv",
                  "--workers", "0", cwd=trained, check=False)  # the long name's overlay: over 255 bytes
    assert refused.returncode == 2 and all(path.exists() for path in dead + kept)  # nothing removed before
    kept.append(dead.pop(1))  # no overlays from here on
    result = run("predict.py", "-m", "checkpoints/best.pth", "-i", *images, "-o", out, "--csv", "--workers", "0",
                 cwd=trained)
    assert f"note: removed 3 unfinished files left by a predict.py killed while writing (e.g. {out}/." in result.stderr
    assert not any(path.exists() for path in dead) and all(path.exists() for path in kept)
    assert len([path for path in out.iterdir() if not path.name.startswith(".")]) == 4  # 3 masks and the CSV


def test_predict_never_replaces_a_file_it_did_not_write_without_overwrite(trained: Path, tmp_path: Path) -> None:
    """Found by a review: `-o data/masks/` (the image folder's twin) replaced the ground-truth masks, and
    `-o photo.png` a photo, without a word. predict.py's own earlier outputs (marked) are still replaced."""
    images = sorted((trained / "data" / "imgs").iterdir())[:2]
    truth = tmp_path / "masks"
    truth.mkdir()
    for image in images:
        Image.fromarray(np.full((32, 48), 255, np.uint8)).save(truth / f"{image.stem}.png")
    before = {path.name: path.read_bytes() for path in truth.iterdir()}
    flags = ["-m", "checkpoints/best.pth", "--workers", "0", "--overlay"]
    refused = run("predict.py", *flags, "-i", *images, "-o", truth, cwd=trained, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {truth / images[0].stem}.png exists without the mark of predict.py's outputs (and 1 other file at "
        "output names): a ground-truth mask, an image, or an output of a version before 2026-11-29? Predict into "
        "another folder, or add --overwrite to replace them (as for .bmp masks, which have no room for the mark)")
    assert {path.name: path.read_bytes() for path in truth.iterdir()} == before  # nothing written, overlays neither
    run("predict.py", *flags, "-i", *images, "-o", tmp_path / "out", cwd=trained)
    run("predict.py", *flags, "-i", *images, "-o", tmp_path / "out", cwd=trained)  # its own: replaced
    assert all(written_by_predict(path) for path in (tmp_path / "out").iterdir())
    assert len(list((tmp_path / "out").iterdir())) == 4
    run("predict.py", *flags, "-i", *images, "-o", truth, "--overwrite", cwd=trained)
    assert {path.name: path.read_bytes() for path in truth.iterdir() if path.name in before} != before
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")
    refused = run("predict.py", *flags, "-i", images[0], "-o", tmp_path / "photo.png", cwd=trained, check=False)
    assert refused.returncode == 2 and "photo.png exists without the mark of predict.py's outputs:" in refused.stderr
    beside = tmp_path / "beside"  # <name>_OUT.png beside the input is predict.py's by its name (older versions')
    beside.mkdir()
    shutil.copy(images[0], beside / images[0].name)
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(beside / f"{images[0].stem}_OUT.png")
    run("predict.py", *flags, "-i", beside / images[0].name, cwd=trained)
    assert written_by_predict(beside / f"{images[0].stem}_OUT.png")
    # found by a review of untrusted files: a downloaded folder's x_OUT.png linking to a file elsewhere had that
    # file replaced (outputs are written through links), the name taken for predict.py's
    (tmp_path / "precious.txt").write_text("precious")
    (beside / f"{images[0].stem}_OUT.png").unlink()
    (beside / f"{images[0].stem}_OUT.png").symlink_to(tmp_path / "precious.txt")
    refused = run("predict.py", *flags, "-i", beside / images[0].name, cwd=trained, check=False)
    assert refused.returncode == 2 and "_OUT.png exists without the mark of predict.py's outputs" in refused.stderr
    assert (tmp_path / "precious.txt").read_text() == "precious"


def test_skip_existing_finishes_a_run_whose_outputs_carry_no_mark(trained: Path, tmp_path: Path) -> None:
    """Found by the code review: the outputs --skip-existing leaves alone were checked for the mark too, so a run
    of an earlier version (or of .bmp masks) could not be finished without --overwrite."""
    images = sorted((trained / "data" / "imgs").iterdir())[:3]
    targets = [tmp_path / f"{image.stem}.bmp" for image in images]
    flags = ["-m", "checkpoints/best.pth", "--workers", "0", "-i", *images, "-o", *targets]
    run("predict.py", *flags, cwd=trained)
    targets[1].unlink()
    kept = {target: target.stat().st_mtime_ns for target in (targets[0], targets[2])}
    result = run("predict.py", *flags, "--skip-existing", cwd=trained)
    assert "2 of 3 images already have their outputs; 1 to predict" in result.stdout
    assert targets[1].exists() and all(target.stat().st_mtime_ns == when for target, when in kept.items())  # untouched
    refused = run("predict.py", *flags, cwd=trained, check=False)  # a plain run would replace them: said first
    assert refused.returncode == 2 and "exists without the mark of predict.py's outputs (and 2 other files" \
        in refused.stderr


def test_skip_existing_predicts_again_a_mask_of_another_image_of_that_name(trained: Path, tmp_path: Path) -> None:
    """Found by a concurrency review: two runs on different images of the same names into one folder; the second's
    --skip-existing took the first's masks, of another size, for its own, and --csv gave their figures."""
    images = sorted((trained / "data" / "imgs").iterdir())[:2]
    (tmp_path / "other").mkdir()
    for image in images:  # the same names, another size
        Image.open(image).resize((24, 16)).save(tmp_path / "other" / image.name)
    run("predict.py", "-m", "checkpoints/best.pth", "--workers", "0", "-i", *images, "-o", tmp_path / "out",
        cwd=trained)
    result = run("predict.py", "-m", "checkpoints/best.pth", "--workers", "0", "-i", tmp_path / "other", "-o",
                 tmp_path / "out", "--skip-existing", "--csv", cwd=trained)
    assert "--skip-existing: 0 of 2 images already have their outputs; 2 to predict" in result.stdout
    assert all(Image.open(tmp_path / "out" / f"{image.stem}.png").size == (24, 16) for image in images)
    with open(tmp_path / "out" / "predictions.csv", newline="") as file:
        assert [(row["width"], row["height"]) for row in csv.DictReader(file)] == [("24", "16")] * 2


def test_skip_existing_says_when_predictions_csv_loses_rows_of_other_images(trained: Path, tmp_path: Path) -> None:
    """Found by a review: a --skip-existing run on other images into the same folder replaced predictions.csv's
    rows of the first run without the note a plain run gives."""
    images = sorted((trained / "data" / "imgs").iterdir())
    flags = ["-m", "checkpoints/best.pth", "--workers", "0", "-o", tmp_path / "ab", "--csv"]
    run("predict.py", *flags, "-i", *images[:3], cwd=trained)
    finished = run("predict.py", *flags, "-i", *images[:3], "--skip-existing", cwd=trained)
    assert "is replaced" not in finished.stderr  # the same inputs: every row written again
    relative = run("predict.py", *flags, "-i", *[image.relative_to(trained) for image in images[:3]],
                   "--skip-existing", cwd=trained)
    assert "is replaced" not in relative.stderr  # the same files, named another way (found by the code review)
    names = [str(image.relative_to(trained)) for image in images[:3]]  # paths as typed, from another folder next
    run("predict.py", "-m", "checkpoints/best.pth", "--workers", "0", "-o", "rel/", "--csv", "-i", *names,
        cwd=trained)
    (trained / "elsewhere").mkdir(exist_ok=True)
    moved = run("predict.py", "-m", "../checkpoints/best.pth", "--workers", "0", "-o", "../rel/", "--csv",
                "--skip-existing", "-i", *[f"../{name}" for name in names], cwd=trained / "elsewhere")
    assert "3 of 3 images already have their outputs" in moved.stdout
    assert "is replaced" not in moved.stderr  # nor from another folder (found by a review)
    for folder in ("rel", "elsewhere"):  # the shared trained folder as the other tests expect it
        shutil.rmtree(trained / folder)
    for folder in ("a", "b"):  # found by the code review: x_OUT.png of two folders are two masks, two rows
        (tmp_path / folder).mkdir()
        shutil.copy(images[0], tmp_path / folder / f"x{images[0].suffix}")
    beside = ["-m", "checkpoints/best.pth", "--workers", "0", "--csv", str(tmp_path / "two.csv")]
    run("predict.py", *beside, "-i", tmp_path / "a", tmp_path / "b", cwd=trained)
    one = run("predict.py", *beside, "-i", tmp_path / "a", "--skip-existing", cwd=trained)
    assert f"note: {tmp_path / 'two.csv'} is replaced: it held 1 row of images not among this run's inputs" \
        in one.stderr
    # found by the last code review: a folder through a link, a ".." in a typed path, a --no-save run's rows
    (tmp_path / "link").symlink_to(tmp_path / "a")
    for typed, extra in ((tmp_path / "link" / f"x{images[0].suffix}", []),
                         (tmp_path / "b" / ".." / "a" / f"x{images[0].suffix}", []),
                         (tmp_path / "a" / f"x{images[0].suffix}", ["--no-save"])):
        once = [*beside[:-1], str(tmp_path / "once.csv"), "-i", typed, *extra]
        run("predict.py", *once, "--overwrite", cwd=trained)
        again = run("predict.py", *once[:-len(extra) or None], "--skip-existing", cwd=trained)
        assert "is replaced" not in again.stderr, (typed, extra)
    other = run("predict.py", *flags, "-i", *images[3:5], "--skip-existing", cwd=trained)
    assert (f"note: {tmp_path / 'ab' / 'predictions.csv'} is replaced: it held 3 rows of images not among this "
            "run's inputs, and this one lists only its own inputs (another --csv name keeps both)") in other.stderr
    assert len((tmp_path / "ab" / "predictions.csv").read_text().splitlines()) == 3


def test_skip_existing_needs_the_masks_saved(trained: Path) -> None:
    result = run("predict.py", "-m", "checkpoints/last.pth", "-i", "data/imgs", "--no-save", "--skip-existing",
                 cwd=trained, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --skip-existing leaves out the inputs whose masks exist: it needs the "
                                     "masks written, leave out --no-save")


def test_predict_folder_reports_unreadable_and_too_small_files_and_predicts_the_rest(trained: Path,
                                                                                     tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for image in sorted((trained / "data" / "imgs").iterdir())[:3]:
        shutil.copy(image, folder / image.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((12, 40, 3), np.uint8)).save(folder / "thin.png")  # fewer rows than four halvings need
    result = run("predict.py", "-m", trained / "checkpoints" / "last.pth", "-i", folder, "-o", tmp_path / "out",
                 "--workers", "1", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "warning: skipped cannot read" in result.stderr and "broken.jpg" in result.stderr
    assert "thin.png is 40x12: the U-Net needs at least 16 px a side" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("error: 2 of 5 images could not be predicted (listed above as "
                                                      "skipped); the others were predicted")
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    result = run("predict.py", "-m", trained / "checkpoints" / "last.pth", "-i", folder / "broken.jpg", "-o",
                 tmp_path / "out", cwd=tmp_path, check=False)
    assert result.stderr.strip().splitlines()[-1] == ("error: 1 of 1 image could not be predicted (listed above as "
                                                      "skipped)")  # there are no others


def test_predict_names_the_first_unreadable_inputs_not_thousands(trained: Path, tmp_path: Path) -> None:
    """Found by a scale review: a folder of 20,000 images, 5,000 of them empty, printed 5,003 lines (535 KB)."""
    import predict

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted((trained / "data" / "imgs").iterdir())[0], folder / "good.jpg")
    for index in range(predict.SKIPPED_LISTED + 3):
        (folder / f"empty{index:02d}.png").write_bytes(b"")
    result = run("predict.py", "-m", trained / "checkpoints" / "last.pth", "-i", folder, "-o", tmp_path / "out",
                 "--workers", "0", cwd=tmp_path, check=False)
    assert result.returncode == 1 and result.stderr.count("warning: skipped cannot read") == predict.SKIPPED_LISTED
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {predict.SKIPPED_LISTED + 3} of {predict.SKIPPED_LISTED + 4} images could not be predicted (the first "
        f"{predict.SKIPPED_LISTED} listed above as skipped); the others were predicted")


def test_evaluate_cli_prints_scores_and_writes_rows(trained: Path) -> None:
    result = run("evaluate.py", "-m", "checkpoints/best.pth", "-o", "scores.json", "--workers", "0", cwd=trained,
                 real_process=True)
    assert "mean foreground Dice" in result.stdout
    assert result.stdout.splitlines()[1].split() == ["class", "mask", "value", "Dice", "IoU", "pooled", "Dice",
                                                     "pooled", "IoU", "in", "images"]
    rows = json.loads((trained / "scores.json").read_text())
    assert len(rows) == 10
    assert all(0 <= row["dice"] <= 1 and 0 <= row["iou"] <= row["dice"] + 1e-9 for row in rows)
    mean = float(result.stdout.split("mean foreground Dice ")[1].split()[0])
    assert mean == pytest.approx(sum(row["dice"] for row in rows) / 10, abs=1e-4)


def test_evaluate_scores_the_readable_pairs_and_names_the_others(trained: Path, tmp_path: Path) -> None:
    """Found by a scale review: the first broken file of 20,000 stopped evaluate.py after it had scored all the
    others, and nothing was written; each rerun met the next broken file."""
    for kind in ("imgs", "masks"):
        shutil.copytree(trained / "data" / kind, tmp_path / kind)
    broken = sorted((tmp_path / "imgs").iterdir())[:2]
    for image in broken:
        image.write_bytes(b"")  # empty after the copy: no data check runs in evaluate.py
    result = run("evaluate.py", "-m", trained / "checkpoints" / "best.pth", "--imgs", tmp_path / "imgs", "--masks",
                 tmp_path / "masks", "-o", tmp_path / "scores.csv", "--workers", "0", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert all(f"warning: not scored: cannot read {image}: the file is empty" in result.stderr for image in broken)
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: 2 of 10 pairs could not be scored (listed above as not scored, e.g. cannot read {broken[0]}")
    assert "8 images, model" in result.stdout
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 1 + 8
    import evaluate  # from a program: the others' scores, and why the two were not scored (found by a code review)

    scores = evaluate.main(evaluate.get_args_parser().parse_args([
        "-m", str(trained / "checkpoints" / "best.pth"), "--imgs", str(tmp_path / "imgs"), "--masks",
        str(tmp_path / "masks"), "-o", str(tmp_path / "again.csv"), "--workers", "0"]))
    assert scores["images"] == 8 and len(scores["skipped"]) == 2 and "the file is empty" in scores["skipped"][0]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_evaluate_keeps_its_scores_when_its_printed_output_cannot_be_written(trained: Path) -> None:
    """Found by a review: with stdout on a full disk, the table's print failed first, and the scores file was
    never written: the whole evaluation was lost."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "-m", "checkpoints/best.pth", "-o",
                                 "kept.csv", "--workers", "0"], cwd=trained, stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: cannot write to the standard output (No space left")
    try:
        assert len((trained / "kept.csv").read_text().splitlines()) == 11  # the header and 10 images
    finally:
        (trained / "kept.csv").unlink()  # the fixture is shared


def test_evaluate_replaces_only_its_own_json_and_refuses_a_link_to_nowhere_first(trained: Path) -> None:
    """Found by a review: any JSON list that held "dice" somewhere (a hand-made summary) was replaced as if it were
    an earlier evaluation's; a link to a missing folder failed only after the whole evaluation."""
    flags = ["-m", "checkpoints/best.pth", "--workers", "0"]
    summary = trained / "summary.json"
    summary.write_text('[{"run": "baseline", "dice": 0.91, "notes": "hand-made"}]')
    link = trained / "scores_link.csv"
    link.symlink_to(trained / "missing_folder" / "scores.csv")
    try:
        result = run("evaluate.py", *flags, "-o", summary, cwd=trained, check=False)
        assert result.returncode == 2 and "summary.json exists and was not written by this tool" in result.stderr
        assert summary.read_text().startswith('[{"run": "baseline"')
        result = run("evaluate.py", *flags, "-o", link, cwd=trained, check=False)
        assert result.returncode == 2 and "evaluation:" not in result.stderr  # before the work
        assert result.stderr.strip().endswith(f"scores_link.csv is a link to {trained / 'missing_folder'}/scores.csv, "
                                              "whose folder does not exist: mend the link, or give another file name")
        own = trained / "own.json"
        run("evaluate.py", *flags, "-o", own, cwd=trained)
        own.write_text(own.read_text().replace('"dice": ', '"dice":  ', 1))  # still its own layout
        run("evaluate.py", *flags, "-o", own, cwd=trained)  # an earlier evaluation's: replaced
        assert len(json.loads(own.read_text())) == 10 and '"dice":  ' not in own.read_text()
    finally:
        for path in (summary, link, trained / "own.json"):
            path.unlink(missing_ok=True)  # the fixture is shared


def test_masks_that_are_all_ignored_are_no_score_in_evaluate_and_in_validation(tmp_path: Path) -> None:
    """Found by a review: such masks scored a free 1 each; then, with all of them left out, evaluate.py printed a
    mean Dice of 0.0000 and training dropped validation (and best.pth) without a word."""
    write_carvana_like(tmp_path / "data", 8)
    masks = sorted((tmp_path / "data" / "masks").iterdir())
    for mask in masks:  # a 255 border: --ignore-index 255 has something to leave out everywhere
        values = np.asarray(Image.open(mask)).copy()
        values[:2] = 255
        mask.unlink()
        Image.fromarray(values).save(mask.with_suffix(".png"))
    masks = sorted((tmp_path / "data" / "masks").iterdir())
    for mask in masks[:2]:
        Image.fromarray(np.full((32, 48), 255, np.uint8)).save(mask)
    flags = ["--epochs", "1", "--validation", "25", "--ignore-index", "255", "--seed", "0", *TRAIN_FLAGS]
    result = run("train.py", *flags, cwd=tmp_path)
    held_out = load_checkpoint(tmp_path / "checkpoints" / "last.pth")["validation_images"]
    void = [name for name in held_out if any(mask.name.startswith(name + "_") for mask in masks[:2])]
    assert len(held_out) == 2 and len(void) == 1  # seed 0: one of the two, scored without the other
    assert (f"note: 1 validation mask holds only pixels of --ignore-index 255 (e.g. {void[0]}): nothing in them to "
            "score, left out of the validation Dice") in result.stderr
    model = "checkpoints/last.pth"
    shutil.copytree(tmp_path / "data", tmp_path / "void")
    for mask in (tmp_path / "void" / "masks").glob("*.png"):
        Image.fromarray(np.full((32, 48), 255, np.uint8)).save(mask)
    refused = run("evaluate.py", "-m", model, "--imgs", "void/imgs", "--masks", "void/masks", "-o", "void.csv",
                  cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "mean foreground Dice" not in refused.stdout
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "error: every mask in void/masks holds only pixels of --ignore-index 255")
    partly = run("evaluate.py", "-m", model, "--imgs", "data/imgs", "--masks", "data/masks", "-o", "some.csv",
                 cwd=tmp_path)
    assert "note: 2 masks of the images hold only pixels of --ignore-index 255" in partly.stderr
    assert len((tmp_path / "some.csv").read_text().splitlines()) == 1 + 6  # the header and the 6 scored


def test_the_scripts_run_float32_under_a_notebook_s_float64_default_and_give_it_back(tmp_path: Path) -> None:
    """Found by a notebook review: after torch.set_default_dtype(torch.float64), every script's main() failed deep
    inside torch ("Input type (float) and bias type (double) should be the same")."""
    write_carvana_like(tmp_path / "data", 6)
    torch.set_default_dtype(torch.float64)
    try:
        run("train.py", "--epochs", "1", "--validation", "34", *TRAIN_FLAGS, cwd=tmp_path)
        image = sorted((tmp_path / "data" / "imgs").iterdir())[0]
        run("predict.py", "-m", "checkpoints/last.pth", "-i", image, "-o", "out.png", cwd=tmp_path)
        run("evaluate.py", "-m", "checkpoints/last.pth", "--workers", "0", cwd=tmp_path)
        run("export.py", "-m", "checkpoints/last.pth", "-o", "unet.pt", cwd=tmp_path)
        assert torch.get_default_dtype() == torch.float64  # the notebook's own, back
    finally:
        torch.set_default_dtype(torch.float32)
    assert (tmp_path / "out.png").is_file() and (tmp_path / "unet.pt").is_file()


def test_fields_a_notebook_sets_by_hand_as_text_are_read_as_the_flags_read_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Noticed in a notebook review: args.checkpoint_dir = "runs/a" after parse_args (a sweep's usual line) ended in
    "AttributeError: 'str' object has no attribute 'mkdir'"; a list flag set to one file name, a number as text,
    alike. They are now read as the flags read them, and a value the flag refuses is one line naming the field."""
    import evaluate
    import export
    import predict
    import train

    write_carvana_like(tmp_path / "data", 6)
    monkeypatch.chdir(tmp_path)
    args = train.get_args_parser().parse_args(["--validation", "34", *TRAIN_FLAGS])
    args.imgs, args.masks, args.checkpoint_dir, args.epochs = "data/imgs", "data/masks", "runs/a", "1"
    train.main(args)
    assert args.checkpoint_dir == Path("runs/a") and args.epochs == 1
    assert load_checkpoint(tmp_path / "runs" / "a" / "last.pth")["epoch"] == 1
    image = sorted((tmp_path / "data" / "imgs").iterdir())[0].name
    args = predict.get_args_parser().parse_args(["-m", "x.pth", "-i", "x.png"])
    args.model, args.input, args.output, args.tile = "runs/a/last.pth", Path("data/imgs", image), "out.png", "64"
    predict.main(args)
    assert args.input == [f"data/imgs/{image}"] and args.tile == 64 and (tmp_path / "out.png").is_file()
    args = export.get_args_parser().parse_args(["-m", "x.pth", "-o", "x.pt"])
    args.model, args.output = "runs/a/last.pth", "unet.pt"
    export.main(args)
    assert (tmp_path / "unet.pt").is_file()
    args = train.get_args_parser().parse_args([])
    args.overwrite = ""  # found by a code review: read as [""], which is true, an earlier run was replaced
    with pytest.raises(UserError, match=r"^args.overwrite = '': --overwrite is a switch, set it to True or False$"):
        train.main(args)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    args = export.get_args_parser().parse_args(["-m", "x.pth", "-o", "x.pt"])
    args.model, args.output = "runs/a/last.pth", "~/unet.pt"  # as a shell expands it, not a folder named ~
    export.main(args)
    assert (tmp_path / "home" / "unet.pt").is_file() and not (tmp_path / "~").exists()
    args = evaluate.get_args_parser().parse_args([])
    args.model, args.batch_size = "runs/a/last.pth", "two"
    refused = (r"^args.batch_size = 'two' cannot be read as --batch-size reads it \(invalid literal for int\(\) "
               r"with base 10: 'two'\): set it to what --batch-size takes$")
    with pytest.raises(UserError, match=refused):
        evaluate.main(args)
    # numbers set by hand are read as their text is (a review: 7.0, 2.5 and True ran, or ended in a TypeError)
    for value, message in ((7.0, r"^--epochs 7.0: give a whole number of at least 1, or auto$"),
                           (True, r"^--epochs True: give a whole number of at least 1, or auto$"),
                           (None, r"^args.epochs = None: set it to what --epochs takes \(default 'auto'\)$")):
        args = train.get_args_parser().parse_args([])
        args.epochs = value
        with pytest.raises(UserError, match=message):
            train.main(args)
    args = train.get_args_parser().parse_args(["--validation", "34", *TRAIN_FLAGS, "--checkpoint-dir", "runs/b"])
    args.epochs, args.learning_rate = np.int64(1), np.float32(0.01)  # numpy's numbers, as a sweep makes them
    train.main(args)
    assert type(args.epochs) is int and load_checkpoint(tmp_path / "runs" / "b" / "last.pth")["epoch"] == 1


def test_classes_1_trains_with_sigmoid_and_predicts_binary(tmp_path: Path) -> None:
    write_carvana_like(tmp_path / "data", 6)
    run("train.py", "--classes", "1", "--epochs", "1", "--validation", "20", *TRAIN_FLAGS, cwd=tmp_path)
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "best.pth")
    assert checkpoint["model_args"]["n_classes"] == 1
    image = sorted((tmp_path / "data" / "imgs").iterdir())[0]
    run("predict.py", "-m", "checkpoints/best.pth", "-i", image, "-o", "one.png", "-t", "0.5", cwd=tmp_path)
    assert set(np.unique(np.asarray(Image.open(tmp_path / "one.png")))) <= {0, 255}


def test_epochs_auto_trains_a_small_set_enough_steps_and_a_resume_keeps_the_number(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Found by a review: 16-20-image sets trained 5 epochs of 4-5 steps learnt nothing. --epochs auto (the
    default) trains at least AUTO_EPOCHS_MIN_STEPS steps (12 here instead of 500: the rule, not its number)."""
    import train

    def train_here(*flags: str) -> tuple[str, str]:
        train.main(train.get_args_parser().parse_args(["--validation", "0", *TRAIN_FLAGS, "--batch-size", "2",
                                                       *flags]))
        return capsys.readouterr()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "AUTO_EPOCHS_MIN_STEPS", 12)
    write_carvana_like(tmp_path / "data", 4)  # batches of 2: 2 steps an epoch
    assert ("note: --epochs auto: 6 epochs of 2 steps, 12 steps in all (5 epochs would make 10, too few to learn "
            "from; -e N sets another number)") in train_here().err
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert checkpoint["epoch"] == 6 and checkpoint["step"] == 12 and checkpoint["args"]["epochs"] == 6
    assert checkpoint["scheduler"]["T_max"] == 12  # the cosine spans the steps chosen

    # the number is the run's: a resume goes on with it, not with a new choice for what the folder holds now
    write_carvana_like(tmp_path / "more", 8, seed=1)  # 4 more images, 4 steps an epoch: auto would say 5
    for kind, pattern in (("imgs", "*0000[4-7]_*.jpg"), ("masks", "*0000[4-7]_*.gif")):
        for path in (tmp_path / "more" / kind).glob(pattern):
            shutil.move(path, tmp_path / "data" / kind / path.name)
    assert "has already trained 6 epochs of --epochs 6: nothing left to do" in train_here("--resume", "auto").out
    # a new run on a set large enough for 5 epochs trains 5, without a note
    assert "--epochs auto" not in train_here("--checkpoint-dir", "five").err
    assert load_checkpoint(tmp_path / "five" / "last.pth")["epoch"] == 5

    assert train.auto_epochs(1) == 12 and train.auto_epochs(100) == 5
    result = run("train.py", "--epochs", "abc", cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: --epochs abc: give a whole number of at least 1, or auto")
    result = run("train.py", "--epochs", "0", cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --epochs must be auto or a whole number of at least 1, got 0"]


def test_short_epochs_save_at_the_first_best_and_last_epochs_and_once_the_last_save_is_old(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Found after --epochs auto: a small set's 100+ epochs of a second or two each wrote last.pth (~370 MB at the
    classic width). An epoch's end saves only where the last save is EPOCH_SAVE_GAP_S old, besides a run's first
    epoch, its best ones, --keep-epochs and the last (the gap is patched to never and to always: the rule)."""
    import train
    from utils import checkpoint as checkpoint_module
    from utils.checkpoint import CheckpointWriter

    saved: list[tuple[int, list[str]]] = []  # (epoch, copies) of each save
    real_save = CheckpointWriter.save

    def recording_save(self: CheckpointWriter, path: Path, model: torch.nn.Module, mask_values: list,
                       copies: list[Path] = (), **extra: object) -> None:
        saved.append((extra["epoch"], sorted(Path(copy).name for copy in copies)))
        real_save(self, path, model, mask_values, copies, **extra)

    def train_here(gap: float, *flags: str) -> list[tuple[int, list[str]]]:
        saved.clear()
        monkeypatch.setattr(train, "EPOCH_SAVE_GAP_S", gap)
        train.main(train.get_args_parser().parse_args([*TRAIN_FLAGS, "--batch-size", "2", *flags]))
        capsys.readouterr()
        return list(saved)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(CheckpointWriter, "save", recording_save)
    write_carvana_like(tmp_path / "data", 6)
    never, always = float("inf"), 0.0
    assert train_here(never, "-e", "4", "--validation", "0", "--checkpoint-dir", "plain") == [(1, []), (4, [])]
    assert load_checkpoint(tmp_path / "plain" / "last.pth")["epoch"] == 4
    assert train_here(never, "-e", "3", "--validation", "0", "--keep-epochs", "--checkpoint-dir", "kept") == [
        (epoch, [f"epoch_{epoch}.pth"]) for epoch in (1, 2, 3)]

    # a save that failed is tried again at the next epoch's end
    real_write = checkpoint_module.write_checkpoint
    failures = iter([True])

    def full_disk_once(path: Path, payload: dict) -> None:
        if next(failures, False):
            raise UserError(f"cannot write checkpoint {path} (No space left on device)")
        real_write(path, payload)

    monkeypatch.setattr(checkpoint_module, "write_checkpoint", full_disk_once)
    assert train_here(never, "-e", "3", "--validation", "0", "--checkpoint-dir", "full") == [(1, []), (2, []), (3, [])]
    monkeypatch.setattr(checkpoint_module, "write_checkpoint", real_write)

    # with validation: each epoch that raised the best Dice saved (best.pth), whatever the gap (Dice scripted)
    scripted = iter([0.5, 0.7, 0.6, 0.8, 0.1])
    real_evaluate = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: {**real_evaluate(*args, **kwargs),
                                                                   "dice": next(scripted)})
    assert train_here(never, "-e", "5", "--validation", "34", "--checkpoint-dir", "val") == [
        (1, ["best.pth"]), (2, ["best.pth"]), (4, ["best.pth"]), (5, [])]
    assert load_checkpoint(tmp_path / "val" / "best.pth")["epoch"] == 4

    # killed in epoch 4 (last saved at epoch 1): a resume goes on from epoch 2, metrics.csv drops the lost epochs'
    # rows, and the run ends where one never stopped does
    class Killed(BaseException):
        pass

    real_epoch = train.train_one_epoch

    def killed_in_epoch_4(*args: object, **kwargs: object) -> dict:
        if inspect.signature(real_epoch).bind(*args, **kwargs).arguments["epoch"] == 4:
            raise Killed
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", killed_in_epoch_4)
    with pytest.raises(Killed):
        train_here(never, "-e", "4", "--validation", "0", "--checkpoint-dir", "killed")
    assert saved == [(1, [])] and load_checkpoint(tmp_path / "killed" / "last.pth")["epoch"] == 1
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    assert train_here(always, "--resume", "auto", "--checkpoint-dir", "killed") == [(2, []), (3, []), (4, [])]
    with open(tmp_path / "killed" / "metrics.csv", newline="") as file:
        assert [int(row["epoch"]) for row in csv.DictReader(file)] == [1, 2, 3, 4]
    resumed, straight = (load_checkpoint(tmp_path / run / "last.pth") for run in ("killed", "plain"))
    assert resumed["step"] == straight["step"] == 12
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)


def test_resume_continues_step_count_and_matches_uninterrupted_run(tmp_path: Path) -> None:
    write_carvana_like(tmp_path / "data", 6)
    flags = ["--epochs", "2", "--validation", "0", *TRAIN_FLAGS]
    run("train.py", "--checkpoint-dir", "straight", "--keep-epochs", *flags, cwd=tmp_path)
    (tmp_path / "split").mkdir()  # a run of the same plan that stopped after epoch 1
    shutil.copy(tmp_path / "straight" / "epoch_1.pth", tmp_path / "split" / "last.pth")
    # --epochs left out: the run's own 2, not the default auto (found by a review, when the default was 5)
    result = run("train.py", "--checkpoint-dir", "split", "--resume", "auto", *flags[2:], cwd=tmp_path)
    assert "resuming" in result.stdout and "epoch 2" in result.stdout
    assert "split/last.pth goes on with its own --epochs 2 (give --epochs to train longer or shorter)" in result.stderr
    straight = load_checkpoint(tmp_path / "straight" / "last.pth")
    resumed = load_checkpoint(tmp_path / "split" / "last.pth")
    assert resumed["epoch"] == 2 and resumed["step"] == straight["step"] == 4
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)

    # resumed once more with nothing left to train: said so, and nothing written again
    files = {name: (tmp_path / "split" / name).read_bytes() for name in ("last.pth", "metrics.csv")}
    result = run("train.py", "--checkpoint-dir", "split", "--resume", "auto", *flags, cwd=tmp_path)
    assert "has already trained 2 epochs of --epochs 2: nothing left to do" in result.stdout
    assert "checkpoints in" not in result.stdout
    assert files == {name: (tmp_path / "split" / name).read_bytes() for name in files}

    # going back to epoch 1 of the run kept with --keep-epochs: its epoch_2.pth is the only copy of the epoch the new
    # branch abandons, and --overwrite (consent to replace last.pth) does not cover it (found by a review)
    kept = (tmp_path / "straight" / "epoch_2.pth").read_bytes()
    back = ["--checkpoint-dir", "straight", "--resume", "straight/epoch_1.pth", "--overwrite", *flags[2:]]
    result = run("train.py", *back, cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: straight/epoch_1.pth is at epoch 1, and straight holds epoch_2.pth of later epochs, which "
        "--keep-epochs would replace as this run reaches them: move them elsewhere to keep them, pass "
        "--no-keep-epochs, or give --checkpoint-dir another folder")
    run("train.py", *back, "--no-keep-epochs", cwd=tmp_path)
    assert load_checkpoint(tmp_path / "straight" / "last.pth")["epoch"] == 2
    assert (tmp_path / "straight" / "epoch_2.pth").read_bytes() == kept


def test_tiny_datasets_do_not_crash(tmp_path: Path) -> None:
    write_carvana_like(tmp_path / "data", 2)
    # a 1-image validation split and a batch larger than the training set
    run("train.py", "--epochs", "1", "--validation", "10", *TRAIN_FLAGS, "--batch-size", "8", cwd=tmp_path)
    assert (tmp_path / "checkpoints" / "best.pth").exists()
    # no validation at all: last.pth only
    run("train.py", "--epochs", "1", "--validation", "0", *TRAIN_FLAGS, "--checkpoint-dir", "noval", cwd=tmp_path)
    assert {p.name for p in (tmp_path / "noval").glob("*.pth")} == {"last.pth"}


@pytest.mark.parametrize(("mask_values", "written"), [([0, 1], 255), ([0, 7], 7)])
def test_reference_state_dict_with_mask_values_loads_in_predict(tmp_path: Path, mask_values: list[int],
                                                                written: int) -> None:
    """Class 1 everywhere (the output layer's bias decides): written as its mask value (0/1 masks as 0/255)."""
    torch.manual_seed(0)
    state = UNet(3, 2, bilinear=True).state_dict()
    state["outc.conv.weight"].zero_()
    state["outc.conv.bias"].copy_(torch.tensor([-10.0, 10.0]))
    state["mask_values"] = mask_values
    torch.save(state, tmp_path / "MODEL.pth")  # what reference users already have
    Image.fromarray(np.full((40, 56, 3), 128, np.uint8)).save(tmp_path / "img.jpg")
    run("predict.py", "-i", "img.jpg", "-o", "out.png", "--scale", "0.5", cwd=tmp_path)  # default -m MODEL.pth
    mask = np.asarray(Image.open(tmp_path / "out.png"))
    assert mask.shape == (40, 56) and (mask == written).all()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--imgs", "nowhere"], "nowhere"),
        (["--classes", "2", "--masks", "data/masks3"], "--classes 3"),
        (["--scale", "0"], "--scale"),
        (["--resume", "nothere.pth"], "checkpoint nothere.pth does not exist: give --resume the path of one"),
        (["--binarize", "300"], "every mask in data/masks holds the one value 0 with --binarize 300: there is nothing "
                                "to tell apart; check the mask folder, --binarize"),
        (["--class-weights", "0,0"], "at least one above 0, got '0,0'"),
        (["--class-weights", "nan,1"], "at least one above 0, got 'nan,1'"),
        (["--load", "nothere.pth"], "give --load the path of one"),
        (["--weight-decay", "-1"], "--weight-decay must be 0 (none) or more, e.g. 1e-4, got -1"),
        (["--weight-decay", "nan"], "--weight-decay must be 0 (none) or more"),
        (["--learning-rate", "inf"], "--learning-rate must be above 0, e.g. 1e-4, got inf"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(tmp_path: Path, args: list[str], needle: str) -> None:
    write_carvana_like(tmp_path / "data", 2)
    three_valued = tmp_path / "data" / "masks3"
    three_valued.mkdir()
    for mask in (tmp_path / "data" / "masks").iterdir():
        values = np.zeros((32, 48), np.uint8)
        values[:, :10], values[:, 10:20] = 2, 1
        Image.fromarray(values).save(three_valued / f"{mask.stem}.png")
    result = run("train.py", "--epochs", "1", *TRAIN_FLAGS, *args, cwd=tmp_path, check=False)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert error_lines[-1].startswith("error: ") and needle in error_lines[-1]
    assert "Traceback" not in result.stderr


def test_predict_refuses_checkpoint_with_code_payload(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    torch.save({"model": Payload(marker)}, tmp_path / "evil.pth")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    result = run("predict.py", "-m", "evil.pth", "-i", "img.png", cwd=tmp_path, check=False, real_process=True)
    assert result.returncode == 2 and "refusing to load" in result.stderr
    assert not marker.exists()


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_wandb_offline_run_is_written_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also when train.py is started by a process that runs wandb itself (a notebook; here this test): the child
    inherits WANDB_SERVICE and logs through the parent's service, which must still write into the child's run."""
    from utils.run_log import RunLog

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_SERVICE", os.environ.get("WANDB_SERVICE", ""))  # put back as it was afterwards
    (tmp_path / "parent").mkdir()
    monkeypatch.chdir(tmp_path / "parent")  # the service's own directory, not the one train.py runs in
    hook = sys.excepthook
    RunLog(Path("."), {}, "offline").close()  # this process now runs a wandb service
    assert os.environ["WANDB_SERVICE"]
    assert sys.excepthook is hook  # wandb's own is not left behind (a notebook calling train.main keeps its own)
    write_carvana_like(tmp_path / "data", 3)
    flags = [flag if flag != "disabled" else "offline" for flag in TRAIN_FLAGS]
    result = run("train.py", "--epochs", "1", "--validation", "34", *flags, cwd=tmp_path, real_process=True)
    assert "warning: wandb" not in result.stderr, result.stderr  # started, logged images and histograms, finished
    runs = list((tmp_path / "checkpoints" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_wandb_with_names_that_are_not_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    """Found by a review: a data folder named in Latin-1 bytes turned wandb off, after some 80 lines of logging
    tracebacks. The config is now shown with U+FFFD; a run folder wandb cannot name files in is said in one line."""
    from utils.run_log import RunLog

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_SERVICE", os.environ.get("WANDB_SERVICE", ""))  # put back as it was afterwards
    latin = os.fsdecode(b"caf\xe9")
    for folder in ("run", latin):
        (tmp_path / folder).mkdir()  # as train.py makes it
    log = RunLog(tmp_path / "run", {"imgs": str(tmp_path / latin / "imgs")}, "offline")
    assert log.wandb_run is not None and log.wandb_run.config["imgs"].endswith("caf\ufffd/imgs")
    log.close()
    assert "warning" not in capsys.readouterr().err
    log = RunLog(tmp_path / latin, {}, "offline")
    assert log.wandb_run is None
    log.close()
    err = capsys.readouterr().err
    assert err.strip() == (f"warning: wandb cannot write in {tmp_path}/caf\ufffd, whose name is not UTF-8; continuing "
                           "without it (rename the folder to log with wandb)"), err


def test_wandb_records_how_the_run_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: a run stopped by a signal was recorded in wandb as a clean exit (code 0)."""
    from utils import run_log
    from utils.errors import UserError, exit_code_of

    finished = []

    class Run:  # stands in for wandb's run: a Ctrl-C arrives while it logs the first epoch, or nothing happens
        def __init__(self, interrupted: bool) -> None:
            self.interrupted = interrupted

        def log(self, record: dict) -> None:
            if self.interrupted and "validation Dice" in record:
                raise KeyboardInterrupt

        def finish(self, exit_code: int = 0) -> None:
            finished.append(exit_code)

    write_carvana_like(tmp_path / "data", 3)
    flags = [flag if flag != "disabled" else "offline" for flag in TRAIN_FLAGS]
    for interrupted, code in ((False, 0), (True, 130)):
        monkeypatch.setattr(run_log.RunLog, "_start_wandb", lambda self, config, mode, continues, i=interrupted: Run(i))
        result = run("train.py", "--epochs", "1", "--validation", "34", "--overwrite", *flags, cwd=tmp_path,
                     check=False)
        assert result.returncode == code, result.stderr[-2000:]
    assert finished == [0, 130]
    assert [exit_code_of(error) for error in (None, SystemExit(143), SystemExit("message"), UserError("x"),
                                              RuntimeError("x"))] == [0, 143, 1, 2, 1]


def test_a_wandb_run_whose_logging_failed_is_ended_at_once_without_its_noise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Found by a review: a full disk failed wandb's logging; the run went on without it, but wandb's service then
    printed some 200 lines of tracebacks at the process's exit, after the run's last line."""
    import logging

    from utils import run_log

    ended = []

    class Run:  # wandb's run on a full disk: logging fails, and ending it complains loudly
        def log(self, record: dict) -> None:
            raise OSError(28, "No space left on device")

        def finish(self, exit_code: int = 0) -> None:
            print("Traceback (most recent call last): HandleAbandonedError", file=sys.stderr)
            logging.getLogger("wandb").error("Uncaught exception in run_soon callback")
            ended.append(exit_code)

    monkeypatch.setattr(run_log.RunLog, "_start_wandb", lambda self, config, mode, continues: Run())
    log = run_log.RunLog(tmp_path, {}, "offline")
    log.log_step(1, 1, 0.5, 1e-3)
    log.log_step(2, 1, 0.4, 1e-3)  # no second warning: the run is gone
    log.close(2)
    assert ended == [1]  # ended once, when its logging failed
    assert capsys.readouterr().err.strip().splitlines() == [
        "warning: wandb logging failed ([Errno 28] No space left on device); continuing without it"]
    assert not logging.root.manager.disable  # logging as it was


def test_a_resumed_run_logs_on_into_its_wandb_run_online_and_names_it_offline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wandb run's id travels in the checkpoint. Online, a resume logs on into that run; offline (where wandb
    cannot resume) it is a new run whose config names the earlier one; without wandb the id is kept for later."""
    import wandb

    started = []

    class Run:
        def __init__(self, **kwargs) -> None:  # noqa: ANN003 - wandb.init's keywords
            started.append(kwargs)
            self.id = kwargs["id"] or f"new{len(started)}"

        def log(self, record: dict) -> None:
            pass

        def finish(self, exit_code: int = 0) -> None:
            pass

    monkeypatch.setattr(wandb, "init", Run)  # no server here: what train.py asks of wandb is what is checked
    write_carvana_like(tmp_path / "data", 3)
    flags = [flag for flag in TRAIN_FLAGS if flag not in ("--wandb", "disabled")] + ["--validation", "0"]

    def train_to(epochs: int, mode: str, *resume: str) -> str | None:
        run("train.py", "--epochs", str(epochs), "--wandb", mode, *resume, *flags, cwd=tmp_path)
        return load_checkpoint(tmp_path / "checkpoints" / "last.pth")["wandb_run"]

    assert train_to(1, "online") == "new1" and started[-1]["id"] is None
    assert train_to(2, "online", "--resume", "auto") == "new1"
    assert (started[-1]["id"], started[-1]["resume"]) == ("new1", "allow")  # the same run, logged on into
    assert train_to(3, "offline", "--resume", "auto") == "new3"
    assert started[-1]["id"] is None and started[-1]["config"]["continues_wandb_run"] == "new1"
    assert train_to(4, "disabled", "--resume", "auto") == "new3" and len(started) == 3
    assert train_to(5, "online", "--resume", "auto") == "new3" and started[-1]["id"] == "new3"


def test_wandb_default_mode_follows_wandb_mode_then_a_key_else_offline(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.run_log import default_wandb_mode

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    assert default_wandb_mode() == "offline"  # no key anywhere: never a login prompt
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert default_wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's own setting wins
    assert default_wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert default_wandb_mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / "netrc"  # what `wandb login` writes
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert default_wandb_mode() == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.invalid")  # a server of its own: no key for it
    assert default_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_DISABLED", "true")  # found by a review: ignored, and the images went to wandb's folder
    assert default_wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")  # wandb's own variable first
    assert default_wandb_mode() == "offline"


@pytest.mark.parametrize("value", ["bogus", "Offline", ""])
def test_a_wandb_mode_wandb_refuses_is_said_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             value: str) -> None:
    """Found by a review: WANDB_MODE=bogus let the run train unlogged after a warning of a 'validation error for
    Settings', also with --wandb offline (wandb reads the variable whatever mode it is given)."""
    write_carvana_like(tmp_path / "data", 3)
    monkeypatch.setenv("WANDB_MODE", value)
    flags = [flag for flag in TRAIN_FLAGS if flag not in ("--wandb", "disabled")]
    refused = run("train.py", "--epochs", "1", *flags, "--wandb", "offline", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and not (tmp_path / "checkpoints").exists()
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: the environment variable WANDB_MODE is {value!r}, which wandb refuses: set it to one of online, "
        "offline, disabled, or unset it (--wandb chooses the mode too)")
    run("train.py", "--epochs", "1", *TRAIN_FLAGS, cwd=tmp_path)  # --wandb disabled: wandb is not started at all


def test_size_mismatch_found_in_a_worker_process_is_one_line(tmp_path: Path) -> None:
    write_carvana_like(tmp_path / "data", 3)
    mask = sorted((tmp_path / "data" / "masks").iterdir())[1]
    small = Image.open(mask).resize((24, 16))
    small.save(mask)
    flags = [flag if flag != "0" else "1" for flag in TRAIN_FLAGS]  # --workers 1
    result = run("train.py", "--epochs", "1", "--validation", "0", *flags, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and mask.name in last and "48x32" in last and "24x16" in last


def test_predict_inputs_expand_folders_and_globs_and_outputs_pair_up(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    import predict

    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert predict.expand_inputs([str(tmp_path)]) == ([tmp_path / "a.jpg", tmp_path / "b.png"], 0)
    assert predict.expand_inputs([str(tmp_path / "*.png")]) == ([tmp_path / "b.png"], 0)
    # the outputs of an earlier run without --output are not inputs, unless named explicitly
    for name in ("a_OUT.png", "a_OUT_overlay.png", "b_OUT_viz.png", "b_OUT_probs.npy", "c_OUTLINE.png"):
        (tmp_path / name).write_bytes(b"")
    assert predict.expand_inputs([str(tmp_path)]) == ([tmp_path / "a.jpg", tmp_path / "b.png",
                                                       tmp_path / "c_OUTLINE.png"], 4)
    assert predict.expand_inputs([str(tmp_path / "a_OUT.png")]) == ([tmp_path / "a_OUT.png"], 0)
    with pytest.raises(UserError, match=r"holds no image files other than the 2 outputs of an earlier run"):
        predict.expand_inputs([str(tmp_path / "b_*")])
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "d.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"input folder .*deep holds no image files .*subfolders are not searched"):
        predict.expand_inputs([str(tmp_path / "deep")])
    assert predict.expand_inputs([str(tmp_path / "deep" / "**" / "*.jpg")]) == ([tmp_path / "deep" / "er" / "d.jpg"], 0)
    inputs = [tmp_path / "a.jpg", tmp_path / "b.png"]
    assert predict.output_paths(inputs, None) == [tmp_path / "a_OUT.png", tmp_path / "b_OUT.png"]
    assert predict.output_paths(inputs, [str(tmp_path / "out")]) == [tmp_path / "out" / "a.png",
                                                                      tmp_path / "out" / "b.png"]
    with pytest.raises(UserError, match="2 inputs but 3 outputs: give one output per input or a folder"):
        predict.output_paths(inputs, ["x.png", "y.png", "z.png"])
    with pytest.raises(UserError, match="3 inputs but 2 outputs"):  # fewer outputs too (untested before a review)
        predict.output_paths([*inputs, tmp_path / "c.png"], ["x.png", "y.png"])
    with pytest.raises(UserError, match="would overwrite it"):
        predict.output_paths(inputs, [str(tmp_path)])  # b.png would be replaced by its own mask
    with pytest.raises(UserError, match="would both write"):
        predict.output_paths([tmp_path / "a.jpg", tmp_path / "sub" / "a.jpg"], [str(tmp_path / "out")])
    with pytest.raises(UserError, match="matches no image"):
        predict.expand_inputs([str(tmp_path / "*.tif")])
    (tmp_path / "photo.heic").write_bytes(b"")  # a format not read here: named, with the fix
    with pytest.raises(UserError, match=r"matches no image file; it matches 1 file in formats not read here "
                                        r"\(\.heic 1: photo\.heic\): convert it to PNG"):
        predict.expand_inputs([str(tmp_path / "photo*")])
    capsys.readouterr()
    assert tmp_path / "photo.heic" not in predict.expand_inputs([str(tmp_path)])[0]
    assert "note: left out 1 file in formats not read here (.heic 1: photo.heic)" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(UserError, match=r"cannot make the folder .*taken for --output \(.*taken is a file, not a "
                                        r"folder\): pick another"):
        predict.output_paths(inputs, [str(tmp_path / "taken") + "/"])
    with pytest.raises(UserError, match="2 inputs but 3 outputs"):
        predict.output_paths(inputs, ["x.png", "y.png", "z.png"])
    with pytest.raises(UserError, match=r"2 inputs but one output file .*m.png: give a folder or one file each"):
        predict.output_paths(inputs, [str(tmp_path / "m.png")])
    (tmp_path / "data [v2]").mkdir()  # found by a review: [v2] was a character class, so 'data v' was predicted
    (tmp_path / "data v").mkdir()
    (tmp_path / "data [v2]" / "mine.jpg").write_bytes(b"")
    (tmp_path / "data v" / "other.jpg").write_bytes(b"")
    assert predict.expand_inputs([str(tmp_path / "data [v2]" / "*.jpg")])[0] == [tmp_path / "data [v2]" / "mine.jpg"]
    assert predict.expand_inputs([str(tmp_path / "data [v]" / "*.jpg")])[0] == [tmp_path / "data v" / "other.jpg"]
    (tmp_path / "masks.png").mkdir()  # found by a review: a folder named like an image was taken for a file
    for named in (str(tmp_path / "masks.png"), str(tmp_path / "masks.png") + "/", str(tmp_path / "new.png") + "/"):
        assert predict.output_paths(inputs[:1], [named]) == [Path(named) / "a.png"]
    with pytest.raises(UserError, match=r"end it in \.png"):
        predict.output_paths(inputs[:1], ["mask"])
    with pytest.raises(UserError, match=r"output m.jpg: masks are written as .png, .gif, .bmp, .tif, .tiff files, "
                                        r"which keep the class values exactly \(a .jpg mask would not\)"):
        predict.output_paths(inputs[:1], ["m.jpg"])


def test_predict_outputs_never_replace_an_input_or_each_other(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Found by a review: a.png and a.jpg of one folder both wrote a_OUT.png (one mask lost without a word), and a
    listed output could overwrite another input before it was read (d's mask predicted from a's mask)."""
    import predict

    for name in ("a.png", "a.jpg", "b.png", "d.png"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(UserError, match=r"a.jpg and .*a.png would both write .*a_OUT.png: give them different names"):
        predict.output_paths(predict.expand_inputs([str(tmp_path)])[0], None)
    inputs = [tmp_path / "b.png", tmp_path / "d.png"]
    with pytest.raises(UserError, match=r"the mask of .*b.png would overwrite the input .*d.png: choose another"):
        predict.output_paths(inputs, [str(tmp_path / "d.png"), str(tmp_path / "x.png")])
    # a file named twice (itself and by a pattern, or through a link) is predicted once, with a note
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "b.png").symlink_to(tmp_path / "b.png")
    assert predict.expand_inputs([str(tmp_path / "b.png"), str(tmp_path / "*.png"), str(tmp_path / "linked")])[0] \
        == [tmp_path / "b.png", tmp_path / "a.png", tmp_path / "d.png"]
    assert "note: 2 inputs name a file already among the inputs" in capsys.readouterr().err  # (found by a review:
    # on stdout, as was the skipped files' list, which the error line on stderr called "listed above")
    # ... unless each gets an output file of its own
    assert len(predict.expand_inputs([str(tmp_path / "b.png")] * 2, keep_repeats=True)[0]) == 2


def test_predict_outputs_that_differ_only_in_case_clash_where_the_disk_ignores_case(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Suspected by a portability review: on macOS's and Windows' disks Cat.jpg and cat.png from two folders would
    write Cat.png and cat.png, one file, so one mask replaced the other without a word. No such disk here (a casefold
    ext4 cannot be mounted in this container), so the probe's answer is stood in for."""
    import predict

    assert predict.case_insensitive(tmp_path) is False  # this machine's disk, probed
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    inputs = [tmp_path / "a" / "Cat.jpg", tmp_path / "b" / "cat.png"]
    assert predict.output_paths(inputs, [str(tmp_path / "out")]) == [tmp_path / "out" / "Cat.png",
                                                                      tmp_path / "out" / "cat.png"]
    probed = []
    monkeypatch.setattr(predict, "case_insensitive", lambda folder: probed.append(folder) or True)
    with pytest.raises(UserError, match=r"Cat.jpg and .*cat.png would write Cat.png and cat.png, one file in .*out, "
                                        r"which does not tell case apart: predict them into different folders"):
        predict.output_paths(inputs, [str(tmp_path / "out")])
    assert probed == [tmp_path / "out"]  # output folders only: nothing is written into an input's folder
    accented = [tmp_path / "a" / "caf\u00e9.jpg", tmp_path / "b" / "cafe\u0301.png"]  # NFC, and macOS's NFD
    with pytest.raises(UserError, match=r"caf.*\.jpg and .*cafe.*\.png would both write .*out/cafe\u0301\.png: "
                                        r"predict them into different folders"):
        predict.output_paths(accented, [str(tmp_path / "out")])
    (tmp_path / "out" / "X.PNG").write_bytes(b"")  # an input that its own mask, x.png, would replace
    with pytest.raises(UserError, match=r"the mask of .*X.PNG would overwrite it"):
        predict.output_paths([tmp_path / "out" / "X.PNG"], [str(tmp_path / "out" / "x.png")])
    assert predict.output_paths([tmp_path / "a" / "Cat.jpg", tmp_path / "b" / "dog.png"], [str(tmp_path / "out")])


def test_load_takes_the_architecture_from_the_weights_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import train

    write_carvana_like(tmp_path / "data", 3)
    base = ["--imgs", str(tmp_path / "data" / "imgs"), "--masks", str(tmp_path / "data" / "masks"),
            "--epochs", "1", "--validation", "0", *ANY_WIDTH_FLAGS]
    train.main(train.get_args_parser().parse_args(
        [*base, "--channels", "1", "--bilinear", "--classes", "3", "--checkpoint-dir", str(tmp_path / "first"),
         "--base-channels", "8"]))
    assert "note: --classes 3 but the masks hold 2 values: class 2 never appears in them; predict.py writes it " \
           "as 2" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "first" / "last.pth")["mask_values"] == [0, 1, 2]
    # no --channels, --bilinear, --classes or --base-channels: all four come from the file given to --load
    train.main(train.get_args_parser().parse_args(
        [*base, "--load", str(tmp_path / "first" / "last.pth"), "--checkpoint-dir", str(tmp_path / "second")]))
    second = load_checkpoint(tmp_path / "second" / "last.pth")
    assert second["model_args"] == {"n_channels": 1, "n_classes": 3, "bilinear": True, "base_channels": 8}
    with pytest.raises(UserError, match="use --classes 3"):
        train.main(train.get_args_parser().parse_args(
            [*base, "--load", str(tmp_path / "first" / "last.pth"), "--classes", "2",
             "--checkpoint-dir", str(tmp_path / "third")]))
    with pytest.raises(UserError, match="--channels is 3 but .*last.pth holds a model of 1-channel images"):
        train.main(train.get_args_parser().parse_args(
            [*base, "--load", str(tmp_path / "first" / "last.pth"), "--channels", "3",
             "--checkpoint-dir", str(tmp_path / "third")]))
    with pytest.raises(UserError, match="--base-channels is 16 but .*last.pth holds a model of 8 base channels: "
                                        "leave out --base-channels, or start without --load"):
        train.main(train.get_args_parser().parse_args(
            [*base, "--load", str(tmp_path / "first" / "last.pth"), *NARROW_UNET,
             "--checkpoint-dir", str(tmp_path / "third")]))


def test_load_of_a_model_with_fewer_classes_than_the_masks_says_what_works(tmp_path: Path) -> None:
    """Found by a review: the advice went round in a circle (--classes 3, then --classes 2 for the --load file),
    after a note that the loaded classes 'now stand for these values'."""
    import train

    write_carvana_like(tmp_path / "data", 2)
    for mask in (tmp_path / "data" / "masks").iterdir():
        values = np.zeros((32, 48), np.uint8)
        values[:, :10], values[:, 10:20] = 255, 127
        Image.fromarray(values).save(mask.with_suffix(".png"))
        mask.unlink()
    torch.save({**UNet(3, 2, base_channels=16).state_dict(), "mask_values": [0, 255]}, tmp_path / "two.pth")
    flags = ["--imgs", str(tmp_path / "data" / "imgs"), "--masks", str(tmp_path / "data" / "masks"), *TRAIN_FLAGS,
             "--checkpoint-dir", str(tmp_path / "run"), "--load", str(tmp_path / "two.pth")]
    with pytest.raises(UserError) as error:
        train.main(train.get_args_parser().parse_args(flags))
    assert str(error.value) == (f"the masks hold 3 distinct values [0, 127, 255] but {tmp_path / 'two.pth'} predicts "
                                "2 classes, and --load keeps its output layer: train a new model (leave out --load), "
                                "or use masks of at most 2 values")
    assert not (tmp_path / "run" / "last.pth").exists()
    torch.save({**UNet(3, 1, base_channels=16).state_dict(), "mask_values": [0, 255]}, tmp_path / "one.pth")
    flags[-1] = str(tmp_path / "one.pth")
    with pytest.raises(UserError, match=r"one.pth predicts 1 class \(foreground or not\), and --load keeps its output "
                                        r"layer: train a new model \(leave out --load\), or use masks of at most 2"):
        train.main(train.get_args_parser().parse_args([*flags, "--classes", "1"]))


def test_load_of_a_model_that_ignored_a_value_the_masks_hold_says_how_to_keep_ignoring_it(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Found by a VOC-style review: fine-tuning a model trained with --ignore-index 255 on masks with a 255 void
    border, without the flag, trained the border as a class, and no line said so."""
    import train

    write_carvana_like(tmp_path / "data", 2)
    for mask in (tmp_path / "data" / "masks").iterdir():
        values = np.zeros((32, 48), np.uint8)
        values[:, 10:20], values[:, 20:22] = 7, 255  # a class and its void border
        Image.fromarray(values).save(mask.with_suffix(".png"))
        mask.unlink()
    save_checkpoint(tmp_path / "voc.pth", UNet(3, 3, base_channels=16), [0, 7, 8], args={"ignore_index": 255})
    flags = ["--imgs", str(tmp_path / "data" / "imgs"), "--masks", str(tmp_path / "data" / "masks"), *TRAIN_FLAGS,
             "--epochs", "1", "--load", str(tmp_path / "voc.pth")]
    train.main(train.get_args_parser().parse_args([*flags, "--checkpoint-dir", str(tmp_path / "a")]))
    assert (f"note: {tmp_path / 'voc.pth'} left mask value 255 out of training (--ignore-index 255), and these masks "
            "hold it: add --ignore-index 255 to leave it out again; without it, it is a class"
            ) in capsys.readouterr().err
    train.main(train.get_args_parser().parse_args([*flags, "--ignore-index", "255",
                                                   "--checkpoint-dir", str(tmp_path / "b")]))
    assert "left mask value 255 out" not in capsys.readouterr().err


def test_a_resumed_runs_hand_edited_settings_are_one_line(tmp_path: Path) -> None:
    """Found by a review of untrusted files: the settings --resume takes from the checkpoint were never checked,
    so learning_rate nan, weight_decay 'abc', augment 'xx', seed 2**80 or crops_per_image 10**9 ended in
    tracebacks (the last after trying to allocate 24 GB)."""
    import train

    write_carvana_like(tmp_path / "data", 2)
    flags = ["--imgs", str(tmp_path / "data" / "imgs"), "--masks", str(tmp_path / "data" / "masks"), *TRAIN_FLAGS,
             "--epochs", "1", "--checkpoint-dir", str(tmp_path / "run")]
    train.main(train.get_args_parser().parse_args(flags))
    original = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    for name, value, complaint in (
            ("learning_rate", float("nan"), r"holds a setting out of range \(--learning-rate must be above 0, e.g. "
                                            r"1e-4, got nan\): the file was edited or damaged; start a new run"),
            ("weight_decay", "abc", r"its args\['weight_decay'\] is 'abc', not a value of --weight-decay"),
            ("augment", "xx", r"its args\['augment'\] is 'xx', not a value of --augment"),
            ("seed", 2**80, r"--seed must be a whole number from 0 to 4294967295"),
            ("crop", [10**6, 10**6 + 1], r"its args\['crop'\] is \(1000000, 1000001\), not a value of --crop")):
        torch.save({**original, "args": {**original["args"], name: value}}, tmp_path / "run" / "last.pth")
        with pytest.raises(UserError, match=complaint):
            train.main(train.get_args_parser().parse_args([*flags, "--epochs", "2", "--resume", "auto"]))
    # a typed flag at odds with the run's settings is the flag's fault, not the file's (found by the code review):
    # a run saved before --crops-per-image existed, resumed with --crop 32 --crops-per-image 2
    older = {name: value for name, value in original["args"].items() if name != "crops_per_image"}
    torch.save({**original, "args": older}, tmp_path / "run" / "last.pth")
    with pytest.raises(UserError) as error:
        train.main(train.get_args_parser().parse_args([*flags, "--epochs", "2", "--resume", "auto", "--crop", "32",
                                                       "--crops-per-image", "2"]))
    assert str(error.value).endswith(f"{tmp_path / 'run' / 'last.pth'} goes on with its own settings (the notes "
                                     "above), so leave --crops-per-image out, or start a new run")


def test_a_class_without_a_mask_value_is_predicted_and_written(tmp_path: Path) -> None:
    """Found by a review: a model of 3 classes saved with 2 mask values (a --classes 3 run on 0/255 masks, before
    train.py completed them) crashed predict.py with an IndexError as soon as it predicted class 2."""
    model = UNet(3, 3)
    with torch.no_grad():
        model.outc.conv.weight.zero_()
        model.outc.conv.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))  # class 2 everywhere
    torch.save({**model.state_dict(), "mask_values": [0, 255]}, tmp_path / "three.pth")
    Image.fromarray(np.full((24, 40, 3), 90, np.uint8)).save(tmp_path / "img.png")
    run("predict.py", "-m", "three.pth", "-i", "img.png", "-o", "out.png", "--scale", "1", "--csv", "classes.csv",
        cwd=tmp_path)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.full((24, 40), 1, np.uint8))
    with open(tmp_path / "classes.csv", newline="") as file:
        row = next(csv.DictReader(file))
    assert float(row["fraction_2"]) == 1.0 and float(row["fraction_1"]) == 0.0


def test_bare_csv_flag_puts_predictions_csv_beside_the_masks(tmp_path: Path) -> None:
    import predict

    inputs = [tmp_path / "a.jpg", tmp_path / "b.png"]
    folder = [str(tmp_path / "out")]
    expected = tmp_path / "out" / "predictions.csv"
    assert predict.csv_location("", folder, predict.output_paths(inputs, folder)) == expected
    files = [str(tmp_path / "masks" / "a.png"), str(tmp_path / "masks" / "b.png")]  # one file per input
    expected = tmp_path / "masks" / "predictions.csv"  # not a.png/predictions.csv
    assert predict.csv_location("", files, predict.output_paths(inputs, files)) == expected
    assert predict.csv_location("", None, predict.output_paths(inputs, None)) == Path("predictions.csv")
    assert predict.csv_location("rows.csv", files, inputs) == Path("rows.csv")
    assert predict.csv_location(None, files, inputs) is None


START_METHOD_RUN = """
import multiprocessing, runpy, sys
multiprocessing.set_start_method("forkserver")  # Python 3.14's default on Linux; macOS uses spawn (also pickles)
for argv in ({train!r}, {predict!r}):
    sys.argv, sys.path[0] = argv, {repo!r}  # as `python SCRIPT` sets them
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code:
            raise
"""


def test_loader_workers_run_under_forkserver(tmp_path: Path) -> None:
    """Workers that are not forked get the datasets, augmentation and collation pickled: all must travel."""
    write_carvana_like(tmp_path / "data", 6)
    workers = [flag if flag != "0" else "1" for flag in TRAIN_FLAGS]  # --workers 1
    train = [str(REPO / "train.py"), "--epochs", "1", "--validation", "34", "--augment", "light", *workers]
    predict = [str(REPO / "predict.py"), "-m", "checkpoints/last.pth", "-i", "data/imgs", "-o", "preds/",
               "--workers", "1"]
    program = START_METHOD_RUN.format(train=train, predict=predict, repo=str(REPO))
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1: train loss" in result.stdout and "predicted 6 images" in result.stdout
    assert len(list((tmp_path / "preds").glob("*.png"))) == 6


def write_cells(folder: Path, count: int) -> None:
    """cell<i>.png grayscale images with 0/255 disc masks, 48x32 and 36x40 mixed."""
    rng = np.random.default_rng(0)
    (folder / "imgs").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index in range(count):
        height, width = (32, 48) if index % 3 else (40, 36)
        yy, xx = np.mgrid[:height, :width]
        mask = ((yy - height // 2) ** 2 + (xx - width // 2) ** 2 < 100).astype(np.uint8)
        image = (rng.normal(80, 10, (height, width)) + 100 * mask).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "imgs" / f"cell{index}.png")
        Image.fromarray(mask * 255).save(folder / "masks" / f"cell{index}.png")


def test_images_of_different_sizes_train_and_validate_from_the_command_line(tmp_path: Path) -> None:
    """The command as users type it, with its note; the batches themselves: the test below."""
    write_cells(tmp_path / "data", 8)
    result = run("train.py", "--epochs", "1", "--validation", "50", *TRAIN_FLAGS, cwd=tmp_path)
    assert "training images of 2 sizes: batched by size" in result.stdout
    assert "validation Dice" in result.stdout and (tmp_path / "checkpoints" / "last.pth").is_file()


def test_images_of_different_sizes_train_in_batches_of_one_size_without_padding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import train
    from utils.mask_encoding import IGNORE_CLASS

    write_cells(tmp_path, 12)  # 4 of 36x40 and 8 of 48x32: whole batches of 4 of each size
    real_step, batches = train.train_step, []

    def recording_step(model, images, masks, *args, **kwargs):
        batches.append((tuple(images.shape), bool((masks == IGNORE_CLASS).any())))  # padding is ignored pixels
        return real_step(model, images, masks, *args, **kwargs)

    monkeypatch.setattr(train, "train_step", recording_step)
    train.main(train.get_args_parser().parse_args([
        "--imgs", str(tmp_path / "imgs"), "--masks", str(tmp_path / "masks"), "--epochs", "2", "--validation", "0",
        "--checkpoint-dir", str(tmp_path / "run"), *TRAIN_FLAGS, "--channels", "1"]))
    assert len(batches) == 6 and not any(padded for _, padded in batches)
    assert sorted(shape for shape, _ in batches) == [(4, 1, 32, 48)] * 4 + [(4, 1, 40, 36)] * 2


def test_images_of_different_sizes_score_in_batches_as_one_at_a_time(tmp_path: Path) -> None:
    """Each image is scored as it is predicted, alone: no other image's padding around it."""
    from utils.data_loading import SegmentationDataset, list_pairs, make_loader
    from utils.device import choose_precision
    from utils.scoring import evaluate

    write_cells(tmp_path, 8)
    torch.manual_seed(0)
    model = UNet(3, 2).eval()  # random weights: every pixel's prediction depends on its surroundings
    dataset = SegmentationDataset(list_pairs(tmp_path / "imgs", tmp_path / "masks"), [0, 255], scale_masks=False)
    with torch.no_grad():  # centre the logit difference so that pixels fall on both sides of the decision
        logits = model(dataset[0]["image"][None].float() / 255)
        model.outc.conv.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    device = torch.device("cpu")
    precision = choose_precision(device, precision="fp32")
    one_at_a_time, batched = (evaluate(model, make_loader(dataset, size, device, 0), device, precision,
                                       progress=False)["rows"] for size in (1, 4))
    assert [row["name"] for row in batched] == [f"cell{index}" for index in range(8)]
    assert batched == one_at_a_time
    assert len({row["dice"] for row in batched}) > 2  # not a model that predicts the same for every image


def test_evaluate_s_bar_counts_images_scored_not_batches_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """Found by a review: regrouping by size holds images of a few loader batches back, and the bar of batches
    loaded stood at 100% while they were still to score."""
    from tqdm import tqdm

    from utils import scoring
    from utils.batch_cache import BatchCache
    from utils.data_loading import SegmentationDataset, list_pairs, make_loader
    from utils.device import choose_precision

    write_cells(tmp_path, 8)  # sizes mixed: batches of 3 regrouped into parts of one size
    dataset = SegmentationDataset(list_pairs(tmp_path / "imgs", tmp_path / "masks"), [0, 255], scale_masks=False)
    bars: list[tqdm] = []
    monkeypatch.setattr(scoring, "progress_bar", lambda **options: bars.append(tqdm(**options, file=io.StringIO()))
                        or bars[-1])
    done_at_each_prediction, real_predict = [], scoring.predict_logits

    def predict_logits(model, images, *args, **kwargs):
        done_at_each_prediction.append((bars[0].n, len(images)))
        return real_predict(model, images, *args, **kwargs)

    monkeypatch.setattr(scoring, "predict_logits", predict_logits)
    device = torch.device("cpu")
    result = scoring.evaluate(UNet(3, 2, base_channels=8), make_loader(dataset, 3, device, 0), device,
                              choose_precision(device, precision="fp32"), batch_size=3)
    assert result["images"] == 8 and bars[0].total == 8 and bars[0].n == 8 and bars[0].unit == "img"
    before = [sum(size for _, size in done_at_each_prediction[:index]) for index in range(len(done_at_each_prediction))]
    assert [done for done, _ in done_at_each_prediction] == before  # each image counted once it is scored
    # validation's loader: a BatchCache, whose bar keeps its total also once the batches are kept
    cache = BatchCache(make_loader(dataset, 3, device, 0))
    for _ in range(2):
        scoring.evaluate(UNet(3, 2, base_channels=8), cache, device, choose_precision(device, precision="fp32"))
        assert bars[-1].total == bars[-1].n == 8
    assert cache.cached


def test_evaluate_names_an_image_too_small_for_the_unet(tmp_path: Path) -> None:
    write_cells(tmp_path, 2)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "imgs" / "speck.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "speck.png")
    torch.save({**UNet(3, 2).state_dict(), "mask_values": [0, 255]}, tmp_path / "model.pth")
    result = run("evaluate.py", "-m", "model.pth", "--imgs", "imgs", "--masks", "masks", "--scale", "1",
                 "--workers", "0", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr  # the others scored and written first
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 1 of 3 pairs could not be scored (listed above as not scored, e.g. imgs/speck.png is 10x10: the U-Net "
        "needs at least 16 px a side (four halvings): leave it out or enlarge it): the scores above and in "
        "evaluation.csv are of the others; mend, replace or remove those files")
    assert "2 images, model model.pth" in result.stdout
    (tmp_path / "imgs" / "speck.png").unlink()
    (tmp_path / "masks" / "speck.png").unlink()
    result = run("evaluate.py", "-m", "model.pth", "--imgs", "imgs", "--masks", "masks", "--scale", "0.2",
                 "--workers", "0", cwd=tmp_path, check=False)  # found by a review: no --scale that would do
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: no pair could be scored: imgs/cell0.png is 36x40, only 7x8 at scale 0.2: the U-Net needs at least "
        "16 px a side (four halvings): use --scale 0.45 or more")


def test_evaluate_reads_0_255_masks_for_a_reference_checkpoint_without_mask_values(tmp_path: Path) -> None:
    """Found by a review: such a checkpoint is taken as 0/1, and evaluate.py refused 0/255 masks (as predict.py
    writes them for it) while train.py --load trained on them."""
    write_cells(tmp_path, 2)  # 0/255 disc masks
    torch.save(UNet(3, 2, base_channels=4).state_dict(), tmp_path / "model.pth")
    result = run("evaluate.py", "-m", "model.pth", "--imgs", "imgs", "--masks", "masks", "--scale", "1",
                 "--workers", "0", cwd=tmp_path)
    row = next(line.split() for line in result.stdout.splitlines() if line.split()[:2] == ["1", "1"])
    assert row[-1] == "2"  # class 1 (mask value 1) is in both masks: their 255 is read as it


def test_a_binary_model_that_ignored_255_writes_its_objects_as_1_not_as_the_ignored_value(tmp_path: Path) -> None:
    """Found by a review: 0/1 masks are written 0/255 to be visible, and with --ignore-index 255 every object
    pixel came out as the value the masks use for 'not labelled' (evaluate.py then ignored them all)."""
    from utils.checkpoint import save_checkpoint

    write_cells(tmp_path, 2)
    torch.manual_seed(0)
    model = UNet(3, 2, base_channels=4)
    with torch.no_grad():
        model.outc.conv.bias[1] = 100.0  # every pixel an object
    for ignored in (255, None):
        save_checkpoint(tmp_path / "model.pth", model, [0, 1], args={"ignore_index": ignored})
        run("predict.py", "-m", "model.pth", "-i", "imgs/cell0.png", "-o", "out.png", "--scale", "1", cwd=tmp_path)
        assert np.unique(np.asarray(Image.open(tmp_path / "out.png"))).tolist() == [1 if ignored == 255 else 255]
        scored = run("evaluate.py", "-m", "model.pth", "--imgs", "imgs", "--masks", "masks", "--scale", "1",
                     "--workers", "0", cwd=tmp_path)  # its 0/255 masks: for the first model, 255 is "not labelled"
        said = "note: no mask holds the object value 1, and the model was trained ignoring 255"
        assert (said in scored.stderr) == (ignored == 255)  # found by a review: Dice 1.0 and nothing said


def test_a_mask_threshold_a_softmax_model_cannot_use_is_said(tmp_path: Path) -> None:
    """Found by a review: -t 0.9 on a model of two classes changed nothing, without a word (and -t 0.5, the
    default's value, still gave no word until the flag's default became "not typed")."""
    write_cells(tmp_path, 2)
    for classes in (2, 1):
        torch.save({**UNet(3, classes, base_channels=4).state_dict(), "mask_values": [0, 255]}, tmp_path / "m.pth")
        for script, flags in (("predict.py", ["-i", "imgs/cell0.png", "-o", "out.png"]),
                              ("evaluate.py", ["--imgs", "imgs", "--masks", "masks", "--workers", "0"])):
            for typed in (["-t", "0.9"], ["-t", "0.5"], []):  # the default value typed is still typed
                result = run(script, "-m", "m.pth", "--scale", "1", *typed, *flags, cwd=tmp_path)
                threshold = typed[1] if typed else "0.5"
                said = f"note: --mask-threshold {threshold} is left unused: it decides one-class (sigmoid) models, " \
                       "and this model of 2 classes gives each pixel its most probable class"
                assert (said in result.stderr) == (classes == 2 and bool(typed)), (script, classes, typed)


def test_a_typed_mask_threshold_decides_a_one_class_model(tmp_path: Path) -> None:
    """The flag's default is "not typed"; a typed threshold must still reach the one-class decision."""
    write_cells(tmp_path, 1)
    torch.save({**UNet(3, 1, base_channels=4).state_dict(), "mask_values": [0, 255]}, tmp_path / "m.pth")
    foreground = {}
    for typed in (["-t", "0.01"], [], ["-t", "0.99"]):
        run("predict.py", "-m", "m.pth", "--scale", "1", *typed, "-i", "imgs/cell0.png", "-o", "out.png", cwd=tmp_path)
        foreground[" ".join(typed)] = (np.asarray(Image.open(tmp_path / "out.png")) == 255).mean()
    assert foreground["-t 0.01"] == 1 and foreground["-t 0.99"] == 0, foreground  # an untrained model: near 0.5
    assert foreground["-t 0.01"] >= foreground[""] >= foreground["-t 0.99"], foreground


def test_main_called_from_python_gives_the_process_its_settings_back(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review of notebook use: predict.main() left Pillow's pixel limit at its own value (a notebook's
    None, for huge scans, was lost) and glibc keeping every freed block (a 400 MiB array freed later stayed)."""
    import evaluate
    import predict
    import utils.device

    class Libc:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def mallopt(self, parameter: int, value: int) -> int:
            self.calls.append(("mallopt", parameter, value))
            return 1

        def malloc_trim(self, pad: int) -> int:
            self.calls.append(("malloc_trim", pad))
            return 1

    libc = Libc()
    monkeypatch.setattr(utils.device, "_glibc", lambda device: libc)
    write_cells(tmp_path, 2)
    torch.save({**UNet(3, 2, base_channels=4).state_dict(), "mask_values": [0, 255]}, tmp_path / "m.pth")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.chdir(tmp_path)
    predict.main(predict.get_args_parser().parse_args(["-m", "m.pth", "-i", "imgs/cell0.png", "-o", "out.png",
                                                       "--max-image-pixels", "5000", "--device", "cpu"]))
    evaluate.main(evaluate.get_args_parser().parse_args(["-m", "m.pth", "--imgs", "imgs", "--masks", "masks",
                                                         "--workers", "0", "--device", "cpu"]))
    assert Image.MAX_IMAGE_PIXELS is None
    kept = [("mallopt", utils.device.M_MMAP_MAX, 0), ("mallopt", utils.device.M_TRIM_THRESHOLD, 2**31 - 1)]
    given_back = [("mallopt", parameter, value) for parameter, value in utils.device.GLIBC_DEFAULTS]
    assert libc.calls == 2 * [*kept, *given_back, ("malloc_trim", 0)]


def test_output_piped_to_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """Found by a review: `evaluate.py ... | head -2` ended in a BrokenPipeError traceback."""
    write_cells(tmp_path, 2)
    torch.save({**UNet(3, 2, base_channels=4).state_dict(), "mask_values": [0, 255]}, tmp_path / "m.pth")
    process = subprocess.Popen([sys.executable, str(REPO / "evaluate.py"), "-m", "m.pth", "--imgs", "imgs", "--masks",
                                "masks", "--workers", "0"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before the first line
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 141 and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def test_evaluate_names_many_unscored_classes_in_one_short_line(tmp_path: Path) -> None:
    """Found by a review: a model of 301 classes listed every class no mask held, in one line of 300 numbers."""
    write_cells(tmp_path, 2)  # masks of 0 and 255
    torch.manual_seed(0)
    model = UNet(3, 12, base_channels=4)
    with torch.no_grad():
        model.outc.conv.bias[2:] = -100.0  # classes 2 to 11: in no mask, never predicted
    torch.save({**model.state_dict(), "mask_values": [0, 255, *range(1, 11)]}, tmp_path / "model.pth")
    result = run("evaluate.py", "-m", "model.pth", "--imgs", "imgs", "--masks", "masks", "--scale", "1",
                 "--workers", "0", cwd=tmp_path)
    assert ("10 classes [2, 3, 4, 5, 6, 7, 8, 9, ...] (mask values [1, 2, 3, 4, 5, 6, 7, 8, ...]): in no mask and "
            "never predicted, left out of the mean foreground Dice and IoU, and empty in evaluation.csv"
            ) in result.stdout
    assert "    2               1        -        -            -           -          0" in result.stdout.splitlines()
    with open(tmp_path / "evaluation.csv", newline="") as file:  # found by a VOC-style review: their free 1s read
        rows = list(csv.DictReader(file))                        # as scores
    assert rows and all(row[f"{score}_{c}"] == "" for row in rows for c in range(2, 12) for score in ("dice", "iou"))
    assert all(row["dice_1"] != "" for row in rows)


def test_a_four_channel_model_trains_predicts_and_evaluates_on_rgb_plus_near_infrared(tmp_path: Path) -> None:
    """--channels 4: the object shows in the fourth band only, which a 3-channel model never sees."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:32, :48]
    for kind in ("imgs", "masks"):
        (tmp_path / kind).mkdir()
    for index in range(5):
        disc = (rows - 16) ** 2 + (cols - 12 - 6 * index) ** 2 < 64
        bands = np.dstack([rng.integers(0, 256, (32, 48, 3)), 50 + 150 * disc]).astype(np.uint8)
        Image.fromarray(bands, "RGBA").save(tmp_path / "imgs" / f"field{index}.png")
        Image.fromarray(disc.astype(np.uint8) * 255).save(tmp_path / "masks" / f"field{index}.png")
    data = ["--imgs", "imgs", "--masks", "masks"]
    trained = run("train.py", *data, "--channels", "4", "--epochs", "2", "--validation", "20", *TRAIN_FLAGS,
                  cwd=tmp_path)
    assert "RGBA (5)" in trained.stdout and "fourth band" not in trained.stdout
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pth")["model_args"]["n_channels"] == 4
    run("predict.py", "-m", "checkpoints/last.pth", "-i", "imgs", "-o", "out", "--overlay", cwd=tmp_path)
    for index in range(5):
        assert Image.open(tmp_path / "out" / f"field{index}.png").size == (48, 32)
        assert Image.open(tmp_path / "out" / f"field{index}_overlay.png").mode == "RGB"
    scored = run("evaluate.py", "-m", "checkpoints/last.pth", *data, "--workers", "0", cwd=tmp_path)
    assert "5 images" in scored.stdout
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "imgs" / "field0.png")  # three bands
    refused = run("train.py", *data, "--channels", "4", "--epochs", "1", "--checkpoint-dir", "again",
                  *TRAIN_FLAGS, cwd=tmp_path, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        "error: the model reads 4 channels, but 1 of the 5 images holds fewer bands (field0)")
    assert refused.stderr.rstrip().endswith("or train with --channels 3")
    loaded = run("train.py", *data, "--load", "checkpoints/last.pth", "--epochs", "1", "--checkpoint-dir", "again",
                 *TRAIN_FLAGS, cwd=tmp_path, check=False)  # found by a review: told --channels 3, which --load refuses
    assert loaded.returncode == 2 and loaded.stderr.rstrip().endswith("or start without --load checkpoints/last.pth")


def test_resume_after_images_were_added_keeps_its_validation_images(tmp_path: Path) -> None:
    write_carvana_like(tmp_path / "data", 6)
    flags = ["--validation", "34", *TRAIN_FLAGS]
    run("train.py", "--epochs", "1", *flags, cwd=tmp_path)
    first = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert first["training_images"] == 4 and len(first["validation_images"]) == 2

    write_carvana_like(tmp_path / "more", 3, seed=1)  # new files, new names
    for kind in ("imgs", "masks"):
        for path in (tmp_path / "more" / kind).iterdir():
            shutil.copy(path, tmp_path / "data" / kind / f"new_{path.name}")
    saved = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=True)
    torch.save({**saved, "epoch_batches": 1}, tmp_path / "checkpoints" / "last.pth")  # as if stopped in epoch 2
    # a percentage that would hold out other images now is ignored with a note, as other data settings are
    result = run("train.py", "--epochs", "2", "--resume", "auto", *flags, "--validation", "50", cwd=tmp_path)
    assert "note: the data changed since checkpoints/last.pth: 7 training images (were 4)" in result.stderr
    assert "epoch 2 starts over instead of going on after batch 1" in result.stderr
    assert "continues with --validation 34" in result.stderr
    resumed = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert resumed["validation_images"] == first["validation_images"] and resumed["training_images"] == 7
    assert "7 training and 2 validation images" in result.stdout


def test_resume_without_data_flags_reads_the_runs_own_folders_also_from_another_directory(tmp_path: Path) -> None:
    """--resume auto without --imgs/--masks read data/imgs (here: another data set, so every image counted as new
    and the run's validation images as gone) instead of the folders the run was trained on."""
    write_carvana_like(tmp_path / "cars", 6)
    write_carvana_like(tmp_path / "data", 5, seed=1)  # the default folders hold other images
    flags = ["--validation", "34", *TRAIN_FLAGS]
    run("train.py", "--epochs", "1", "--imgs", "cars/imgs", "--masks", "cars/masks", *flags, cwd=tmp_path)
    result = run("train.py", "--epochs", "2", "--resume", "auto", *flags, cwd=tmp_path)
    assert ("note: checkpoints/last.pth reads imgs from cars/imgs and masks from cars/masks, as its run did"
            in result.stderr)
    assert "data changed" not in result.stderr and "4 training and 2 validation images from cars/imgs" in result.stdout
    with open(tmp_path / "checkpoints" / "metrics.csv") as rows:
        assert [row["val_dice"] != "" for row in csv.DictReader(rows)] == [True, True]

    elsewhere = tmp_path / "elsewhere"  # the relative folders saved are found by their saved absolute path
    elsewhere.mkdir()
    result = run("train.py", "--epochs", "3", "--resume", str(tmp_path / "checkpoints" / "last.pth"),
                 "--checkpoint-dir", str(tmp_path / "checkpoints"), *flags, cwd=elsewhere)
    cars = tmp_path / "cars"
    assert f"reads imgs from {cars / 'imgs'} and masks from {cars / 'masks'}" in result.stderr
    assert "data changed" not in result.stderr

    shutil.rmtree(cars / "masks")
    result = run("train.py", "--epochs", "4", "--resume", "auto", *flags, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: checkpoints/last.pth was trained on the masks folder {cars / 'masks'}, which is not there (from "
        f"{tmp_path}): pass --masks DIR with the run's data")
    given = run("train.py", "--epochs", "4", "--resume", "auto", "--masks", "cars_masks_moved", *flags, cwd=tmp_path,
                check=False)  # a folder given is checked first, as without --resume
    assert given.stderr.strip().splitlines()[-1] == (
        "error: masks folder cars_masks_moved does not exist: pass --masks DIR (see download_data.sh)")


def test_validation_images_missing_for_one_resume_are_validated_again_when_back(tmp_path: Path) -> None:
    """Found by a review: the checkpoint kept only the validation images present, so one missing for a single
    resume was trained on once back, and the run never validated again."""
    write_carvana_like(tmp_path / "data", 6)
    flags = ["--validation", "34", *TRAIN_FLAGS]
    run("train.py", "--epochs", "1", *flags, cwd=tmp_path)
    held_out = load_checkpoint(tmp_path / "checkpoints" / "last.pth")["validation_images"]
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in held_out:
        for kind, suffix in (("imgs", ".jpg"), ("masks", "_mask.gif")):
            shutil.move(tmp_path / "data" / kind / f"{name}{suffix}", aside / f"{kind}_{name}{suffix}")
    result = run("train.py", "--epochs", "2", "--resume", "auto", *flags, cwd=tmp_path)
    assert "warning: none of the run's 2 validation images is there: the epochs train without validation" in (
        result.stderr)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pth")["validation_images"] == held_out
    for name in held_out:
        for kind, suffix in (("imgs", ".jpg"), ("masks", "_mask.gif")):
            shutil.move(aside / f"{kind}_{name}{suffix}", tmp_path / "data" / kind / f"{name}{suffix}")
    result = run("train.py", "--epochs", "3", "--resume", "auto", *flags, cwd=tmp_path)
    assert "4 training and 2 validation images" in result.stdout and "data changed" not in result.stderr
    with open(tmp_path / "checkpoints" / "metrics.csv") as rows:
        assert [row["val_dice"] != "" for row in csv.DictReader(rows)] == [True, False, True]


def test_going_back_to_an_earlier_epoch_keeps_a_better_best_pth(tmp_path: Path) -> None:
    """Found by a review: --resume epoch_2.pth --overwrite replaced best.pth of the dropped later epochs with a
    worse model, the best one then lost."""
    write_carvana_like(tmp_path / "data", 6)
    flags = ["--validation", "34", "--keep-epochs", *TRAIN_FLAGS]
    run("train.py", "--epochs", "3", *flags, cwd=tmp_path)
    best = tmp_path / "checkpoints" / "best.pth"
    state = torch.load(best, weights_only=True)
    best.unlink()  # a hard link to an epoch file: a file of its own now
    torch.save({**state, "val_dice": 1.0, "best_dice": 1.0, "epoch": 3}, best)  # as if epoch 3 had scored 1.0
    kept = best.read_bytes()
    (tmp_path / "checkpoints" / "epoch_3.pth").rename(tmp_path / "epoch_3.pth")  # else going back is refused
    result = run("train.py", "--epochs", "3", "--resume", "checkpoints/epoch_2.pth", "--overwrite", *flags,
                 cwd=tmp_path)
    assert "note: checkpoints/best.pth (validation Dice 1.0000, epoch 3) is kept until this run scores higher" in (
        result.stderr)
    assert best.read_bytes() == kept and "(best)" not in result.stdout


def test_resume_of_a_checkpoint_without_the_split_draws_the_seeded_split(tmp_path: Path) -> None:
    import train
    from utils.data_loading import list_pairs

    write_carvana_like(tmp_path, 12)
    pairs = list_pairs(tmp_path / "imgs", tmp_path / "masks")
    expected = train.split_pairs(pairs, 34, 7)
    assert train.resumed_split(pairs, {}, tmp_path / "old.pth", 34, 7) == (*expected, [])
    same = {"validation_images": [pair.name for pair in expected[1]], "training_images": len(expected[0])}
    assert train.resumed_split(pairs, same, tmp_path / "old.pth", 34, 7) == (*expected, [])  # nothing changed
    # the seed's own draw: neither another seed's nor the files in order
    held_out = [pair.name for pair in expected[1]]
    assert held_out != [pair.name for pair in train.split_pairs(pairs, 34, 0)[1]]
    assert len(held_out) == 4 and sorted(held_out) not in ([pair.name for pair in pairs[:4]],
                                                          [pair.name for pair in pairs[-4:]])


def test_resuming_a_run_from_before_validation_at_the_masks_size_says_its_best_may_not_compare(
        tmp_path: Path) -> None:
    """Found by a review of old runs: versions before 1fe719e scored validation against masks shrunk by --scale;
    their best Dice, carried into a resumed run, was compared with scores at the masks' own size, without a word.
    Their files have no 'epoch_loss' entry (added a few hours later)."""
    from utils.checkpoint import write_checkpoint

    write_carvana_like(tmp_path / "data", 6)
    flags = ["--imgs", "data/imgs", "--masks", "data/masks", *TRAIN_FLAGS, "--scale", "0.5", "--validation", "34"]
    run("train.py", "--epochs", "1", *flags, cwd=tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=True)
    assert "epoch_loss" in saved and saved["best_dice"] >= 0
    resumed = run("train.py", "--resume", "auto", "--epochs", "2", "--workers", "0", cwd=tmp_path)
    assert "may not compare" not in resumed.stderr  # today's files
    write_checkpoint(tmp_path / "checkpoints" / "last.pth", {key: value for key, value in saved.items()
                                                              if key != "epoch_loss"})
    old = run("train.py", "--resume", tmp_path / "checkpoints" / "last.pth", "--overwrite", "--epochs", "2",
              "--workers", "0", cwd=tmp_path)
    assert (f"note: {tmp_path / 'checkpoints' / 'last.pth'} was written before 2026-11-29 10:00 UTC (it has no "
            "'epoch_loss' entry); versions before then may have scored validation against masks shrunk by --scale, "
            "and this one scores at the masks' own size, so its best Dice 0.") in old.stderr
    assert " may not compare with the new epochs' (best.pth is replaced only by a higher one)" in old.stderr


def test_out_of_memory_in_training_is_one_line_with_what_to_change_and_what_was_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import train

    write_carvana_like(tmp_path, 6)
    real_step, calls = train.train_step, []

    def step_that_runs_out(*args, **kwargs):  # the fourth step does not fit (epoch 2: 4 images, batches of 2)
        calls.append(1)
        if len(calls) == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", step_that_runs_out)
    args = train.get_args_parser().parse_args([
        "--imgs", str(tmp_path / "imgs"), "--masks", str(tmp_path / "masks"), "--epochs", "2", "--validation", "34",
        "--checkpoint-dir", str(tmp_path / "run"), *TRAIN_FLAGS, "--batch-size", "2", "--precision", "fp32"])
    with pytest.raises(UserError) as error:
        train.main(args)
    message = str(error.value)
    assert message.startswith("out of memory on cpu training batches of 2 at --scale 1 (fp32): try a smaller "
                              "--batch-size, --checkpointing, --precision auto --amp (instead of --precision fp32), "
                              "--crop 512 (windows at full resolution), a smaller --scale;")  # --amp alone: no change
    from utils.device import Precision

    cases = (("cpu", "auto", "--checkpointing, --amp, --crop"), ("mps", "auto", "--checkpointing, --crop"),
             ("cpu", "bf16", "--checkpointing, --crop"))  # found by a message audit
    for device, precision, said in cases:
        args.precision = precision
        dtype = torch.bfloat16 if precision == "bf16" else None
        assert said in train.out_of_memory_advice(args, torch.device(device), Precision(device, dtype), None)
    assert message.endswith(f"{tmp_path / 'run' / 'last.pth'} (saved at step 2) is kept (another batch size needs "
                            "a new run: --resume keeps the run's)")
    assert load_checkpoint(tmp_path / "run" / "last.pth")["epoch"] == 1  # the work before it is on disk


def test_predict_notes_inputs_that_viewers_show_turned(trained: Path, tmp_path: Path) -> None:
    image = Image.open(sorted((trained / "data" / "imgs").iterdir())[0])
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "phone.jpg", exif=exif)
    image.save(tmp_path / "plain.jpg")
    result = run("predict.py", "-m", trained / "checkpoints" / "last.pth", "-i", tmp_path / "phone.jpg",
                 tmp_path / "plain.jpg", "-o", tmp_path / "out", "--workers", "0", cwd=tmp_path)
    assert "note: 1 image carries an EXIF orientation (phone.jpg): viewers show them turned" in result.stderr
    assert np.asarray(Image.open(tmp_path / "out" / "phone.png")).shape == (32, 48)  # the stored pixels' size


def test_evaluate_notes_images_that_viewers_show_turned(trained: Path, tmp_path: Path) -> None:
    """Found by a review: predict.py and the data check named them, evaluate.py scored them without a word."""
    image_file = sorted((trained / "data" / "imgs").iterdir())[0]
    mask_file = next((trained / "data" / "masks").glob(f"{image_file.stem}*"))
    exif = Image.Exif()
    exif[0x0112] = 3  # turned by 180 degrees for viewers: the sizes cannot tell
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    Image.open(image_file).save(tmp_path / "imgs" / "phone.jpg", exif=exif)
    shutil.copy(mask_file, tmp_path / "masks" / f"phone{mask_file.name[len(image_file.stem):]}")
    result = run("evaluate.py", "-m", trained / "checkpoints" / "last.pth", "--imgs", tmp_path / "imgs", "--masks",
                 tmp_path / "masks", "-o", tmp_path / "scores.csv", "--workers", "0", cwd=tmp_path)
    assert ("note: 1 of the images carry an EXIF orientation (phone.jpg): they are scored as stored, while viewers "
            "show them turned or mirrored; if their masks were drawn on the upright view, save the images upright "
            "first") in result.stderr
    assert (tmp_path / "scores.csv").exists()


def test_an_overlay_may_not_replace_another_inputs_mask_and_a_link_loop_is_one_line(trained: Path,
                                                                                     tmp_path: Path) -> None:
    """Found by a review: car.jpg's overlay and car_overlay.jpg's mask were both out/car_overlay.png (one lost without
    a word, which one a race between writers), and a link to itself among the inputs was a traceback."""
    source = sorted((trained / "data" / "imgs").iterdir())[0]
    (tmp_path / "in").mkdir()
    for name in ("car.jpg", "car_overlay.jpg"):
        shutil.copy(source, tmp_path / "in" / name)
    model = trained / "checkpoints" / "last.pth"
    result = run("predict.py", "-m", model, "-i", tmp_path / "in", "-o", tmp_path / "out", "--overlay", cwd=tmp_path,
                 check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'in' / 'car.jpg'} and {tmp_path / 'in' / 'car_overlay.jpg'} would both write "
        f"{tmp_path / 'out' / 'car_overlay.png'}: predict them into different folders")
    assert not (tmp_path / "out" / "car_overlay.png").exists()  # refused before predicting
    (tmp_path / "in" / "car_overlay.jpg").unlink()
    (tmp_path / "in" / "self.jpg").symlink_to("self.jpg")
    result = run("predict.py", "-m", model, "-i", tmp_path / "in", "-o", tmp_path / "out", "--workers", "0",
                 cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "self.jpg" in result.stdout + result.stderr and (tmp_path / "out" / "car.png").exists()


def test_an_output_name_longer_than_file_systems_take_is_refused_before_predicting(tmp_path: Path) -> None:
    """Found by a review: a 240-byte input name fit as a mask, but its _overlay.png did not, and predict.py stopped
    after the images before it, its --csv rows lost."""
    import predict

    source = tmp_path / ("a" * 240 + ".png")
    mask = tmp_path / "out" / ("a" * 240 + ".png")
    predict.check_name_lengths([source], [[mask]])  # 244 bytes: fine
    with pytest.raises(UserError, match=r"the output a+_overlay.png of .*a+.png would be named 256 bytes long, more "
                                        r"than file systems take \(255\): rename the input"):
        predict.check_name_lengths([source], [[mask, mask.with_name("a" * 244 + "_overlay.png")]])
    predict.check_name_lengths([source], [[]])  # --no-save without other outputs writes nothing: any name will do


def test_predict_batches_same_size_images_wherever_they_stand() -> None:
    import predict

    def item(index: int, height: int) -> dict:
        return {"index": index, "image": torch.full((3, height, 8), index, dtype=torch.uint8), "size": (height * 2, 16)}

    batch = predict.collate_by_size([item(0, 4), item(1, 6), item(2, 4), {"index": 3, "error": "broken"}, item(4, 6)])
    assert [group["indices"] for group in batch["groups"]] == [[0, 2], [1, 4]]
    assert [group["images"][:, 0, 0, 0].tolist() for group in batch["groups"]] == [[0, 2], [1, 4]]
    assert [group["size"] for group in batch["groups"]] == [(8, 16), (12, 16)]
    assert batch["errors"] == ["broken"]


def test_a_folder_of_sizes_in_any_order_is_predicted_and_scored_in_full_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found measuring a folder of 4 tile sizes in random order: each loader batch of 16 held about 4 of each
    size, so the model ran 4 images at a time (89 images/s against 190 for one size; evaluate.py 4x slower still).
    Images of one size now wait for others from the next batches; masks, rows and their order are unchanged."""
    import utils.inference
    import utils.scoring

    write_cells(tmp_path / "data", 8)  # sizes A B B A B B A B
    torch.manual_seed(0)
    model = UNet(1, 2, base_channels=16).eval()
    with torch.no_grad():  # a random model's outputs, centred: about half of each image foreground
        image = torch.from_numpy(np.asarray(Image.open(tmp_path / "data" / "imgs" / "cell0.png"), np.float32) / 255)
        margin = model(image[None, None]).diff(dim=1).median()
        model.outc.conv.bias[1] -= margin
    save_checkpoint(tmp_path / "model.pth", model, [0, 255], scale=1.0)
    sizes: list[int] = []

    def counting(original):
        def predict_logits(model, images, *args, **kwargs):
            sizes.append(len(images))
            return original(model, images, *args, **kwargs)
        return predict_logits

    monkeypatch.setattr(utils.inference, "predict_logits", counting(utils.inference.predict_logits))
    common = ["-m", tmp_path / "model.pth", "--workers", "0"]
    run("predict.py", *common, "-i", tmp_path / "data" / "imgs", "-o", tmp_path / "batched", "--batch-size", "4",
        "--csv", tmp_path / "batched.csv", cwd=tmp_path)
    assert sorted(sizes, reverse=True) == [4, 3, 1]  # the loader's batches held 2 + 2 and 1 + 3
    sizes.clear()
    run("predict.py", *common, "-i", tmp_path / "data" / "imgs", "-o", tmp_path / "alone", "--batch-size", "1",
        "--csv", tmp_path / "alone.csv", cwd=tmp_path)
    assert sizes == [1] * 8
    for mask in sorted((tmp_path / "alone").iterdir()):
        assert np.array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(tmp_path / "batched" / mask.name)))
    batched_rows = (tmp_path / "batched.csv").read_text()
    assert batched_rows.replace(f"{os.sep}batched{os.sep}", f"{os.sep}alone{os.sep}") == \
        (tmp_path / "alone.csv").read_text()
    assert len({line.split(",")[-1] for line in batched_rows.splitlines()}) > 4  # the masks differ

    monkeypatch.setattr(utils.scoring, "predict_logits", counting(utils.scoring.predict_logits))
    sizes.clear()
    scores = run("evaluate.py", *common, "--imgs", tmp_path / "data" / "imgs", "--masks", tmp_path / "data" / "masks",
                 "--batch-size", "4", "-o", tmp_path / "scores.csv", cwd=tmp_path)
    assert sorted(sizes, reverse=True) == [4, 3, 1]  # padded batches of 4, split in runs of one size: 6 calls
    with open(tmp_path / "scores.csv", newline="") as file:
        assert [row["name"] for row in csv.DictReader(file)] == [f"cell{index}" for index in range(8)]
    sizes.clear()
    one_by_one = run("evaluate.py", *common, "--imgs", tmp_path / "data" / "imgs", "--masks",
                     tmp_path / "data" / "masks", "--batch-size", "1", "-o", tmp_path / "alone.json", cwd=tmp_path)
    assert sizes == [1] * 8
    assert one_by_one.stdout.splitlines()[1:-1] == scores.stdout.splitlines()[1:-1]  # the table: all but the paths
    with open(tmp_path / "alone.json") as file:
        assert [row["name"] for row in json.load(file)] == [f"cell{index}" for index in range(8)]


def test_output_paths_that_cannot_be_written_fail_before_the_work(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    evaluation = run("evaluate.py", "-m", trained / "checkpoints" / "last.pth", "--imgs", trained / "data" / "imgs",
                     "--masks", trained / "data" / "masks", "-o", tmp_path / "taken" / "scores.csv", "--workers", "0",
                     cwd=tmp_path, check=False)
    assert evaluation.returncode == 2 and "Traceback" not in evaluation.stderr
    assert evaluation.stderr.strip().splitlines()[-1].startswith("error: cannot make the folder ")
    assert "mean foreground Dice" not in evaluation.stdout  # refused before evaluating, not after
    image = sorted((trained / "data" / "imgs").iterdir())[0]
    prediction = run("predict.py", "-m", trained / "checkpoints" / "last.pth", "-i", image, "-o", tmp_path / "m.png",
                     "--csv", tmp_path / "taken" / "rows.csv", cwd=tmp_path, check=False)
    assert prediction.returncode == 2 and "for --csv (" in prediction.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "m.png").exists()
    folder = run("evaluate.py", "-m", trained / "checkpoints" / "last.pth", "--imgs", trained / "data" / "imgs",
                 "--masks", trained / "data" / "masks", "-o", tmp_path, cwd=tmp_path, check=False)
    assert folder.returncode == 2 and folder.stderr.strip().splitlines()[-1].endswith("is a folder: give a file name")


@pytest.mark.parametrize("script", ["predict.py", "evaluate.py"])
def test_a_flag_refused_while_parsing_is_one_line(script: str, tmp_path: Path) -> None:
    inputs = ["-i", "img.png"] if script == "predict.py" else []
    result = run(script, *inputs, "--tile", "0", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: --tile 0: use a multiple of 16 of at least 64 (e.g. 512)"]


def test_resume_in_an_epoch_of_mixed_sizes_saved_before_batching_by_size_starts_the_epoch_over(
        tmp_path: Path) -> None:
    write_cells(tmp_path / "data", 8)
    flags = ["--validation", "0", *TRAIN_FLAGS, "--batch-size", "2"]
    run("train.py", "--epochs", "1", *flags, cwd=tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=True)
    assert saved["batched_by_size"] is True
    torch.save({**saved, "epoch_batches": 1}, tmp_path / "checkpoints" / "now.pth")  # as if stopped in epoch 2
    older = {key: value for key, value in saved.items() if key != "batched_by_size"}
    torch.save({**older, "epoch_batches": 1}, tmp_path / "checkpoints" / "older.pth")
    # each resumed into a folder of its own: resuming from another file than checkpoints/last.pth would replace it
    result = run("train.py", "--epochs", "2", "--resume", "checkpoints/now.pth", *flags, "--checkpoint-dir", "now",
                 cwd=tmp_path)
    assert "resuming checkpoints/now.pth: epoch 2 after its first 1 batches" in result.stdout
    assert "starts over" not in result.stderr
    assert ("note: checkpoints/now.pth goes on in --checkpoint-dir now; its own folder is left as it "
            "is (pass --checkpoint-dir checkpoints to go on there)") in result.stderr  # found by a review
    result = run("train.py", "--epochs", "2", "--resume", "checkpoints/older.pth", *flags, "--checkpoint-dir",
                 "older", cwd=tmp_path)
    assert ("note: checkpoints/older.pth was saved before batches were formed by image size, so epoch 2 starts "
            "over instead of going on after batch 1") in result.stderr
    assert "resuming checkpoints/older.pth: epoch 2, step 4" in result.stdout


def test_crop_trains_on_windows_of_one_size_validates_whole_images_and_is_kept_on_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import train

    write_carvana_like(tmp_path, 6, size=(96, 64))
    write_cells(tmp_path / "cells", 2)  # and two smaller ones, 48x32 and 36x40, padded to the window
    for path in (tmp_path / "cells" / "imgs").iterdir():
        Image.open(path).convert("RGB").save(tmp_path / "imgs" / path.name)
        Image.open(tmp_path / "cells" / "masks" / path.name).point(lambda v: v // 255).save(
            tmp_path / "masks" / f"{path.stem}_mask.png")
    real_step, shapes = train.train_step, []

    def recording_step(model, images, masks, *args, **kwargs):
        shapes.append(tuple(images.shape[-2:]))
        return real_step(model, images, masks, *args, **kwargs)

    monkeypatch.setattr(train, "train_step", recording_step)
    real_evaluate, validated = train.evaluate, []

    class Recorded:  # the validation loader, its batches' image sizes noted
        def __init__(self, loader):  # noqa: ANN001
            self.loader = loader

        def __len__(self) -> int:
            return len(self.loader)

        def __iter__(self):  # noqa: ANN204
            for batch in self.loader:
                validated.append(tuple(batch["image"].shape[-2:]))
                yield batch

    monkeypatch.setattr(train, "evaluate", lambda model, loader, *args, **kwargs: real_evaluate(
        model, Recorded(loader), *args, **kwargs))
    flags = ["--imgs", str(tmp_path / "imgs"), "--masks", str(tmp_path / "masks"), "--validation", "25",
             "--checkpoint-dir", str(tmp_path / "run"), *TRAIN_FLAGS, "--batch-size", "2"]
    result = train.main(train.get_args_parser().parse_args([*flags, "--epochs", "1", "--crop", "64x48"]))
    output = capsys.readouterr()
    assert "batch 2 of 64x48 crops" in output.out and "sizes: batched by size" not in output.out
    held_out = load_checkpoint(tmp_path / "run" / "last.pth")["validation_images"]
    small = sum(name not in held_out for name in ("cell0", "cell1"))
    assert (f"note: {small} of the 6 training images are smaller than --crop 64x48 after --scale on at least one "
            "side" in output.err) == (small > 0)
    assert shapes == [(48, 64)] * 3 and result["history"][-1]["val_dice"] is not None  # 6 training images
    assert validated and set(validated) <= {(64, 96), (32, 48), (40, 36)}  # whole images, not 64x48 windows

    result = train.main(train.get_args_parser().parse_args([*flags, "--epochs", "2", "--resume", "auto",
                                                            "--crop", "128"]))
    assert "continues with --crop 64x48; --crop 128x128 is ignored" in capsys.readouterr().err
    assert shapes == [(48, 64)] * 6 and load_checkpoint(tmp_path / "run" / "last.pth")["args"]["crop"] == [64, 48]


def test_validation_under_crop_says_once_a_run_that_it_scores_in_tiles(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Under --crop, validation is --tile auto's: images over the memory budget are scored in tiles, said once for
    the run, not at every epoch (the budget patched to a few hundred pixels, growing)."""
    import train
    from utils import inference

    budgets = iter(range(300 * 1904, 10**9, 1904))  # a little more at each call, as free memory moves (a review)
    monkeypatch.setattr(inference, "memory_budget", lambda device, max_memory=None: next(budgets))
    write_carvana_like(tmp_path / "data", 6, size=(96, 64))
    monkeypatch.chdir(tmp_path)
    train.main(train.get_args_parser().parse_args([*TRAIN_FLAGS, "--epochs", "3", "--validation", "34",
                                                   "--crop", "32"]))
    notes = [line for line in capsys.readouterr().err.splitlines() if "tiles of" in line]
    assert len(notes) == 1 and notes[0].startswith("note: 96x64 is predicted in tiles of 64: whole, it does not"), notes


def test_crops_per_image_cuts_that_many_windows_of_each_image_per_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import train

    write_carvana_like(tmp_path, 4, size=(96, 64))
    real_step, windows = train.train_step, []

    def recording_step(model, images, masks, *args, **kwargs):
        windows.extend(image.clone() for image in images)
        return real_step(model, images, masks, *args, **kwargs)

    monkeypatch.setattr(train, "train_step", recording_step)
    flags = ["--imgs", str(tmp_path / "imgs"), "--masks", str(tmp_path / "masks"), "--validation", "0",
             "--checkpoint-dir", str(tmp_path / "run"), *TRAIN_FLAGS, "--batch-size", "2", "--epochs", "1",
             "--augment", "none"]
    crop = ["--crop", "32", "--crop-foreground", "0"]  # windows anywhere: no two alike
    result = train.main(train.get_args_parser().parse_args([*flags, *crop, "--crops-per-image", "3"]))
    assert result["step"] == 6 and len(windows) == 12  # 4 images x 3 windows, batches of 2
    assert "--batchnorm-images" not in capsys.readouterr().err
    assert len({window.numpy().tobytes() for window in windows}) == 12  # each a different window

    train.main(train.get_args_parser().parse_args([*flags, *crop, "--batchnorm-images", "2",
                                                   "--checkpoint-dir", str(tmp_path / "calibrated")]))
    assert "note: --batchnorm-images recomputes BatchNorm's statistics on --crop windows" in capsys.readouterr().err
    for flag, value in (("--crops-per-image", "3"), ("--crop-foreground", "0.5")):
        with pytest.raises(UserError, match=f"{flag} {value} needs --crop"):
            train.main(train.get_args_parser().parse_args([*flags, flag, value]))


def test_a_missing_data_folder_is_said_before_the_run_folder_is_judged(tmp_path: Path) -> None:
    """A typo in --imgs beside an earlier run: the typo is the error to fix, not the run (--overwrite or --resume
    would not help)."""
    import train

    write_carvana_like(tmp_path / "data", 2)
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "last.pth").write_bytes(b"an earlier run")
    flags = ["--checkpoint-dir", str(run_folder), "--masks", str(tmp_path / "data" / "masks")]
    with pytest.raises(UserError, match="already holds a run"):  # the run is judged once the data is there
        train.main(train.get_args_parser().parse_args([*flags, "--imgs", str(tmp_path / "data" / "imgs")]))
    for role, wrong in (("imgs", ["--imgs", str(tmp_path / "data" / "img")]),
                        ("masks", ["--imgs", str(tmp_path / "data" / "imgs"), "--masks", str(tmp_path / "mask")])):
        with pytest.raises(UserError) as error:
            train.main(train.get_args_parser().parse_args([*flags, *wrong]))
        assert str(error.value) == f"{role} folder {wrong[-1]} does not exist: pass --{role} DIR (see download_data.sh)"
    assert (run_folder / "last.pth").read_bytes() == b"an earlier run"


@pytest.mark.parametrize(("flags", "message"), [
    (["--batch-size", "0"], "--batch-size must be a whole number of at least 1, got 0"),
    (["--scale", "1.5"], "--scale must be above 0 and at most 1, got 1.5"),
    (["--grad-clip", "-1"], "--grad-clip must be 0 (no clipping) or more, got -1.0"),
    (["--base-channels", "100000"], "--base-channels must be a whole number from 1 to 256, got 100000"),
    (["--base-channels", "0"], "--base-channels must be a whole number from 1 to 256, got 0"),
])
def test_out_of_range_flags_say_what_is_allowed(flags: list[str], message: str) -> None:
    import train

    with pytest.raises(UserError) as error:
        train.check_args(train.get_args_parser().parse_args(flags))
    assert str(error.value) == message


def test_grad_clip_0_means_no_clipping_not_zero_gradients() -> None:
    import train
    from utils.device import choose_precision

    def weights_after_a_step(grad_clip: float) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Conv2d(3, 2, 3, padding=1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        images, masks = torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2, 8, 8))
        train.train_step(model, images, masks, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                         choose_precision(torch.device("cpu"), precision="fp32"), grad_clip)
        return model.weight.detach().clone()

    torch.manual_seed(0)
    initial = torch.nn.Conv2d(3, 2, 3, padding=1).weight.detach()
    unclipped = weights_after_a_step(0.0)
    assert torch.equal(unclipped, weights_after_a_step(1e12))  # a limit never reached
    assert not torch.allclose(unclipped, initial * (1 - 0.1 * 0.01), atol=1e-3)  # more than weight decay moved them


@pytest.mark.parametrize(("flags", "message"), [
    (["--scale", "0"], "--scale must be above 0"),
    (["--scale", "inf"], "--scale must be above 0 .*, got inf"),
    (["--max-memory", "inf"], "--max-memory must be a positive number of GiB, got inf"),
    (["--mask-threshold", "2"], "--mask-threshold must be a probability between 0 and 1, got 2.0"),
])
def test_predict_and_evaluate_flags_out_of_range_stop_before_any_work(flags: list[str], message: str) -> None:
    import evaluate
    import predict

    with pytest.raises(UserError, match=message):  # before the (missing) model is even opened
        predict.main(predict.get_args_parser().parse_args(["-m", "missing.pth", "-i", "missing.jpg", *flags]))
    with pytest.raises(UserError, match=message):
        evaluate.main(evaluate.get_args_parser().parse_args(["-m", "missing.pth", *flags]))
    with pytest.raises(UserError, match="--batch-size must be a whole number of at least 1, got 0"):
        evaluate.main(evaluate.get_args_parser().parse_args(["-m", "missing.pth", "--batch-size", "0"]))


def test_a_resumed_run_keeps_its_optimizer_settings_and_says_which_flags_it_ignores(tmp_path: Path) -> None:
    """--learning-rate and --weight-decay on a resume were silently ignored (the optimizer state holds the run's),
    and the checkpoint then recorded the ignored values; --load beside --resume was ignored without a word."""
    write_carvana_like(tmp_path / "data", 6)
    flags = ["--validation", "0", *TRAIN_FLAGS]
    run("train.py", "--epochs", "1", *flags, cwd=tmp_path)
    result = run("train.py", "--epochs", "2", "--resume", "auto", *flags, "--learning-rate", "0.003",
                 "--weight-decay", "0.5", "--load", "checkpoints/last.pth", cwd=tmp_path)
    assert "--learning-rate 0.01; --learning-rate 0.003 is ignored" in result.stderr
    assert "--weight-decay 0.0001; --weight-decay 0.5 is ignored" in result.stderr
    assert "continues with its own weights; --load checkpoints/last.pth is ignored" in result.stderr
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert saved["args"]["learning_rate"] == 1e-2 and saved["args"]["weight_decay"] == 1e-4
    assert saved["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4


def test_raising_epochs_on_resume_stretches_the_cosine_to_the_new_end() -> None:
    """CosineAnnealingLR derives each rate from the one before: with T_max changed alone, a finished run went on at
    the floor (1e-6) instead of the stretched curve's rate."""
    import math

    import train

    def cosine(step: int, total: int) -> float:
        return 1e-3 + (0.1 - 1e-3) * (1 + math.cos(math.pi * step / total)) / 2

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20, eta_min=1e-3)
    for _ in range(20):  # a finished run of 20 steps: at the floor
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    train.stretch_schedule(scheduler, 30)
    assert scheduler.get_last_lr()[0] == pytest.approx(cosine(20, 30))
    for step in range(21, 31):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(cosine(step, 30)), step
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # ends at the floor again, at the new end


def test_a_resume_on_grown_data_ends_the_cosine_at_its_last_step(tmp_path: Path) -> None:
    """Found by a review: T_max counted the steps of all epochs at the new size, while the steps done were at the
    old size: the rate ended above the floor (or, on shrunk data, came back up from it)."""
    write_carvana_like(tmp_path / "data", 6)
    flags = ["--validation", "0", *TRAIN_FLAGS, "--batch-size", "2"]
    run("train.py", "--epochs", "1", *flags, cwd=tmp_path)  # 3 steps
    write_carvana_like(tmp_path / "more", 4, seed=1)
    for folder in ("imgs", "masks"):
        for path in (tmp_path / "more" / folder).iterdir():
            path.rename(tmp_path / "data" / folder / f"x{path.name}")
    run("train.py", "--epochs", "2", "--resume", "auto", *flags, cwd=tmp_path)  # 5 more steps on 10 images
    with open(tmp_path / "checkpoints" / "metrics.csv", newline="") as file:
        rates = [float(row["lr"]) for row in csv.DictReader(file)]
    assert rates[-1] == pytest.approx(1e-4)  # the floor (learning rate / 100) at the run's last step


def test_a_resume_by_another_number_of_processes_starts_its_epoch_over(tmp_path: Path) -> None:
    """Each process's share of an epoch depends on their number: a position saved by 2 processes meant nothing to 1,
    which skipped the rest of the epoch."""
    write_carvana_like(tmp_path / "data", 6)
    flags = ["--validation", "0", *TRAIN_FLAGS, "--batch-size", "2"]
    run("train.py", "--epochs", "1", *flags, cwd=tmp_path)
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert saved["processes"] == 1
    saved.update(epoch=0, epoch_batches=1, step=1, processes=2)  # as if saved in epoch 1 by two processes
    torch.save(saved, tmp_path / "two.pth")
    result = run("train.py", "--epochs", "1", *flags, "--resume", "two.pth", "--checkpoint-dir", "again", cwd=tmp_path)
    assert ("was trained by 2 processes, now 1: the global batch is 2 images (was 4; --batch-size is per process); "
            "epoch 1 starts over instead of going on after batch 1") in result.stderr
    assert load_checkpoint(tmp_path / "again" / "last.pth")["step"] == 1 + 3  # the whole epoch: 3 batches of 2


def test_fine_tuning_loaded_weights_keeps_the_meaning_of_their_classes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0/1/2 model fine-tuned on masks holding 0 and 2 only: value 2 stays class 2 (it became class 1)."""
    import train

    write_carvana_like(tmp_path / "data", 6)
    for mask in (tmp_path / "data" / "masks").iterdir():  # 0 background, 1 and 2 in halves of the disc
        values = np.asarray(Image.open(mask)).copy()
        values[:, 24:] *= 2
        mask.unlink()
        Image.fromarray(values).save(mask.with_suffix(".png"))
    flags = ["--epochs", "1", "--validation", "0", *TRAIN_FLAGS]
    run("train.py", *flags, "--checkpoint-dir", "three", cwd=tmp_path)
    assert load_checkpoint(tmp_path / "three" / "last.pth")["mask_values"] == [0, 1, 2]
    shutil.copytree(tmp_path / "data", tmp_path / "only2")
    for mask in (tmp_path / "only2" / "masks").glob("*.png"):
        values = np.asarray(Image.open(mask))
        Image.fromarray(np.where(values == 1, 0, values).astype(np.uint8)).save(mask)
    result = run("train.py", *flags, "--imgs", "only2/imgs", "--masks", "only2/masks", "--load", "three/last.pth",
                 "--checkpoint-dir", "tuned", cwd=tmp_path)
    assert "the masks hold values [0, 2] of the [0, 1, 2] three/last.pth was trained on: each keeps its class" \
        in result.stderr
    assert "mask values [0, 1, 2], 3 classes" in result.stdout
    tuned = load_checkpoint(tmp_path / "tuned" / "last.pth")
    assert tuned["mask_values"] == [0, 1, 2] and tuned["model_args"]["n_classes"] == 3
    trained_on: set[int] = set()  # the class indices the training steps see, not only the metadata saved
    real_step = train.train_step

    def recording_step(model, images, masks, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        trained_on.update(masks[masks >= 0].unique().tolist())
        return real_step(model, images, masks, *args, **kwargs)

    monkeypatch.setattr(train, "train_step", recording_step)
    monkeypatch.chdir(tmp_path)
    train.main(train.get_args_parser().parse_args([*flags, "--imgs", "only2/imgs", "--masks", "only2/masks",
                                                   "--load", "three/last.pth", "--checkpoint-dir", "again"]))
    assert trained_on == {0, 2}  # value 2 is class 2


def test_binary_masks_in_two_encodings_are_refused_unless_classes_say_otherwise(tmp_path: Path) -> None:
    write_carvana_like(tmp_path / "data", 6)
    for index, mask in enumerate(sorted((tmp_path / "data" / "masks").iterdir())):
        values = np.asarray(Image.open(mask)) * (255 if index % 2 else 1)
        mask.unlink()
        Image.fromarray(values.astype(np.uint8)).save(mask.with_suffix(".png"))
    flags = ["--epochs", "1", "--validation", "0", *TRAIN_FLAGS]
    result = run("train.py", *flags, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "the masks mix two binary encodings, 3 with values 0/1" in result.stderr
    assert "pass --binarize 0 (any nonzero value is the object), or --classes 3 if 1 and 255 are two classes" \
        in result.stderr
    result = run("train.py", *flags, "--binarize", "0", cwd=tmp_path)
    assert "mask values [0, 1], 2 classes" in result.stdout


def test_instance_labels_read_as_classes_are_named_as_such_in_training_and_evaluation(tmp_path: Path) -> None:
    """Found by a review: with one value per object, each in one image, the held-out-only warning advised another
    --seed (no seed helps), the run's line printed all 301 values, and evaluate.py's headline read 0.91 for a
    model that found nothing: the means over images count each absent class of an image as a Dice of 1."""
    rng = np.random.default_rng(0)
    for folder in ("imgs", "masks"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for index in range(6):
        labels = np.zeros((32, 48), np.uint16)
        for part in range(4):  # four squares an image, numbered on through the data set
            top, left = 4 + (part // 2) * 14, 4 + (part % 2) * 22
            labels[top:top + 10, left:left + 10] = index * 4 + part + 1
        image = rng.normal(80, 10, (32, 48)) + 120 * (labels > 0)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(tmp_path / "data" / "imgs" / f"cell{index}.png")
        Image.fromarray(labels).save(tmp_path / "data" / "masks" / f"cell{index}.png")
    result = run("train.py", "--epochs", "1", "--validation", "34", *TRAIN_FLAGS, cwd=tmp_path)
    assert "they look like instance labels (one value per object): pass --binarize to train foreground vs " \
           "background" in result.stderr and "another --seed" not in result.stderr
    summary = next(line for line in result.stdout.splitlines() if "training and 2 validation images" in line)
    assert "mask values [0, 1, 2, 3, 4, 5, 6, 7, ...]" in summary and len(summary) < 300

    result = run("evaluate.py", "-m", "checkpoints/last.pth", cwd=tmp_path)
    scores = headline(result)
    per_image, pooled = float(scores.split()[3]), float(scores.split("pooled over all pixels: Dice ")[1].split()[0])
    assert per_image > 0.5 > pooled  # the free 1s of the absent classes, and the score of what was found


def test_class_pixel_counts_follow_the_runs_numbering_of_the_classes() -> None:
    """--class-weights auto of a resumed or loaded run whose classes are 0/1/2 on masks holding 0 and 2: the pixels
    of value 2 belong to class 2 (they were counted for class 1)."""
    import train

    assert train.pixels_per_class([0, 1, 2], [0, 2], [900, 100]) == [900, 0, 100]
    assert train.pixels_per_class([[0, 0, 0], [255, 0, 0]], [[255, 0, 0]], [7]) == [0, 7]


def test_score_and_count_files_must_be_named_as_such(trained: Path) -> None:
    """Found by a review: --csv model.pth or evaluate.py -o mask.gif replaced a checkpoint or a ground-truth mask."""
    import evaluate
    import predict

    model = trained / "checkpoints" / "best.pth"
    before = model.read_bytes()
    image = sorted((trained / "data" / "imgs").iterdir())[0]
    for target in (model, image):
        with pytest.raises(UserError, match=r"--csv .* give a file name ending in .csv"):
            predict.main(predict.get_args_parser().parse_args(["-m", str(model), "-i", str(image), "--no-save",
                                                               "--csv", str(target)]))
    with pytest.raises(UserError, match=r"--output .*best.pth: give a file name ending in .csv or .json"):
        evaluate.main(evaluate.get_args_parser().parse_args([
            "-m", str(model), "--imgs", str(trained / "data" / "imgs"), "--masks", str(trained / "data" / "masks"),
            "-o", str(model), "--workers", "0"]))
    assert model.read_bytes() == before


@pytest.mark.parametrize("device", ["mps", "meta", "cuda:7"])
def test_a_device_this_machine_lacks_is_one_line(device: str) -> None:
    from utils.device import choose_device

    with pytest.raises(UserError, match=rf"--device {device}"):
        choose_device(device)


def test_images_under_32_px_never_train_alone_in_a_batch(tmp_path: Path) -> None:
    """Found by a review: a batch of one 24x24 image (its deepest map 1x1) crashed BatchNorm with a traceback, also
    at the --scale train.py itself suggested."""
    write_carvana_like(tmp_path / "data", 6, size=(24, 24))
    flags = [*TRAIN_FLAGS, "--epochs", "2", "--validation", "17", "--batchnorm-images", "5"]
    result = run("train.py", *flags, cwd=tmp_path)  # 5 training images in batches of 4: the fifth joins them
    assert "5 training and 1 validation images" in result.stdout
    rows = list(csv.DictReader(open(tmp_path / "checkpoints" / "metrics.csv")))
    assert [row["step"] for row in rows] == ["1", "2"]  # one batch of 5 per epoch, not 4 and a lone fifth
    result = run("train.py", *flags, "--batch-size", "1", "--checkpoint-dir", "one", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: 5 training images are under 32 px on both sides at --scale 1 (e.g. ")
    assert result.stderr.strip().endswith("24x24): the U-Net's deepest map of one is 1x1, and BatchNorm cannot train "
                                          "on a batch of one such image: use --batch-size 2 or more")  # no scale > 1
    write_carvana_like(tmp_path / "half" / "data", 6, size=(48, 48))
    halved = [flag if flag != "1" or before != "--scale" else "0.5" for before, flag in zip(["", *flags], flags)]
    result = run("train.py", *halved, "--batch-size", "1", cwd=tmp_path / "half", check=False)
    assert result.stderr.strip().endswith("use --batch-size 2 or more, or a larger --scale")


def test_file_names_that_are_not_utf8_train_and_are_listed_in_the_csv_files(tmp_path: Path) -> None:
    """Found by a review: a file named x<0xff>.jpg (Linux names are bytes) passed the data check, then train.py
    stopped with a UnicodeEncodeError, and predict.py and evaluate.py failed writing their CSV after the work."""
    data = write_carvana_like(tmp_path / "data", 4)
    odd = os.fsdecode(b"x\xff_01")
    (data / "imgs" / "c0ffee000000_01.jpg").rename(data / "imgs" / f"{odd}.jpg")
    (data / "masks" / "c0ffee000000_01_mask.gif").rename(data / "masks" / f"{odd}_mask.gif")
    run("train.py", "--epochs", "1", "--validation", "25", *TRAIN_FLAGS, cwd=tmp_path)
    run("predict.py", "-m", "checkpoints/last.pth", "-i", data / "imgs", "-o", tmp_path / "out", "--csv",
        "--workers", "0", cwd=tmp_path)
    assert b"x\xff_01.jpg" in (tmp_path / "out" / "predictions.csv").read_bytes()  # the name's own bytes
    run("evaluate.py", "-m", "checkpoints/last.pth", "-o", "scores.csv", "--workers", "0", cwd=tmp_path)
    assert b"x\xff_01" in (tmp_path / "scores.csv").read_bytes()


@pytest.mark.parametrize(("flags", "message"), [
    (["--seed", str(2**32)], f"--seed must be a whole number from 0 to {2**32 - 1}, got {2**32}"),
    (["--classes", "1000000000"], "--classes must be a whole number from 1 to 65536, got 1000000000"),
    (["--crop", "32", "--crops-per-image", "1000000000"],
     "--crops-per-image must be a whole number from 1 to 10000, got 1000000000"),
    (["--workers", "1000000000"], f"--workers must be 0 (none) to {4 * (os.cpu_count() or 1)} (4 per core here), "
                                  "got 1000000000"),
    (["--binarize", "-1"], "--binarize must be 0 or more, got -1"),
    (["--save-every", "nanm"], "--save-every 'nanm': give a number of steps (500) or of minutes (15m)"),
    (["--save-every", "infm"], "--save-every 'infm': give a number of steps (500) or of minutes (15m)"),
])
def test_absurd_flag_values_are_refused_before_they_hang_or_crash(flags: list[str], message: str) -> None:
    """Found by a flag-by-flag review: --classes 1e9 hung (a quadratic search for unused labels), --seed 2**32
    and --crops-per-image 1e9 ended in tracebacks, --workers 1e9 forked until the machine stalled, and
    --save-every nanm was accepted and never saved."""
    import train

    with pytest.raises(UserError) as error:
        train.check_args(train.get_args_parser().parse_args(flags))
    assert str(error.value) == message


def test_every_script_takes_workers_binarize_and_folders_alike(tmp_path: Path) -> None:
    """Found by a review: the data check took --binarize -1 that train.py refuses, predict.py started 24 loader
    processes for 2 images, and a file given as a data folder was said not to exist."""
    import train
    from utils import check_data

    write_cells(tmp_path, 2)
    torch.save({**UNet(3, 2, base_channels=4).state_dict(), "mask_values": [0, 255]}, tmp_path / "m.pth")
    for flags, message in ((["--binarize", "-1"], "--binarize must be 0 or more, got -1"),
                           (["--workers", "1000000000"], r"--workers must be 0 \(none\) to")):
        with pytest.raises(UserError, match=message):
            check_data.main(check_data.get_args_parser().parse_args(
                ["--imgs", str(tmp_path / "imgs"), "--masks", str(tmp_path / "masks"), *flags]))
    result = run("predict.py", "-m", "m.pth", "-i", "imgs", "-o", "out", "--workers", "8", "--scale", "1",
                 cwd=tmp_path)
    assert "(--workers 2)" in result.stdout + result.stderr  # two images: two loader processes at most
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError) as error:
        train.check_args(train.get_args_parser().parse_args(["--imgs", str(tmp_path / "a_file")]))
    assert str(error.value) == f"imgs folder {tmp_path / 'a_file'} is a file, not a folder: pass --imgs DIR " \
                               "(see download_data.sh)"
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # found by a review: a traceback in evaluate.py
    for script in ("evaluate.py", "-m utils.check_data"):
        result = run(script, *(["-m", "m.pth"] if script == "evaluate.py" else []), "--imgs", "loop", "--masks",
                     "loop", cwd=tmp_path, check=False)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
            "error: imgs folder loop is a link that leads back to itself: pass --imgs DIR (see download_data.sh)")


def test_a_quoted_tilde_in_a_path_is_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: '~/x' in quotes, or after --out=, reached the scripts unexpanded, so they read and wrote a
    folder named '~' in the current one, while their messages looked like the home folder."""
    home = tmp_path / "home"
    write_cells(home, 2)
    torch.save({**UNet(3, 2, base_channels=4).state_dict(), "mask_values": [0, 255]}, home / "m.pth")
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "here").mkdir()
    run("predict.py", "-m", "~/m.pth", "-i", "~/imgs", "-o", "~/out/", "--scale", "1", cwd=tmp_path / "here")
    run("evaluate.py", "-m", "~/m.pth", "--imgs", "~/imgs", "--masks", "~/masks", "-o", "~/e.csv", "--scale", "1",
        "--workers", "0", cwd=tmp_path / "here")
    assert len(list((home / "out").iterdir())) == 2 and (home / "e.csv").exists()
    assert list((tmp_path / "here").iterdir()) == []
    from utils.errors import home_expanded  # a mask suffix is part of a name, not a path (found by a code review)

    expanded = home_expanded(argparse.Namespace(mask_suffix="~", imgs=Path("~/imgs")))
    assert expanded.mask_suffix == "~" and expanded.imgs == home / "imgs"


def test_extra_classes_get_unused_labels_quickly() -> None:
    from utils.mask_encoding import complete_mask_values

    values = complete_mask_values([0, 3, 255], 65535, avoid=1)
    assert len(values) == 65535 and len(set(values)) == 65535 and 1 not in values
    assert values[:6] == [0, 3, 255, 2, 4, 5] and values[-1] == 65535  # 1 avoided, 0 3 255 taken


def test_empty_input_or_output_names_and_npy_outputs_are_refused_plainly(tmp_path: Path) -> None:
    """Found by reviews: -o '' wrote the masks into the current folder, -i '' said "input folder  holds no image
    files", and -o x.npy was told a .npy would not keep the class values (it would; it is just not written)."""
    write_cells(tmp_path, 1)
    torch.save({**UNet(3, 2, base_channels=4).state_dict(), "mask_values": [0, 255]}, tmp_path / "m.pth")
    for flags, said in ((["-i", "", "-o", "out.png"], "error: an --input is an empty name: give a file, a folder "
                                                      "or a pattern ('imgs/*.jpg')"),
                        (["-i", "imgs/cell0.png", "-o", ""], "error: an --output is an empty name: give a file "
                                                             "(mask.png) or a folder (masks/)"),
                        (["-i", "imgs/cell0.png", "-o", "x.npy"], "error: output x.npy: masks are written as image "
                         "files (.png, .gif, .bmp, .tif, .tiff): end it in .png (--save-probs adds the probabilities "
                         "as <mask>_probs.npy)")):
        result = run("predict.py", "-m", "m.pth", *flags, cwd=tmp_path, check=False)
        assert (result.returncode, result.stderr.strip()) == (2, said)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["imgs", "m.pth", "masks"]


def test_a_run_saved_before_the_fused_optimizer_resumes(tmp_path: Path) -> None:
    """Found by a review of old run folders: a last.pth of the first commits (AdamW without `fused`) made
    --resume end in "Expected grad_scale and found_inf to be None": its saved param_groups chose the unfused
    kernel, while the non-finite guard and GradScaler passed the fused kernel's flags."""
    write_carvana_like(tmp_path, 6)
    flags = ["--imgs", "imgs", "--masks", "masks", "--validation", "34", "--checkpoint-dir", "run", *TRAIN_FLAGS,
             "--batch-size", "2"]
    run("train.py", *flags, "--epochs", "1", cwd=tmp_path)
    checkpoint = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    for group in checkpoint["optimizer"]["param_groups"]:
        assert group["fused"] is True
        group["fused"] = group["foreach"] = None  # as AdamW(...) without `fused` saved them
    torch.save(checkpoint, tmp_path / "run" / "last.pth")
    result = run("train.py", *flags, "--epochs", "2", "--resume", "auto", cwd=tmp_path)
    assert "epoch 2: train loss" in result.stdout + result.stderr
    resumed = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert resumed["epoch"] == 2 and all(group["fused"] for group in resumed["optimizer"]["param_groups"])


def test_evaluate_says_when_a_reference_checkpoints_mask_values_are_assumed(tmp_path: Path) -> None:
    """Found by a review: a reference state_dict without mask_values, scored on 0/255 masks, was refused with
    "fix the mask or train with it included" though the masks were right: the values were a guess."""
    write_cells(tmp_path, 2)  # 0/255 masks
    torch.save(UNet(3, 3, base_channels=4).state_dict(), tmp_path / "plain.pth")  # taken as 0/1/2
    result = run("evaluate.py", "-m", "plain.pth", "--imgs", "imgs", "--masks", "masks", "--scale", "1",
                 "--workers", "0", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "note: plain.pth holds no mask_values, so its classes are taken to be the mask values [0, 1, 2]; if its " \
           "masks used others, add one per class to it and save it again, e.g. checkpoint['mask_values'] = [0, 128, " \
           "255]" in result.stderr  # one value per class (found by a message audit: the example held two)
    torch.save({**UNet(3, 2, base_channels=4).state_dict(), "mask_values": [[0, 0, 0], [255, 0, 0]]},
               tmp_path / "colour.pth")
    result = run("evaluate.py", "-m", "colour.pth", "--imgs", "imgs", "--masks", "masks", "--scale", "1",
                 "--workers", "0", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "note:" not in result.stderr
    assert result.stderr.strip().endswith("cell0.png is a single-channel mask, but the model was trained on RGB "
                                          "colour masks (classes [[0, 0, 0], [255, 0, 0]]): score it on masks saved "
                                          "the way its training masks were")
    (tmp_path / "one").mkdir()
    shutil.copy(tmp_path / "imgs" / "cell0.png", tmp_path / "one")
    (tmp_path / "one" / "broken.png").write_bytes(b"not a png")
    result = run("predict.py", "-m", "colour.pth", "-i", "one", "-o", "out/", "--scale", "1", cwd=tmp_path,
                 check=False)
    assert result.returncode == 1 and "mask of 1 image saved in out" in result.stdout  # not "masks of 1 images"


def test_a_folder_prediction_leaves_out_hidden_files(tmp_path: Path) -> None:
    """Found by a macOS review: the ._cell0.png that macOS writes beside cell0.png on shared drives was read as an
    image, and the run ended "1 of 2 images could not be predicted"."""
    write_cells(tmp_path, 1)
    (tmp_path / "imgs" / "._cell0.png").write_bytes(os.urandom(4096))
    (tmp_path / "imgs" / ".hidden.png").write_bytes(os.urandom(4096))  # any hidden file, not only macOS's
    torch.save({**UNet(3, 2, base_channels=4).state_dict(), "mask_values": [0, 255]}, tmp_path / "m.pth")
    result = run("predict.py", "-m", "m.pth", "-i", "imgs", "-o", "out/", "--scale", "1", cwd=tmp_path)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["cell0.png"] and "skipped" not in \
        result.stderr


def test_classes_beyond_the_labels_a_mask_file_holds_are_refused_before_training(tmp_path: Path) -> None:
    """Found by a review: --classes 65536 with an --ignore-index gave a class the label 65536, which predict.py
    then could not write."""
    write_cells(tmp_path, 3)
    result = run("train.py", "--imgs", "imgs", "--masks", "masks", "--classes", "65536", "--ignore-index", "7",
                 "--checkpoint-dir", "run", *TRAIN_FLAGS, cwd=tmp_path, check=False)
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (
        2, "error: --classes 65536 leaves a class without a label a mask file can hold (0 to 65535, but for "
           "--ignore-index 7): use --classes 65535")


def test_an_array_of_the_wrong_shape_is_skipped_when_the_batch_size_is_chosen(tmp_path: Path) -> None:
    """Found by a review: sizing the CPU batch read a 1-D .npy's shape and ended in a traceback."""
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "good.npy", np.zeros((32, 32, 3), np.uint8))
    np.save(tmp_path / "in" / "flat.npy", np.zeros(64, np.uint8))
    torch.save({**UNet(3, 2, base_channels=4).state_dict(), "mask_values": [0, 255]}, tmp_path / "m.pth")
    result = run("predict.py", "-m", "m.pth", "-i", "in", "-o", "out/", "--scale", "1", "--workers", "0",
                 cwd=tmp_path, check=False)
    assert result.returncode == 1 and (tmp_path / "out" / "good.png").exists()
    assert "flat.npy has shape (64,): expected HxW, HxWx3, HxWx4 or channels first (3xHxW)" in result.stdout + \
        result.stderr
