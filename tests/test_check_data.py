"""The data check: cached parallel inspection of files, mask values, the report and its CLI."""

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import box_mask, noisy_rgb, run_script, write_image
from PIL import Image

import utils.check_data as check_data
from utils.check_data import CACHE_NAME, CACHE_VERSION, check_dataset, inspect_image, scan_mask_values
from utils.checkpoint import load_checkpoint
from utils.data_loading import SegmentationDataset, collate_skipping, list_pairs, make_loader, read_image, read_mask
from utils.dice_score import class_weights_from_pixels
from utils.errors import UserError

RED, GREEN, BLACK = [255, 0, 0], [0, 255, 0], [0, 0, 0]


def colour_mask(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# --- scan_mask_values and its cache -----------------------------------------------------------------


@pytest.fixture
def mask_folder(tmp_path):
    folder = tmp_path / "masks"
    write_image(folder / "a.png", np.array([[0, 255], [255, 0]], dtype=np.uint8))
    write_image(folder / "b.png", np.array([[0, 128], [0, 0]], dtype=np.uint8))
    write_image(folder / "c.png", np.array([[0, 0], [0, 0]], dtype=np.uint8))
    return folder


def mask_paths(folder):
    return sorted(folder.glob("*.png"))


def record_scans(monkeypatch) -> list[str]:
    """Let _scan_one run, but record which files it was called for."""
    calls: list[str] = []
    original = check_data._inspect_one

    def recording(kind, path):
        calls.append(os.path.basename(path))
        return original(kind, path)

    monkeypatch.setattr(check_data, "_inspect_one", recording)
    return calls


def forbid_scans(monkeypatch) -> None:
    def refuse(kind, path):
        raise AssertionError(f"{path} was rescanned although the cache is fresh")

    monkeypatch.setattr(check_data, "_inspect_one", refuse)


def test_scan_returns_sorted_union_of_all_masks(mask_folder, monkeypatch):
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 128, 255]
    assert sorted(calls) == ["a.png", "b.png", "c.png"]


def test_scan_writes_cache_beside_the_masks(mask_folder):
    scan_mask_values(mask_paths(mask_folder), workers=1)
    cache = json.loads((mask_folder / CACHE_NAME).read_text())
    assert cache["version"] == CACHE_VERSION
    assert {name: entry["record"]["values"] for name, entry in cache["files"].items()} == {
        "mask:a.png": [0, 255], "mask:b.png": [0, 128], "mask:c.png": [0]}
    stat = (mask_folder / "a.png").stat()
    assert cache["files"]["mask:a.png"]["key"] == [stat.st_size, stat.st_mtime_ns]
    assert sorted(p.name for p in mask_folder.iterdir()) == [CACHE_NAME, "a.png", "b.png", "c.png"]


def test_second_scan_reads_only_the_cache(mask_folder, monkeypatch):
    first = scan_mask_values(mask_paths(mask_folder), workers=1)
    forbid_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == first == [0, 128, 255]


def test_rewritten_mask_is_the_only_one_rescanned(mask_folder, monkeypatch):
    scan_mask_values(mask_paths(mask_folder), workers=1)
    path = mask_folder / "b.png"
    old_mtime = path.stat().st_mtime_ns
    write_image(path, np.array([[0, 64], [64, 0]], dtype=np.uint8))
    os.utime(path, ns=(old_mtime + 5_000_000_000, old_mtime + 5_000_000_000))
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 64, 255]
    assert calls == ["b.png"]
    forbid_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 64, 255]


def test_changed_mtime_alone_triggers_a_rescan_of_that_file(mask_folder, monkeypatch):
    scan_mask_values(mask_paths(mask_folder), workers=1)
    path = mask_folder / "c.png"
    mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(mtime - 7_000_000_000, mtime - 7_000_000_000))
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 128, 255]
    assert calls == ["c.png"]


def test_new_mask_is_scanned_and_old_ones_come_from_cache(mask_folder, monkeypatch):
    scan_mask_values(mask_paths(mask_folder), workers=1)
    write_image(mask_folder / "d.png", np.array([[0, 3]], dtype=np.uint8))
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 3, 128, 255]
    assert calls == ["d.png"]


def test_corrupt_cache_is_ignored_and_rewritten(mask_folder, monkeypatch):
    (mask_folder / CACHE_NAME).write_text("{not json")
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 128, 255]
    assert sorted(calls) == ["a.png", "b.png", "c.png"]
    assert json.loads((mask_folder / CACHE_NAME).read_text())["version"] == CACHE_VERSION


def test_scan_of_colour_masks_returns_sorted_colours(tmp_path):
    write_image(tmp_path / "a.png", colour_mask([[RED, BLACK]]))
    write_image(tmp_path / "b.png", colour_mask([[GREEN, BLACK]]))
    assert scan_mask_values(mask_paths(tmp_path), workers=1) == [BLACK, GREEN, RED]


def test_scan_of_nothing_is_empty():
    assert scan_mask_values([]) == []


def test_mixing_scalar_and_colour_masks_raises_user_error_naming_files(tmp_path):
    write_image(tmp_path / "gray.png", np.array([[0, 255]], dtype=np.uint8))
    write_image(tmp_path / "colour.png", colour_mask([[RED, GREEN]]))
    with pytest.raises(UserError) as error:
        scan_mask_values(mask_paths(tmp_path), workers=1)
    assert "gray.png" in str(error.value) and "colour.png" in str(error.value)




# --- check_dataset on a deliberately broken folder ------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
H, W = 32, 48


def write_good_pairs(root: Path, count: int = 3) -> None:
    for i in range(count):
        write_image(root / "imgs" / f"good{i}.png", noisy_rgb(i))
        write_image(root / "masks" / f"good{i}_mask.png", box_mask())


def build_broken_folder(root: Path, size_mismatch: bool = True) -> dict[str, Path]:
    """3 good pairs (masks named <image>_mask.png) and one of each problem; returns the problem files."""
    imgs, masks = root / "imgs", root / "masks"
    write_good_pairs(root)
    files = {}
    # a truncated JPEG: valid header, half the data
    files["truncated"] = imgs / "trunc.jpg"
    write_image(files["truncated"], noisy_rgb(10))
    data = files["truncated"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    write_image(masks / "trunc_mask.png", box_mask())
    # a zero-byte image
    files["zero"] = imgs / "zero.png"
    files["zero"].write_bytes(b"")
    write_image(masks / "zero_mask.png", box_mask())
    # a mask of random bytes with a .png name
    write_image(imgs / "junk.png", noisy_rgb(11))
    files["junk"] = masks / "junk_mask.png"
    files["junk"].write_bytes(np.random.default_rng(12).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (imgs / "notes.txt").write_text("not an image")
    if size_mismatch:
        write_image(imgs / "bigmask.png", noisy_rgb(13))
        write_image(masks / "bigmask_mask.png", box_mask(16, 24))
    files["lonely_image"] = write_image(imgs / "alone.png", noisy_rgb(14))
    files["lonely_mask"] = write_image(masks / "orphan_mask.png", box_mask())
    write_image(imgs / "empty.png", noisy_rgb(15))
    files["empty_mask"] = write_image(masks / "empty_mask.png", np.zeros((H, W), np.uint8))
    return files


def test_broken_folder_check_finds_every_problem_and_keeps_the_usable_pairs(tmp_path: Path) -> None:
    files = build_broken_folder(tmp_path)
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert check.mask_suffix == "_mask"
    assert sorted(pair.name for pair in check.pairs) == ["empty", "good0", "good1", "good2"]
    assert check.mask_values == [0, 1]
    assert len(check.unreadable) == 3
    for key in ("truncated", "zero", "junk"):
        naming = [message for message in check.unreadable if str(files[key]) in message]
        assert len(naming) == 1, (key, check.unreadable)
        assert naming[0].startswith("cannot read")
    assert check.size_mismatches == ["bigmask.png is 48x32 but bigmask_mask.png is 24x16"]
    assert check.lonely_images == ["alone.png"]
    assert check.lonely_masks == ["orphan_mask.png"]
    assert check.empty_masks == ["empty_mask.png"]
    assert check.problems is True

    report = check.report()
    lines = report.splitlines()
    assert 5 <= len(lines) < 20
    assert lines[0].startswith("data check: 4 usable pairs")
    for name in ("trunc.jpg", "zero.png", "junk_mask.png", "bigmask.png", "bigmask_mask.png", "48x32", "24x16",
                 "alone.png", "orphan_mask.png", "empty_mask.png"):
        assert name in report, name
    assert "notes.txt" not in report
    assert sum(line.startswith("  unreadable: ") for line in lines) == 3


def test_check_data_cli_exit_codes_report_problems_clean_data_and_user_errors(tmp_path: Path) -> None:
    build_broken_folder(tmp_path / "broken")
    broken = run_script("-m utils.check_data", "--imgs", tmp_path / "broken" / "imgs",
                        "--masks", tmp_path / "broken" / "masks", "--workers", "1", cwd=REPO)
    assert broken.returncode == 1, broken.stderr
    expected = check_dataset(tmp_path / "broken" / "imgs", tmp_path / "broken" / "masks", workers=1).report()
    assert broken.stdout.strip() == expected
    assert "unreadable: cannot read" in broken.stdout and "size mismatch: bigmask.png" in broken.stdout

    write_good_pairs(tmp_path / "clean")
    clean = run_script("-m utils.check_data", "--imgs", tmp_path / "clean" / "imgs",
                       "--masks", tmp_path / "clean" / "masks", cwd=REPO)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.startswith("data check: 3 usable pairs")
    assert "unreadable" not in clean.stdout and "size mismatch" not in clean.stdout

    missing = tmp_path / "nowhere"
    absent = run_script("-m utils.check_data", "--imgs", missing, "--masks", tmp_path / "clean" / "masks", cwd=REPO,
                        real_process=True)
    assert absent.returncode == 2
    error_lines = [line for line in absent.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and error_lines[0].startswith("error: ") and str(missing) in error_lines[0]
    assert "Traceback" not in absent.stderr and absent.stdout == ""
    in_process = run_script("-m utils.check_data", "--imgs", missing, "--masks", tmp_path / "clean" / "masks", cwd=REPO)
    assert (in_process.returncode, in_process.stdout, in_process.stderr) == (2, "", absent.stderr)  # as a real one

    debug = run_script("-m utils.check_data", "--imgs", missing, "--masks", tmp_path / "clean" / "masks", "--debug",
                       cwd=REPO)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "UserError" in debug.stderr and str(missing) in debug.stderr


# --- suggestions ----------------------------------------------------------------------------------------------------


def write_pairs_with(root: Path, masks: list[np.ndarray], images: list[np.ndarray] | None = None) -> tuple[Path, Path]:
    for i, mask in enumerate(masks):
        height, width = mask.shape[:2]
        write_image(root / "imgs" / f"s{i}.png", images[i] if images else noisy_rgb(i, height, width))
        write_image(root / "masks" / f"s{i}.png", mask)
    return root / "imgs", root / "masks"


def instance_labels(first: int, count: int) -> np.ndarray:
    labels = np.zeros((H, W), np.uint16)
    for k in range(count):
        top, left = (k // 6) * 8, (k % 6) * 8
        labels[top + 1:top + 7, left + 1:left + 7] = first + k
    return labels


def test_masks_of_one_value_as_read_are_the_problem_said_not_empty_masks(tmp_path: Path) -> None:
    """Found by a review: with --ignore-index 0, masks of objects only were listed as "empty (background only)"
    and the check exited 0, while train.py refused the same data."""
    imgs, masks = write_pairs_with(tmp_path, [instance_labels(1, 5), instance_labels(6, 5)])
    result = run_script("-m utils.check_data", "--imgs", imgs, "--masks", masks, "--binarize", "--ignore-index",
                        "0", cwd=REPO)
    assert result.returncode == 1
    assert "empty masks" not in result.stdout and "masks: 16-bit labels (2) binarized" in result.stdout
    assert f"every mask in {masks} holds the one value 1 with --binarize 0 and --ignore-index 0: there is nothing " \
           "to tell apart; check the mask folder, --binarize, --ignore-index" in result.stdout
    assert "; 1 class\n" in result.stdout


def test_instance_labels_suggest_binarize_unless_binarize_is_on(tmp_path: Path) -> None:
    imgs, masks = write_pairs_with(tmp_path, [instance_labels(1, 12), instance_labels(13, 12)])
    check = check_dataset(imgs, masks, workers=1)
    assert check.mask_values == list(range(25))
    binarize_hints = [hint for hint in check.suggestions() if "--binarize" in hint]
    assert len(binarize_hints) == 1 and "25 distinct mask values" in binarize_hints[0]
    assert "suggestion: " + binarize_hints[0] in check.report()

    binarized = check_dataset(imgs, masks, binarize=True, workers=1)
    assert binarized.mask_values == [0, 1]
    assert not any("--binarize" in hint for hint in binarized.suggestions())
    assert "binarized" in binarized.report()


def write_jpeg_masks(root: Path, count: int = 3) -> float:
    """RGB images with 0/255 disc masks saved as JPEG (lossy, as users sometimes do); the discs' true share."""
    yy, xx = np.mgrid[:H, :W]
    disc = ((yy - H // 2) ** 2 + (xx - W // 2) ** 2 < 100).astype(np.uint8) * 255
    for i in range(count):
        write_image(root / "imgs" / f"s{i}.png", noisy_rgb(i))
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(disc).save(root / "masks" / f"s{i}.jpg", quality=90)
    return float((disc > 0).mean())


def test_jpeg_masks_with_made_up_values_are_a_problem_until_binarized_above_a_threshold(tmp_path: Path) -> None:
    share = write_jpeg_masks(tmp_path)
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert len(check.mask_values) > 2 and check.blurred_masks == ["s0.jpg", "s1.jpg", "s2.jpg"]
    assert check.problems and check.unresolved_lossy_masks
    report = check.report()
    assert "JPEG masks with in-between values (lossy compression blurs edges): 3 (s0.jpg, s1.jpg, s2.jpg)" in report
    assert "suggestion: save the masks as PNG (lossless), or pass --binarize 127" in report
    assert "instance labels" not in report  # the made-up values are not objects
    assert "s0.jpg" in check.lossy_mask_error() and "--binarize 127" in check.lossy_mask_error()

    nonzero = check_dataset(tmp_path / "imgs", tmp_path / "masks", binarize=0, workers=1)
    assert nonzero.unresolved_lossy_masks and "--binarize 127" in nonzero.lossy_mask_error()  # ringing is nonzero
    sorted_out = check_dataset(tmp_path / "imgs", tmp_path / "masks", binarize=127, workers=1)
    assert sorted_out.mask_values == [0, 1] and not sorted_out.problems
    assert sorted_out.class_fractions[1] == pytest.approx(share, abs=0.01)
    assert "binarized (above 127 = foreground)" in sorted_out.report()


def write_lossy_masks(root: Path, masks: list[np.ndarray], suffix: str, **save: object) -> None:
    for i, mask in enumerate(masks):
        write_image(root / "imgs" / f"s{i}.png", noisy_rgb(i, *mask.shape[:2]))
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / f"s{i}{suffix}", **save)


def test_lossy_webp_masks_are_blurred_like_jpeg_ones_and_lossless_webp_is_not(tmp_path: Path) -> None:
    """Found by a review: Pillow saves WebP lossily unless told otherwise; Cityscapes-like colour masks saved so
    trained ~2000 colour classes without a word (the check knew only JPEG as lossy)."""
    yy, xx = np.mgrid[:64, :96]
    colours = np.zeros((64, 96, 3), np.uint8)
    colours[:20] = (70, 130, 180)  # sky
    colours[(yy - 40) ** 2 + (xx - 48) ** 2 < 15 ** 2] = (0, 0, 142)  # a car
    write_lossy_masks(tmp_path / "lossy", [np.roll(colours, 4 * i, axis=1) for i in range(3)], ".webp")
    lossy = check_dataset(tmp_path / "lossy" / "imgs", tmp_path / "lossy" / "masks", workers=1)
    assert lossy.problems and lossy.blurred_masks == ["s0.webp", "s1.webp", "s2.webp"]
    assert lossy.lossy_mask_error() == ("3 masks are lossy WebP files whose lossy compression blurred the edges into "
                                        "in-between values, e.g. s0.webp: save the masks as PNG (lossless)")
    assert "lossy WebP masks with in-between values (lossy compression blurs edges): 3" in lossy.report()
    write_lossy_masks(tmp_path / "lossless", [np.roll(colours, 4 * i, axis=1) for i in range(3)], ".webp",
                      lossless=True)
    lossless = check_dataset(tmp_path / "lossless" / "imgs", tmp_path / "lossless" / "masks", workers=1)
    assert not lossless.problems and len(lossless.mask_values) == 3
    disc = ((yy - 32) ** 2 + (xx - 48) ** 2 < 20 ** 2).astype(np.uint8) * 255
    write_lossy_masks(tmp_path / "gray", [disc, disc], ".webp")
    gray = check_dataset(tmp_path / "gray" / "imgs", tmp_path / "gray" / "masks", workers=1)
    assert "--binarize 127" in gray.lossy_mask_error()  # a binary mask: a threshold sorts the ringing out
    frames = [Image.fromarray(disc).convert("RGB"), Image.fromarray(255 - disc).convert("RGB")]
    for lossless, expected in ((False, "lossy WebP"), (True, None)):  # animated: the image is in a frame's chunk
        frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=lossless)
        assert check_data.lossy_format(tmp_path / "anim.webp", "WEBP") == expected


def test_lossy_masks_of_more_than_two_classes_are_not_offered_a_threshold(tmp_path: Path) -> None:
    """Found by a review: 0/128/255 label masks saved as JPEG were told to pass --binarize 127, which silently made
    class 128 one with 255; colour JPEG masks were offered a threshold too."""
    labels = np.zeros((64, 96), np.uint8)
    labels[:, 32:64], labels[:, 64:] = 128, 255
    write_lossy_masks(tmp_path / "three", [labels, np.fliplr(labels)], ".jpg", quality=95)
    three = check_dataset(tmp_path / "three" / "imgs", tmp_path / "three" / "masks", workers=1)
    assert three.lossy_mask_error() == ("2 masks are JPEG files whose lossy compression blurred the edges into "
                                        "in-between values, e.g. s0.jpg: save the masks as PNG (lossless)")
    disc = np.zeros((64, 96), np.uint8)
    disc[16:48, 32:64] = 1
    write_lossy_masks(tmp_path / "apart", [disc * 100, disc * 100, disc * 200, disc * 200], ".jpg", quality=95)
    apart = check_dataset(tmp_path / "apart" / "imgs", tmp_path / "apart" / "masks", workers=1)  # a code review's
    assert apart.lossy_mask_fix() == "save the masks as PNG (lossless)"  # 100 is between 0 and 200, as a class
    colours = np.zeros((64, 96, 3), np.uint8)
    colours[:, 48:] = (255, 0, 0)
    write_lossy_masks(tmp_path / "colour", [colours, np.fliplr(colours)], ".jpg", quality=90)
    colour = check_dataset(tmp_path / "colour" / "imgs", tmp_path / "colour" / "masks", workers=1)
    assert colour.blurred_masks and colour.lossy_mask_fix() == "save the masks as PNG (lossless)"


def test_lossless_masks_are_not_blurred_and_a_flat_jpeg_mask_is_fine(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "a.png", noisy_rgb(0))
    write_image(tmp_path / "masks" / "a.png", box_mask() * 255)
    write_image(tmp_path / "imgs" / "b.png", noisy_rgb(1))
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "masks" / "b.jpg")  # nothing to blur
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert check.blurred_masks == [] and not check.problems and check.mask_values == [0, 255]


def test_train_stops_on_blurred_jpeg_masks_and_trains_with_a_threshold(tmp_path: Path) -> None:
    write_jpeg_masks(tmp_path)
    result = run_train(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 3 masks are JPEG files") and "s0.jpg" in last and "--binarize 127" in last
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").glob("*.pth"))
    result = run_train(tmp_path, "--binarize", "127")
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(tmp_path / "ck" / "last.pth")["args"]["binarize"] == 127


def bilinear_resized(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.BILINEAR))


def test_masks_resized_with_interpolation_are_refused_by_train_unless_classes_are_given(tmp_path: Path) -> None:
    """Found by a review: 0/255 masks resized bilinearly (PNG, so not caught as JPEG) trained a model of ~100
    classes without a word; so did colour masks with a little noise."""
    masks = []
    for i in range(4):
        disc = np.zeros((H * 2, W * 2), np.uint8)
        yy, xx = np.mgrid[: H * 2, : W * 2]
        disc[(yy - H) ** 2 + (xx - W - 8 * i) ** 2 < 15 ** 2] = 255
        masks.append(bilinear_resized(disc, (W * 3 // 2, H * 3 // 2)))
    imgs, folder = write_pairs_with(tmp_path, masks)
    check = check_dataset(imgs, folder, workers=1)
    assert len(check.mask_values) > 12 and len(check.stray_values) == len(check.mask_values) - 2
    assert check.problems  # found by a review: the check exited 0 on what train.py then stopped on
    for flags, code in (([], 1), (["--classes", str(len(check.mask_values))], 0), (["--classes", "2"], 2)):
        result = run_script("-m utils.check_data", "--imgs", imgs, "--masks", folder, *flags, cwd=REPO)
        assert result.returncode == code, (flags, result.stderr)  # --classes N says they are classes, as in train.py
    assert result.stderr.strip().endswith(f"but --classes is 2: use --classes {len(check.mask_values)}")
    assert ("made up by resizing with interpolation, lossy saving or noise, not classes: re-save the masks with "
            "nearest-neighbour resizing and a lossless format (PNG), or pass --binarize 127 (values above 127 are "
            f"foreground); if they are classes, pass --classes {len(check.mask_values)}") in check.stray_values_error()
    assert any("(resized or noisy masks?)" in hint for hint in check.suggestions())
    result = run_train(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {check.stray_values_error()}"
    assert run_train(tmp_path, "--binarize", "127").returncode == 0
    assert check_dataset(imgs, folder, binarize=127, workers=1).stray_values == []


def test_noisy_colour_masks_are_stray_values_and_real_rare_classes_are_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = []
    for _ in range(3):
        mask = np.zeros((H, W, 3), np.int16)
        mask[box_mask().astype(bool)] = (200, 30, 30)
        mask += (rng.random((H, W)) < 0.02)[..., None] * rng.integers(-2, 3, (H, W, 3))
        noisy.append(mask.clip(0, 255).astype(np.uint8))
    check = check_dataset(*write_pairs_with(tmp_path / "noisy", noisy), workers=1)
    assert len(check.stray_values) >= 6 and "--binarize" not in check.stray_values_error()
    rare = np.zeros((H, W), np.uint8)  # two common classes and two rare ones: classes, not noise
    rare[:, : W // 2] = 1
    rare[0, :3], rare[1, :3] = 2, 3
    labels = check_dataset(*write_pairs_with(tmp_path / "labels", [rare, box_mask()]), workers=1)
    assert labels.mask_values == [0, 1, 2, 3] and labels.stray_values == []


def test_interior_pixels_are_those_whose_four_neighbours_share_their_value() -> None:
    from utils.check_data import interior_counts
    from utils.mask_encoding import value_counts

    colour = np.zeros((10, 12, 3), np.uint8)
    colour[2:8, 2:9] = (200, 30, 30)  # a 6x7 box: its 4x5 inside; the background's inside the 8x10 core: 12
    for mask in (colour, colour[..., 0]):
        assert interior_counts(mask, value_counts(mask)[0]) == [12, 20]


def test_instance_labels_of_small_sparse_objects_are_not_stray_values(tmp_path: Path) -> None:
    """Found by a review: cells labelled 1..40 on 0.3% of the pixels were called resized or noisy masks, and train
    refused them with the wrong fix. Each label fills a region of its own; made-up values lie in thin bands."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :400]
    masks = []
    for _ in range(2):
        labels = np.zeros((300, 400), np.uint16)
        for label in range(1, 21):
            cy, cx, radius = rng.integers(10, 290), rng.integers(10, 390), rng.integers(2, 5)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = label
        masks.append(labels)
    check = check_dataset(*write_pairs_with(tmp_path, masks), workers=1)
    assert len(check.mask_values) == 21 and sum(check.class_fractions[1:]) < 0.01
    assert check.stray_values == []
    assert any("look like instance labels (one value per object): pass --binarize" in hint
               for hint in check.suggestions())
    # the same objects as thin rings (one pixel wide, like edges made up by interpolation) are stray values
    rings = [np.where((labels > 0) & ((np.roll(labels, 1, 0) != labels) | (np.roll(labels, 1, 1) != labels)),
                      labels, 0).astype(np.uint16) for labels in masks]
    assert check_dataset(*write_pairs_with(tmp_path / "rings", rings), workers=1).stray_values != []


def test_small_resized_masks_are_stray_values_and_small_crowded_instance_labels_are_not(tmp_path: Path) -> None:
    """Found by a review: 0/255 discs resized bilinearly to 32x32 tiles made 245 values whose edge bands covered
    8.9% of the pixels, over the 5% that stray values were held to; train.py trained 245 classes without a word.
    Their pixels are never inside a region of their own value, as instance labels' are however many they are."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    resized = []
    for _ in range(12):
        cy, cx, radius = rng.integers(60, 196), rng.integers(60, 196), rng.integers(40, 80)
        disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < radius ** 2).astype(np.uint8) * 255
        resized.append(bilinear_resized(disc, (32, 32)))
    check = check_dataset(*write_pairs_with(tmp_path / "resized", resized), workers=1)
    rare = [fraction for fraction in check.class_fractions if fraction < 0.005]
    assert len(rare) > 100 and sum(rare) > 0.05  # the share that hid them before
    assert check.stray_values and "--binarize 127" in check.stray_values_error()

    small_yy, small_xx = np.mgrid[:32, :32]
    crowded = []  # 32x32 tiles of touching cells, 12 labels each on ~40% of the pixels
    for _ in range(12):
        labels = np.zeros((32, 32), np.uint8)
        for label in range(1, 13):
            cy, cx, radius = rng.integers(3, 29), rng.integers(3, 29), rng.integers(2, 4)
            labels[(small_yy - cy) ** 2 + (small_xx - cx) ** 2 <= radius ** 2] = label + 12 * len(crowded)
        crowded.append(labels)
    check = check_dataset(*write_pairs_with(tmp_path / "crowded", crowded), workers=1)
    assert len(check.mask_values) > 100 and sum(check.class_fractions[1:]) > 0.05 and check.stray_values == []
    assert any("look like instance labels" in hint for hint in check.suggestions())

    # found by a review of the above: 40 objects of 3x3 pixels (one pixel of each inside) on each 64x64 image
    specks = []
    for _ in range(4):
        labels = np.zeros((64, 64), np.uint8)
        for label, place in enumerate(rng.choice(64, 40, replace=False), start=1):
            top, left = place // 8 * 8 + 2, place % 8 * 8 + 2
            labels[top:top + 3, left:left + 3] = label
        specks.append(labels)
    check = check_dataset(*write_pairs_with(tmp_path / "specks", specks), workers=1)
    assert len(check.mask_values) == 41 and sum(check.class_fractions[1:]) > 0.05 and check.stray_values == []


def test_a_class_under_one_percent_of_the_pixels_suggests_class_weights(tmp_path: Path) -> None:
    rare = np.zeros((H, W), np.uint8)
    rare[:, : W // 2] = 1
    rare[0, :5] = 5  # 5 of 2 * 1536 pixels: 0.16%; named by its value, 5, not its class index, 2 (found by a review)
    imgs, masks = write_pairs_with(tmp_path, [rare, box_mask()])
    check = check_dataset(imgs, masks, workers=1)
    assert check.mask_values == [0, 1, 5]
    assert check.class_pixels[2] == 5
    hints = check.suggestions()
    assert [hint for hint in hints if "--class-weights" in hint] == [
        "the class of mask value 5 covers less than 1% of the pixels: consider --class-weights auto"]
    assert ", 5: 0.2%\n" in check.report()
    assert not any("--binarize" in hint or "--channels" in hint for hint in hints)


def test_mixed_grayscale_and_rgb_images_suggest_channels(tmp_path: Path) -> None:
    gray = np.random.default_rng(3).integers(0, 256, (H, W), dtype=np.uint8)
    imgs, masks = write_pairs_with(tmp_path, [box_mask(), box_mask()], images=[gray, noisy_rgb(4)])
    check = check_dataset(imgs, masks, workers=1)
    assert check.image_channels == Counter({1: 1, 3: 1})
    channel_hints = [hint for hint in check.suggestions() if "--channels" in hint]
    assert len(channel_hints) == 1 and "grayscale and colour images are mixed" in channel_hints[0]
    # found by a review: train.py --channels 1 was told to use --channels 1
    assert [hint for hint in check.suggestions(channels=1) if "--channels" in hint] == [
        "grayscale and colour images are mixed: --channels 1 converts the colour ones to grayscale"]

    rgb_only = check_dataset(*write_pairs_with(tmp_path / "rgb", [box_mask()]), workers=1)
    assert rgb_only.suggestions() == []


# --- class pixel fractions ------------------------------------------------------------------------------------------


@pytest.fixture
def counted_masks(tmp_path: Path) -> tuple[Path, Path]:
    """Two 4x4 masks: a = 0 x10, 1 x4, 2 x2; b = 0 x8, 2 x4, 255 x4 (32 pixels)."""
    a = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 2, 2]], np.uint8)
    b = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 2, 2], [255, 255, 255, 255]], np.uint8)
    return write_pairs_with(tmp_path, [a, b])


@pytest.mark.parametrize(
    ("binarize", "ignore_value", "values", "pixels"),
    [
        (False, None, [0, 1, 2, 255], [18, 4, 6, 4]),
        (False, 255, [0, 1, 2], [18, 4, 6]),
        (True, None, [0, 1], [18, 14]),
        (True, 255, [0, 1], [18, 10]),
    ],
)
def test_class_pixel_counts_and_fractions_follow_binarize_and_ignore_value(
    counted_masks, binarize: bool, ignore_value: int | None, values: list[int], pixels: list[int]
) -> None:
    check = check_dataset(*counted_masks, binarize=binarize, ignore_value=ignore_value, workers=1)
    assert check.mask_values == values
    assert check.class_pixels == pixels
    assert check.class_fractions == pytest.approx([p / sum(pixels) for p in pixels])


def test_report_shows_fractions_without_the_ignored_value(counted_masks) -> None:
    report = check_dataset(*counted_masks, ignore_value=255, workers=1).report()
    assert "  class pixels: 0: 64.3%, 1: 14.3%, 2: 21.4%" in report.splitlines()
    assert "value 255 ignored; 3 classes" in report and "--ignore-index" not in report
    # a value no mask holds (found by a review: a typo such as 254 for 255 went unnoticed)
    report = check_dataset(*counted_masks, ignore_value=254, workers=1).report()
    assert "value 254 ignored (found in no mask); 4 classes" in report
    assert ("suggestion: --ignore-index 254: no mask holds that value, so nothing is left out; check the value "
            "(VOC-style borders are 255)") in report


# --- image inspection -----------------------------------------------------------------------------------------------


def test_inspection_counts_sizes_channels_and_encodings_and_records_16_bit_mode(tmp_path: Path) -> None:
    big, small = box_mask(), box_mask(30, 40)
    images = [noisy_rgb(0), noisy_rgb(1), np.full((30, 40), 99, np.uint8),
              np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50]
    imgs, masks = write_pairs_with(tmp_path, [big, big, small, small], images)
    write_image(masks / "s2.png", small, mode="P", palette=[0, 0, 0, 255, 255, 255])
    write_image(masks / "s3.png", small.astype(np.uint16))
    check = check_dataset(imgs, masks, workers=1)
    assert check.image_sizes == Counter({(48, 32): 2, (40, 30): 2})
    assert check.image_channels == Counter({3: 2, 1: 2})
    assert check.encodings == Counter({"8-bit labels": 2, "palette": 1, "16-bit labels": 1})
    assert check.palette[:6] == [0, 0, 0, 255, 255, 255]
    assert check.mask_values == [0, 1]
    assert inspect_image(imgs / "s3.png") == {"width": 40, "height": 30, "channels": 1, "mode": "I;16",
                                                "orientation": 1}
    cache = json.loads((masks / CACHE_NAME).read_text())["files"]
    assert cache[f"image:{(imgs / 's3.png').absolute()}"]["record"]["mode"] == "I;16"
    assert cache[f"image:{(imgs / 's0.png').absolute()}"]["record"] == {"width": 48, "height": 32, "channels": 3,
                                                                       "mode": "RGB", "orientation": 1}
    assert "48x32 (2), 40x30 (2); grayscale (2), RGB (2)" in check.report()


# --- the cache ------------------------------------------------------------------------------------------------------


def test_second_check_decodes_nothing_and_the_cache_lives_in_the_masks_folder_only(tmp_path, monkeypatch) -> None:
    build_broken_folder(tmp_path)
    images_before = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    first = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    forbid_scans(monkeypatch)
    second = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert second.report() == first.report()
    assert (second.pairs, second.mask_values, second.class_pixels) == (first.pairs, first.mask_values,
                                                                       first.class_pixels)
    assert second.unreadable == first.unreadable and len(second.unreadable) == 3
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == images_before
    assert (tmp_path / "masks" / CACHE_NAME).is_file()
    keys = json.loads((tmp_path / "masks" / CACHE_NAME).read_text())["files"]
    trunc = f"image:{(tmp_path / 'imgs' / 'trunc.jpg').absolute()}"  # kept with the masks, by absolute path
    assert {trunc, f"image:{(tmp_path / 'imgs' / 'good0.png').absolute()}", "mask:junk_mask.png",
            "mask:good0_mask.png"} <= set(keys)
    assert "error" in keys[trunc]["record"]


# --- train.py on the broken folder ----------------------------------------------------------------------------------


def run_train(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_script("train.py", "--imgs", "imgs", "--masks", "masks", "--checkpoint-dir", "ck", "--epochs", "1",
                      "--validation", "0", "--scale", "1", "--batch-size", "4", "--wandb", "disabled",
                      "--workers", "0", *args, cwd=root)


def test_a_class_only_in_validation_images_is_warned_about_and_weighs_nothing(tmp_path: Path) -> None:
    """Found by a review: a mask value shown only by a held-out image went unmentioned, and --class-weights auto
    gave it the largest weight, counted from the validation pixels."""
    import train
    from utils.data_loading import list_pairs

    masks = [box_mask() for _ in range(10)]
    imgs, folder = write_pairs_with(tmp_path, masks)
    held_out = train.split_pairs(list_pairs(imgs, folder), 10, 0)[1]
    assert len(held_out) == 1
    rare = box_mask()
    rare[:4, :4] = 2
    write_image(folder / held_out[0].mask.name, rare)
    result = run_train(tmp_path, "--validation", "10", "--class-weights", "auto")
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("warning: mask value 2 appears only in validation images, in none of the 9 training images, so the model "
            "cannot learn it: another --seed splits the images otherwise") in result.stderr
    check = check_dataset(imgs, folder, workers=1)
    trained = check.class_pixels_of([pair for pair in check.pairs if pair.name != held_out[0].name])
    assert trained[2] == 0 and check.class_pixels[2] == 16
    expected = class_weights_from_pixels(trained)
    assert expected[2] == 1.0  # not the 10 of a class that rare in the whole set
    assert f"class weights (auto): {', '.join(f'{w:.3g}' for w in expected)}" in result.stdout


def test_train_proceeds_on_the_usable_pairs_despite_unreadable_unpaired_and_empty_files(tmp_path: Path) -> None:
    build_broken_folder(tmp_path, size_mismatch=False)
    result = run_train(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data check: 4 usable pairs" in result.stdout
    for name in ("trunc.jpg", "zero.png", "junk_mask.png", "alone.png", "orphan_mask.png", "empty_mask.png"):
        assert name in result.stdout, name
    assert "4 training and 0 validation images" in result.stdout
    assert "epoch 1: train loss" in result.stdout
    assert (tmp_path / "ck" / "last.pth").is_file()
    (tmp_path / "ck" / "last.pth").unlink()


def test_train_stops_on_a_size_mismatch_with_one_error_line_naming_the_files(tmp_path: Path) -> None:
    build_broken_folder(tmp_path)
    result = run_train(tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert "bigmask.png is 48x32 but bigmask_mask.png is 24x16" in last
    assert "size mismatch: bigmask.png" in result.stdout  # the report came first
    assert not (tmp_path / "ck" / "last.pth").exists()


# --- a file that breaks after the check -----------------------------------------------------------------------------


def test_file_corrupted_after_the_check_is_skipped_with_a_reason_naming_it(tmp_path: Path) -> None:
    write_good_pairs(tmp_path)
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    broken = tmp_path / "imgs" / "good1.png"
    broken.write_bytes(broken.read_bytes()[:40])  # the PNG header survives, the pixels do not
    dataset = SegmentationDataset(check.pairs, check.mask_values, skip_unreadable=True)
    item = dataset[1]
    assert list(item) == ["skipped"]
    assert str(broken) in item["skipped"] and item["skipped"].startswith("cannot read")
    with pytest.raises(UserError, match="good1.png"):
        SegmentationDataset(check.pairs, check.mask_values)[1]

    batch = collate_skipping([dataset[0], dataset[1], dataset[2]])
    assert batch["name"] == ["good0", "good2"]
    assert batch["image"].shape == (2, 3, H, W) and batch["mask"].shape == (2, H, W)
    assert batch["skipped"] == [item["skipped"]]

    batches = list(make_loader(dataset, batch_size=2, device=torch.device("cpu"), workers=0))
    assert [b["name"] for b in batches] == [["good0"], ["good2"]]
    assert [b["skipped"] for b in batches] == [[item["skipped"]], []]
    assert torch.equal(batches[0]["mask"][0], torch.from_numpy(box_mask()).long())


def test_a_batch_of_only_unreadable_files_collates_to_reasons_alone(tmp_path: Path) -> None:
    write_good_pairs(tmp_path, count=1)
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    (tmp_path / "imgs" / "good0.png").write_bytes(b"")
    batch = collate_skipping([SegmentationDataset(check.pairs, check.mask_values, skip_unreadable=True)[0]])
    assert set(batch) == {"skipped"} and len(batch["skipped"]) == 1 and "good0.png" in batch["skipped"][0]


def test_faint_jpeg_masks_are_only_told_to_be_saved_as_png(tmp_path: Path) -> None:
    """0/1 masks saved as JPEG: the ringing is as bright as the objects, no threshold separates them."""
    from utils.check_data import DataCheck

    faint = DataCheck(tmp_path, tmp_path, "", [], [0, 1, 2, 3], [1, 1, 1, 1], blurred_masks=["s0.jpg"], blurred_top=3)
    assert faint.lossy_mask_error().endswith("e.g. s0.jpg: save the masks as PNG (lossless)")
    bright = DataCheck(tmp_path, tmp_path, "", [], [0, 1], [1, 1], binarize=0, blurred_masks=["s0.jpg"],
                       blurred_top=200)
    assert bright.lossy_mask_error().endswith("or pass --binarize 100 (values above 100 are foreground) if they "
                                             "show foreground on a dark background")


def write_exif_pairs(root: Path) -> None:
    """Phone-style JPEGs stored 48x32 with EXIF orientation 6 (viewers turn it 90 degrees), 3 (180) and none; masks
    drawn on the upright view, so the first one's is 32x48."""
    for index, orientation in enumerate((6, 3, 1)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        (root / "imgs").mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy_rgb(index)).save(root / "imgs" / f"p{index}.jpg", exif=exif)
        write_image(root / "masks" / f"p{index}.png", box_mask().T if orientation == 6 else box_mask())


def test_exif_turned_images_are_reported_and_a_mask_of_the_upright_view_is_named_as_one(tmp_path: Path) -> None:
    write_exif_pairs(tmp_path)
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    report = check.report()
    assert ("EXIF orientation: 2 images are stored turned or mirrored and shown upright by viewers (p0.jpg, p1.jpg); "
            "they are read as stored") in report
    assert check.size_mismatches == ["p0.jpg is 48x32 but p0.png is 32x48, the image as its EXIF orientation (6) "
                                     "turns it for viewers"]
    assert check.size_mismatch_fix() == ("the masks were drawn on the images as viewers show them: save the images "
                                         "upright first, e.g. with PIL.ImageOps.exif_transpose")
    result = run_train(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("turns it for viewers: the masks were drawn on the images "
                                                           "as viewers show them: save the images upright first, e.g. "
                                                           "with PIL.ImageOps.exif_transpose")


def test_a_turned_image_whose_mask_fits_the_stored_pixels_gets_a_hint_only(tmp_path: Path) -> None:
    write_exif_pairs(tmp_path)
    (tmp_path / "imgs" / "p0.jpg").unlink()
    (tmp_path / "masks" / "p0.png").unlink()
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert not check.problems and check.exif_turned == ["p1.jpg"]
    assert "suggestion: if the masks were drawn on the images as viewers show them (turned by EXIF)" in check.report()


def test_the_cli_reports_a_damaged_file_in_its_own_words_without_pillows_warnings(tmp_path: Path) -> None:
    import io
    import warnings

    write_good_pairs(tmp_path)
    tiff = io.BytesIO()
    Image.fromarray(noisy_rgb(9)).save(tiff, format="TIFF", compression="raw")
    (tmp_path / "imgs" / "damaged.tif").write_bytes(tiff.getvalue()[:20])  # cut inside its first tag
    write_image(tmp_path / "masks" / "damaged_mask.png", box_mask())
    with warnings.catch_warnings(record=True) as direct:
        warnings.simplefilter("always")
        check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert any(warning.category is UserWarning and "PIL" in warning.filename for warning in direct)  # it does warn
    (tmp_path / "masks" / CACHE_NAME).unlink()
    with warnings.catch_warnings(record=True) as through_the_cli:
        warnings.simplefilter("always")
        result = run_script("-m utils.check_data", "--imgs", tmp_path / "imgs", "--masks", tmp_path / "masks",
                            "--workers", "1", cwd=REPO)
    assert result.returncode == 1 and "unreadable: " in result.stdout and "damaged.tif" in result.stdout
    assert not [warning for warning in through_the_cli if "PIL" in warning.filename]


def test_negative_workers_are_a_one_line_error_before_any_file_is_read(tmp_path) -> None:
    args = check_data.get_args_parser().parse_args(["--imgs", str(tmp_path / "absent"), "--workers", "-2"])
    with pytest.raises(UserError, match=r"--workers must be 0 \(none\) to \d+ \(4 per core here\), got -2"):
        check_data.main(args)


# --- mask sets that would train wrong classes without a word (found by a review, 2026-11-27) ------------------


def test_palette_masks_that_number_their_colours_differently_are_refused(tmp_path: Path) -> None:
    """Pillow gives each GIF a palette of its own: index 1 is red in one file and the background in the next."""
    mask = box_mask()
    write_image(tmp_path / "imgs" / "p0.png", noisy_rgb(0))
    write_image(tmp_path / "masks" / "p0.gif", mask, mode="P", palette=[*BLACK, *RED])
    write_image(tmp_path / "imgs" / "p1.png", noisy_rgb(1))
    write_image(tmp_path / "masks" / "p1.gif", 1 - mask, mode="P", palette=[*RED, *BLACK])  # the same picture
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert check.palette_conflicts == ["p1.gif shows index 0 as (255, 0, 0), p0.gif as (0, 0, 0)",
                                       "p1.gif shows index 1 as (0, 0, 0), p0.gif as (255, 0, 0)"]
    assert check.problems and "palette conflict: p1.gif shows index 0" in check.report()
    assert check.palette_conflict_error().startswith("palette masks number their colours differently: p1.gif")
    # one shared palette: no conflict, whichever of its colours each file uses (PNG: Pillow's GIF writer would
    # renumber the palette to the colours used)
    for index, values in enumerate((mask, mask * 2)):
        (tmp_path / "masks" / f"p{index}.gif").unlink()
        write_image(tmp_path / "masks" / f"p{index}.png", values, mode="P", palette=[*BLACK, *RED, *GREEN])
    fine = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert fine.palette_conflicts == [] and fine.mask_values == [0, 1, 2]


def test_an_ignored_palette_index_may_have_another_colour_in_some_files(tmp_path: Path) -> None:
    """Found by a VOC-style review: one mask's void index (255) recoloured white refused the data set with
    --ignore-index 255, "one index would be two classes", though that index is no class."""
    void = 255
    palette = [*BLACK, *RED] + [0, 0, 0] * 253
    for index, colour in enumerate(((224, 224, 192), (255, 255, 255))):
        mask = box_mask().astype(np.uint8)
        mask[0] = void  # a border row
        write_image(tmp_path / "imgs" / f"v{index}.png", noisy_rgb(index))
        write_image(tmp_path / "masks" / f"v{index}.png", mask, mode="P", palette=[*palette, *colour])
    assert check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).palette_conflicts == [
        "v1.png shows index 255 as (255, 255, 255), v0.png as (224, 224, 192)"]  # not ignored: two classes
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", ignore_value=void, workers=1)
    assert check.palette_conflicts == [] and check.mask_values == [0, 1] and not check.problems


def test_a_void_border_of_255_gets_the_ignore_index_hint(tmp_path: Path) -> None:
    """Found by a VOC-style review: 255 borders around classes 1 and 2 trained as a class with only a class-weights
    hint, though they are VOC's and Cityscapes' "unlabelled"."""
    for index in range(3):
        mask = np.zeros((32, 48), np.uint8)  # noisy_rgb's size
        mask[5:28, 5:22], mask[5:28, 26:44] = 1, 2
        edges = np.zeros_like(mask, bool)
        edges[1:] |= mask[1:] != mask[:-1]
        edges[:, 1:] |= mask[:, 1:] != mask[:, :-1]
        mask[edges] = 255  # a one-pixel border along every edge
        write_image(tmp_path / "imgs" / f"v{index}.png", noisy_rgb(index))
        write_image(tmp_path / "masks" / f"v{index}.png", mask)
    hint = "mask value 255 sits apart from the others (0-2) and forms thin lines or specks, as the 'void' label of " \
           "VOC and Cityscapes does: if it marks unlabelled pixels, pass --ignore-index 255 (without it, it trains " \
           "as a class)"
    assert hint in check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).suggestions()
    assert hint not in check_dataset(tmp_path / "imgs", tmp_path / "masks", ignore_value=255, workers=1).suggestions()
    for index in range(3):  # 255 as a class of its own regions: no hint
        mask = np.zeros((32, 48), np.uint8)  # noisy_rgb's size
        mask[5:28, 5:22], mask[5:28, 26:44] = 1, 255
        write_image(tmp_path / "masks" / f"v{index}.png", mask)
    assert not any("void" in line for line in check_dataset(tmp_path / "imgs", tmp_path / "masks",
                                                             workers=1).suggestions())


def test_binary_masks_saved_as_0_1_and_as_0_255_are_not_taken_for_three_classes(tmp_path: Path) -> None:
    for index in range(4):
        write_image(tmp_path / "imgs" / f"m{index}.png", noisy_rgb(index))
        write_image(tmp_path / "masks" / f"m{index}.png", box_mask() * (1 if index < 2 else 255))
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert check.mixed_binary == {1: ["m0.png", "m1.png"], 255: ["m2.png", "m3.png"]} and check.problems
    assert check.mixed_binary_error().startswith("the masks mix two binary encodings, 2 with values 0/1 (e.g. "
                                                 "m0.png) and 2 with values 0/255 (e.g. m2.png)")
    assert "suggestion: pass --binarize 0" in check.report()
    for flags, code in (([], 1), (["--classes", "3"], 0)):  # 1 and 255 are then two classes, as in train.py
        result = run_script("-m utils.check_data", "--imgs", tmp_path / "imgs", "--masks", tmp_path / "masks", *flags,
                            cwd=REPO)
        assert result.returncode == code, (flags, result.stderr)
    fixed = check_dataset(tmp_path / "imgs", tmp_path / "masks", binarize=0, workers=1)
    assert fixed.mixed_binary == {} and fixed.mask_values == [0, 1]
    # one file holding 1 and 255 together: three labels indeed (e.g. 255 borders), not a mix of encodings
    both = box_mask()
    both[0, 0] = 255
    write_image(tmp_path / "masks" / "m0.png", both)
    assert check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).mixed_binary == {}


def test_binary_masks_saved_8_bit_and_16_bit_are_one_class_and_0_1_beside_0_2_are_two(tmp_path: Path) -> None:
    """Found by a review: 0/255 masks beside 0/65535 ones (two tools exporting one labelling) trained the object as
    two classes without a word, and predict.py wrote 65535 for all of it."""
    for index in range(4):
        write_image(tmp_path / "imgs" / f"m{index}.png", noisy_rgb(index))
        write_image(tmp_path / "masks" / f"m{index}.png", box_mask().astype(np.uint16) * (255 if index < 2 else 65535))
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert check.mixed_binary == {255: ["m0.png", "m1.png"], 65535: ["m2.png", "m3.png"]} and check.problems
    assert check.mixed_binary_error() == ("the masks mix two binary encodings, 2 with values 0/255 (e.g. m0.png) and "
                                          "2 with values 0/65535 (e.g. m2.png), so the objects would be two classes: "
                                          "pass --binarize 0 (any nonzero value is the object)")
    assert check.mixed_binary_classes_fix() == "--classes 3 if 255 and 65535 are two classes"
    assert "suggestion: pass --binarize 0: 0/255 and 0/65535 masks then all read as background/object" in check.report()
    write_image(tmp_path / "masks" / "m0.png", box_mask())  # now 0/1, 0/255 and 0/65535
    assert check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).mixed_binary_error().startswith(
        "the masks mix three binary encodings, 1 with values 0/1 (e.g. m0.png), 1 with values 0/255 (e.g. m1.png) and "
        "2 with values 0/65535 (e.g. m2.png), so the objects would be three classes")
    for index in range(4):  # a class per image (0/1 and 0/2): classes indeed
        write_image(tmp_path / "masks" / f"m{index}.png", box_mask() * (1 + index % 2))
    assert check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).mixed_binary == {}


def test_ignore_index_on_colour_masks_is_refused(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "c.png", noisy_rgb(0))
    write_image(tmp_path / "masks" / "c.png", colour_mask([[RED] * 48] * 32))
    with pytest.raises(UserError, match=r"--ignore-index 255 names a label value, but .*c.png is an RGB colour "
                                        "mask, whose classes are colours: leave --ignore-index out"):
        check_dataset(tmp_path / "imgs", tmp_path / "masks", ignore_value=255, workers=1)


def test_a_size_mismatch_of_two_files_of_one_name_says_which_folder_holds_which(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "m3.png", noisy_rgb(0, 32, 48))
    write_image(tmp_path / "masks" / "m3.png", box_mask(16, 24))
    write_image(tmp_path / "imgs" / "ok.png", noisy_rgb(1, 32, 48))
    write_image(tmp_path / "masks" / "ok.png", box_mask(32, 48))
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert check.size_mismatches == [f"{tmp_path / 'imgs' / 'm3.png'} is 48x32 but {tmp_path / 'masks' / 'm3.png'} "
                                     "is 24x16"]


# --- messages a review found wrong or missing (2026-11-29) -----------------------------------------------------------


def test_an_image_and_its_mask_named_alike_in_one_folder_are_told_to_move_not_to_keep_one(tmp_path: Path) -> None:
    write_image(tmp_path / "one" / "a.jpg", noisy_rgb(0))
    write_image(tmp_path / "one" / "a.png", box_mask())
    with pytest.raises(UserError) as error:
        check_dataset(tmp_path / "one", tmp_path / "one", workers=1)
    assert str(error.value) == (f"a.jpg and a.png in {tmp_path / 'one'} have the same name, and images and masks are "
                                "both in it: move the masks to a folder of their own, or rename them with a suffix "
                                "(x_mask.png) and pass --mask-suffix _mask")


def test_every_pair_mismatched_gets_the_fix_and_the_loader_names_folders_and_the_exif_fix(tmp_path: Path) -> None:
    upright = noisy_rgb(0, H, W)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn it by 90 degrees: the mask was drawn on that view
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(tmp_path / "imgs" / "t.jpg", exif=exif)
    write_image(tmp_path / "masks" / "t.png", box_mask(H, W))
    with pytest.raises(UserError) as error:
        check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert str(error.value).endswith("turns it for viewers: the masks were drawn on the images as viewers show them: "
                                     "save the images upright first, e.g. with PIL.ImageOps.exif_transpose")
    pair = list_pairs(tmp_path / "imgs", tmp_path / "masks")
    with pytest.raises(UserError) as error:
        SegmentationDataset(pair, [0, 1])[0]
    assert str(error.value) == ("t.jpg is 32x48 but t.png is 48x32, the image as its EXIF orientation (6) turns it for "
                                "viewers: the mask was drawn on the image as viewers show it: save the images upright "
                                "first, e.g. with PIL.ImageOps.exif_transpose")
    write_image(tmp_path / "imgs" / "s.png", noisy_rgb(1, H, W))
    write_image(tmp_path / "masks" / "s.png", box_mask(2 * H, 2 * W))
    with pytest.raises(UserError) as error:
        SegmentationDataset(list_pairs(tmp_path / "imgs", tmp_path / "masks"), [0, 1])[0]
    assert str(error.value) == (f"{tmp_path / 'imgs' / 's.png'} is 48x32 but {tmp_path / 'masks' / 's.png'} is "
                                "96x64: resize each mask to its image with nearest-neighbour interpolation, or remove "
                                "the pair")
    (tmp_path / "masks" / "s.png").unlink()
    write_image(tmp_path / "masks" / "s.png", box_mask(W, H))  # the image's size turned, and no EXIF to say why
    with pytest.raises(UserError) as error:
        SegmentationDataset(list_pairs(tmp_path / "imgs", tmp_path / "masks"), [0, 1])[0]
    assert str(error.value).endswith("is 32x48: the mask is the image's size turned by 90 degrees: check that it is "
                                     "not stored turned (resizing would not align it), or remove the pair")


def test_an_image_too_small_at_any_scale_is_named_by_the_check_and_by_train(tmp_path: Path) -> None:
    imgs, masks = write_pairs_with(tmp_path, [box_mask(), box_mask(), box_mask()[:10, :12]])
    check = check_dataset(imgs, masks, workers=1)
    assert check.too_small == ["s2"] and check.problems
    assert "too small for the U-Net at any --scale (under 16 px a side): 1 (s2)" in check.report()
    result = run_train(tmp_path)
    assert result.stderr.strip().splitlines()[-1] == (
        "error: imgs/s2.png (the smallest of the 3 images) is 12x10: the U-Net needs at least 16 px a side (four "
        "halvings): leave it out or enlarge it")


def test_a_varying_fourth_band_is_named_and_a_four_channel_model_needs_it_in_every_image(tmp_path: Path) -> None:
    """Found by a review: RGBA images were reported as RGB, and their fourth band (here near-infrared, the only
    band that shows the object) was dropped without a word."""
    near_infrared = [np.dstack([noisy_rgb(i), box_mask() * 150 + 50]).astype(np.uint8) for i in range(2)]
    imgs, masks = write_pairs_with(tmp_path, [box_mask(), box_mask()], near_infrared)
    check = check_dataset(imgs, masks, workers=1)
    assert "  images: " in check.report() and check.report().split("\n")[1].endswith("; RGBA (2)")
    hint = ("2 images hold a fourth band that varies (transparency, or a band such as near-infrared) (s0.png, "
            "s1.png): a model of 3 channels reads the first three bands only; --channels 4 reads all four")
    assert hint in check.suggestions(3) and hint.replace("3 channels", "1 channel") in check.suggestions(1)
    assert not any("fourth band" in line for line in check.suggestions(4))
    assert hint in check.report(3) and "fourth band" not in check.report(4)  # found: report lost its channels
    assert check.bands_error(4, "x") is None and check.bands_error(3, "x") is None
    write_image(imgs / "s1.png", noisy_rgb(1))  # three bands
    check = check_dataset(imgs, masks, workers=1)
    assert check.image_channels == Counter({3: 1, 4: 1})
    assert check.bands_error(3, "train with --channels 3") is None
    assert check.bands_error(4, "train with --channels 3") == (
        "the model reads 4 channels, but 1 of the 2 images holds fewer bands (s1): give every image its fourth band "
        "(RGBA PNG or TIFF, HxWx4 .npy), or train with --channels 3")


def test_rgb_beside_rgba_images_is_no_grayscale_hint_and_an_alpha_drawn_mask_is_refused(tmp_path: Path) -> None:
    imgs, masks = write_pairs_with(tmp_path, [box_mask(), box_mask()])
    (imgs / "s1.png").unlink()
    write_image(imgs / "s1.npy", np.dstack([noisy_rgb(0), np.full((H, W), 255, np.uint8)]))  # RGBA as an array
    check = check_dataset(imgs, masks, workers=1)
    assert len(check.image_channels) == 2 and not any("grayscale" in hint for hint in check.suggestions())
    assert not any("fourth band" in hint for hint in check.suggestions())  # an opaque alpha holds nothing
    drawn = np.zeros((H, W, 4), np.uint8)
    drawn[..., 3] = box_mask() * 255  # black paint, the shape in the alpha channel
    write_image(masks / "s1.png", drawn)
    with pytest.raises(UserError) as error:
        read_mask(masks / "s1.png")
    assert str(error.value) == (f"{masks / 's1.png'} holds its mask in the alpha channel (its colours are all one): "
                                "save the alpha channel as a grayscale mask, e.g. "
                                "Image.open(path).getchannel('A').save(path)")
    coloured = np.dstack([colour_mask([[RED] * W] * H), box_mask() * 255])  # colours that vary: a colour mask
    coloured[box_mask() == 0, :3] = 0
    write_image(masks / "s1.png", coloured)
    assert read_mask(masks / "s1.png").shape == (H, W, 3)


def test_masks_stored_turned_are_listed_and_named_as_the_cause_of_a_mismatch(tmp_path: Path) -> None:
    """Found by a review: a mask carrying an EXIF orientation (copied from a phone photo) was read as stored without
    a word, and a turned one was a plain size mismatch, whose fix (resize the mask) would stretch it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    for name, mask in (("square", box_mask(W, W)), ("wide", box_mask(H, W))):
        write_image(tmp_path / "imgs" / f"{name}.png", noisy_rgb(0, W if name == "square" else H, W))
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.ascontiguousarray(np.rot90(mask))).save(tmp_path / "masks" / f"{name}.png", exif=exif)
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert check.size_mismatches == [f"{tmp_path / 'imgs' / 'wide.png'} is 48x32 but {tmp_path / 'masks' / 'wide.png'} "
                                     "is 32x48, the mask as its EXIF orientation (6) turns it for viewers"]
    assert check.size_mismatch_fix() == ("the masks are stored turned and shown upright by viewers: save them "
                                         "upright, e.g. with PIL.ImageOps.exif_transpose")
    assert ("EXIF orientation: 2 masks are stored turned or mirrored and shown upright by viewers (square.png, "
            "wide.png); they are read as stored") in check.report()
    (tmp_path / "imgs" / "wide.png").unlink()
    (tmp_path / "masks" / "wide.png").unlink()
    report = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).report()  # the square one alone
    assert "suggestion: if the masks fit the images only as viewers show the masks (turned by EXIF)" in report


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_tiff_with_an_orientation_tag_is_refused_since_pillow_turns_it_as_it_reads(tmp_path: Path,
                                                                                       mode: str) -> None:
    """Found by a review: Pillow 13 applies a TIFF's orientation tag as it loads the file (grayscale ones come back
    scrambled), while the tools read every other format as stored and said so of the TIFFs too."""
    pixels = noisy_rgb(0, H, W) if mode == "RGB" else noisy_rgb(0, H, W)[..., 0]
    Image.fromarray(pixels).save(tmp_path / "t.tif", tiffinfo={0x0112: 6})
    with pytest.raises(UserError, match=r"t.tif is a TIFF with an orientation tag \(6\), which Pillow applies as it "
                                        r"reads .*: save it as PNG without the tag"):
        read_image(tmp_path / "t.tif")
    Image.fromarray(pixels).save(tmp_path / "t.tif", tiffinfo={0x0112: 1})
    assert np.array_equal(read_image(tmp_path / "t.tif")[..., 0], pixels[..., 0] if mode == "RGB" else pixels)


def test_the_palette_kept_holds_every_class_colour_of_every_palette_mask(tmp_path: Path) -> None:
    """Found by a review: the first mask's palette was kept, and a first mask saved with the two colours it uses
    left classes 2 and 3 without a colour (predict.py then wrote them as 0 and 1)."""
    for index, (classes, palette) in enumerate([((0, 1), [0, 0, 0, 255, 0, 0]),
                                                ((0, 1, 2, 3), [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])]):
        mask = np.zeros((H, W), np.uint8)
        for value in classes[1:]:
            mask[4 * value: 4 * value + 4, :8] = value
        image = Image.fromarray(mask, mode="P")
        image.putpalette(palette)
        (tmp_path / "masks").mkdir(exist_ok=True)
        image.save(tmp_path / "masks" / f"s{index}.png")
        write_image(tmp_path / "imgs" / f"s{index}.png", noisy_rgb(index))
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert check.mask_values == [0, 1, 2, 3]
    assert check.palette[:12] == [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]


def test_labels_no_mask_file_can_hold_stop_training_before_it_starts(tmp_path: Path) -> None:
    """Found by a medical-imaging review: -1 ("unlabelled") in int16 masks was trained as a class, and predict.py
    then refused the model: no mask file it writes holds -1. And the check called int16 masks "8-bit labels"."""
    (tmp_path / "masks").mkdir()
    masks = []
    for i in range(2):
        mask = box_mask().astype(np.int16) * 5
        mask[:2] = -1
        write_image(tmp_path / "imgs" / f"s{i}.png", noisy_rgb(i))
        np.save(tmp_path / "masks" / f"s{i}.npy", mask)
        masks.append(mask)
    said = ("the masks hold the label -1, which no mask file predict.py writes can hold (labels are 0 to 65535): if "
            "-1 marks pixels left unlabelled, pass --ignore-index -1; otherwise relabel the masks from 0")
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert check.problems and said in check.suggestions()
    assert "masks: 16-bit labels (2); 3 classes" in check.report()
    result = run_script("train.py", "--imgs", tmp_path / "imgs", "--masks", tmp_path / "masks", "--epochs", "1",
                        "--checkpoint-dir", tmp_path / "run", "--workers", "0", cwd=REPO)
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (2, f"error: {said}")
    assert not (tmp_path / "run" / "last.pth").exists()
    ignored = check_dataset(tmp_path / "imgs", tmp_path / "masks", ignore_value=-1, workers=1)
    assert not ignored.problems and ignored.mask_values == [0, 5]
    for dtype, name in ((np.float32, "float labels"), (np.int32, "16-bit labels"), (np.uint8, "8-bit labels")):
        for i, mask in enumerate(masks):
            np.save(tmp_path / "masks" / f"s{i}.npy", mask.clip(0).astype(dtype))
        assert f"masks: {name} (2)" in check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).report()
    for i, mask in enumerate(masks):  # found by a review: a 32-bit TIFF's 70000 was called 16-bit
        (tmp_path / "masks" / f"s{i}.npy").unlink()
        Image.fromarray(mask.clip(0).astype(np.int32) * 14000).save(tmp_path / "masks" / f"s{i}.tif")
    assert "masks: 32-bit labels (2)" in check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).report()
    for i, mask in enumerate(masks):  # -1 and 40000: no 16-bit type holds both
        (tmp_path / "masks" / f"s{i}.tif").unlink()
        np.save(tmp_path / "masks" / f"s{i}.npy", np.where(mask == 5, 40000, mask.astype(np.int32)))
    assert "masks: 32-bit labels (2)" in check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).report()


def test_the_cache_forgets_files_gone_and_is_read_once_per_check(tmp_path, monkeypatch) -> None:
    """Found by a review of data sets of many files: every rename added entries that were never dropped (4,000
    entries for 500 pairs after three renames), and each check parsed the cache twice."""
    imgs, masks = write_pairs_with(tmp_path, [box_mask(), box_mask(), box_mask()])
    check_dataset(imgs, masks, workers=1)
    for folder in (imgs, masks):
        (folder / "s0.png").rename(folder / "renamed.png")
        (folder / "s2.png").unlink()
    reads = []
    real_read = check_data._read_cache
    monkeypatch.setattr(check_data, "_read_cache", lambda path: reads.append(path) or real_read(path))
    check = check_dataset(imgs, masks, workers=1)
    assert len(check.pairs) == 2 and reads == [masks / CACHE_NAME]
    keys = json.loads((masks / CACHE_NAME).read_text())["files"]
    assert sorted(keys) == [f"image:{imgs.absolute()}/renamed.png", f"image:{imgs.absolute()}/s1.png",
                            "mask:renamed.png", "mask:s1.png"]
    # found by the review of that change: image folders sharing one mask folder keep each other's entries
    other = tmp_path / "other_imgs"
    other.mkdir()
    for name in ("renamed.png", "s1.png"):
        (other / name).write_bytes((imgs / name).read_bytes())
    check_dataset(other, masks, workers=1)
    scanned = []
    real_inspect = check_data._inspect_one
    monkeypatch.setattr(check_data, "_inspect_one", lambda kind, path: scanned.append(path) or real_inspect(kind, path))
    check_dataset(imgs, masks, workers=1)
    check_dataset(other, masks, workers=1)
    check_dataset(other / ".." / "other_imgs", masks, workers=1)  # another spelling of the same folder
    assert scanned == []
    for folder in (imgs, masks):  # files only removed, nothing new to scan: their entries go all the same
        (folder / "s1.png").unlink()
    check_dataset(imgs, masks, workers=1)
    assert "mask:s1.png" not in json.loads((masks / CACHE_NAME).read_text())["files"]


def test_mostly_empty_masks_get_their_hint_beside_other_hints(tmp_path) -> None:
    """The empty-masks hint hangs on one_value's branch only (a review found it had slipped onto another's)."""
    empty = np.zeros_like(box_mask())
    check = check_dataset(*write_pairs_with(tmp_path, [empty, empty, box_mask()]), workers=1)
    assert "most masks are empty (background only): check the mask encoding or the folder" in check.suggestions()
    one_value = check_dataset(*write_pairs_with(tmp_path / "all_empty", [empty, empty]), workers=1)
    assert not any("most masks are empty" in hint for hint in one_value.suggestions())  # one_value says it


def _scan_worker_threads(queue) -> None:  # noqa: ANN001
    import threading

    check_data._start_scan_worker(None, os.getppid())
    queue.put(sorted(thread.name for thread in threading.enumerate()))


def _owner_seen(owner: int, queue) -> None:  # noqa: ANN001
    forked = os.getppid() == owner
    queue.put((forked, check_data._owner_gone(owner, forked)))


def test_scan_workers_end_with_the_process_they_work_for() -> None:
    """Found by a concurrency review: a data check killed outright (SIGKILL, the out-of-memory killer) left its
    scanning processes waiting for work for good, 300-400 MB each."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=_scan_worker_threads, args=(queue,))
    worker.start()
    assert "orphan-watch" in queue.get(timeout=60)
    worker.join(timeout=60)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process has ended: an owner killed before (spawn) or while the worker ran (forkserver)
    orphan = context.Process(target=check_data._end_when_orphaned, args=(gone.pid,))
    orphan.start()
    orphan.join(timeout=60)
    assert orphan.exitcode == 1  # ends at once: its owner is not there
    for method, forked in (("fork", True), ("forkserver", False)):  # forkserver's parent is the server, which
        method_context = multiprocessing.get_context(method)         # outlives the owner (a code review)
        answers = method_context.Queue()
        watcher = method_context.Process(target=_owner_seen, args=(os.getpid(), answers))
        watcher.start()
        assert answers.get(timeout=120) == (forked, False), method  # the owner, here, is not gone
        watcher.join(timeout=120)


@pytest.mark.parametrize("files", [None, [1, 2], {"mask:good0_mask.png": 5}, {"mask:good0_mask.png": "record"},
                                   "an unchanged file's entry without its record's fields"])
def test_a_cache_of_the_wrong_shape_is_scanned_again(tmp_path: Path, files: object) -> None:
    """Found by a concurrency review: valid JSON of another shape was a traceback on every run until deleted."""
    write_good_pairs(tmp_path)
    if isinstance(files, str):
        stat = (tmp_path / "masks" / "good0_mask.png").stat()
        files = {"mask:good0_mask.png": {"key": [stat.st_size, stat.st_mtime_ns], "record": {"width": 48}}}
    (tmp_path / "masks" / CACHE_NAME).write_text(json.dumps({"version": CACHE_VERSION, "files": files}))
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert len(check.pairs) == 3 and check.mask_values == [0, 1]


def test_masks_of_ignored_pixels_only_are_named_as_such_not_as_background(tmp_path: Path) -> None:
    """Found by a scale review: masks that were all --ignore-index were reported as "empty (background only)"."""
    void = np.full((H, W), 255, np.uint8)
    imgs, masks = write_pairs_with(tmp_path, [box_mask(), box_mask(), void])
    report = check_dataset(imgs, masks, ignore_value=255, workers=1).report()
    assert "masks of --ignore-index 255 only (nothing to learn or score): 1 (s2.png)" in report
    assert "empty masks" not in report

