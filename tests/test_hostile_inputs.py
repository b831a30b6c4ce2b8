"""Hostile and broken files: each is a usable pair, a line of the data check's report, or a one-line error naming it.

The fuzz test at the end writes hundreds of random and mutated files (truncated, bytes flipped, wrong sizes, headers
declaring huge sizes, random bytes, empty files, misnamed formats, odd arrays) into data folders and runs the data
check, a loader with a worker process, and on a subset the whole training entry point.
"""

import contextlib
import io
import os
import signal
import struct
import sys
import tempfile
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from conftest import NARROW_UNET, box_mask, noisy_rgb, write_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from utils.check_data import DataCheck, check_dataset
from utils.check_data import get_args_parser as check_data_parser
from utils.data_loading import (
    DEFAULT_MAX_IMAGE_PIXELS,
    PixelLimitError,
    SegmentationDataset,
    load_scaled_image,
    make_loader,
    read_image,
    read_mask,
    set_image_pixel_limit,
)
from utils.errors import UserError
from utils.run_log import RunLog, finite_histogram

H, W = 32, 48


@pytest.fixture(autouse=True)
def default_pixel_limit() -> Iterator[None]:
    """Every test starts and ends with Pillow's own limit, whatever it set."""
    set_image_pixel_limit(None)
    yield
    set_image_pixel_limit(None)


# --- files, valid and crafted ---------------------------------------------------------------------------------------


PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tif": "TIFF"}


@cache
def encoded(fmt: str, role: str, size: tuple[int, int] = (W, H)) -> bytes:
    """A valid file of format fmt (jpg, png, gif, bmp, tif, npy, pt or txt): a noisy image or a 0/1 mask."""
    width, height = size
    array = noisy_rgb(width * height, height, width) if role == "image" else box_mask(height, width)
    buffer = io.BytesIO()
    if fmt == "npy":
        np.save(buffer, array)
    elif fmt == "pt":
        torch.save(torch.from_numpy(array), buffer)
    elif fmt == "txt":
        buffer.write(b"width,height\n48,32\n")
    else:
        image = Image.fromarray(array)
        if role == "mask" and fmt == "gif":
            image = image.convert("P")
            image.putpalette([0, 0, 0, 255, 255, 255])
        image.save(buffer, format=PIL_FORMATS[fmt])
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (valid CRC) and that holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose screen and one frame declare width x height, with an empty frame."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"," + struct.pack("<HHHHB", 0, 0, width,
            height, 0) + b"\x02\x00;")


def jpeg_header(width: int, height: int) -> bytes:
    """A small valid JPEG with its frame header (SOF0) patched to declare width x height: data for 48x32 only."""
    data = bytearray(encoded("jpg", "image"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring width x height, without the pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


HEADERS = {"png": png_header, "gif": gif_header, "jpg": jpeg_header, "bmp": bmp_header}


def write_good_pairs(root: Path, count: int = 3) -> tuple[Path, Path]:
    for i in range(count):
        write_image(root / "imgs" / f"good{i}.png", noisy_rgb(i))
        write_image(root / "masks" / f"good{i}.png", box_mask())
    return root / "imgs", root / "masks"


def assert_one_line_naming(message: str, path: Path) -> None:
    assert message and "\n" not in message.strip(), message
    assert path.name in message, (path.name, message)
    assert "Traceback" not in message


# --- decompression bombs and --max-image-pixels ---------------------------------------------------------------------


def test_header_declaring_ten_billion_pixels_is_one_line_naming_the_file_the_limit_and_the_flag(tmp_path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(100_000, 100_000))
    with pytest.raises(PixelLimitError) as error:
        read_image(path)
    assert str(error.value) == (f"{path} declares 10,000,000,000 pixels, more than the safety limit of 89,478,485: "
                                "if the file is trusted, raise it with --max-image-pixels")


@pytest.mark.parametrize("fmt", ["png", "gif", "jpg", "bmp"])
def test_between_the_limit_and_twice_it_pillow_only_warns_but_the_file_is_refused(tmp_path, fmt: str) -> None:
    path = tmp_path / f"large.{fmt}"
    path.write_bytes(HEADERS[fmt](10_000, 10_000))  # 100 M pixels: between 89.5 M and 179 M
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        with pytest.raises(PixelLimitError, match=r"declares 100,000,000 pixels, more than the safety limit"):
            read_mask(path)


def test_a_raised_limit_admits_the_file_and_a_lowered_one_refuses_a_small_image(tmp_path) -> None:
    path = write_image(tmp_path / "small.png", noisy_rgb(0, 40, 40))  # 1,600 pixels
    set_image_pixel_limit(1000)  # 1.6x: Pillow alone would only warn
    with pytest.raises(PixelLimitError, match=r"small\.png declares 1,600 pixels, more than the safety limit of 1,000"):
        read_image(path)
    set_image_pixel_limit(500)  # 3.2x: Pillow raises
    with pytest.raises(PixelLimitError, match="1,600 pixels"):
        read_mask(path)
    set_image_pixel_limit(2000)
    assert read_image(path).shape == (40, 40, 3)
    set_image_pixel_limit(None)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS


@pytest.mark.parametrize("value", [0, -5])
def test_the_limit_cannot_be_switched_off(value: int) -> None:
    with pytest.raises(UserError, match=f"--max-image-pixels must be a positive number of pixels, got {value}"):
        set_image_pixel_limit(value)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS


def test_data_check_cli_takes_the_flag_and_its_help_names_the_default() -> None:
    parser = check_data_parser()
    assert parser.parse_args(["--max-image-pixels", "200000000"]).max_image_pixels == 200_000_000
    assert parser.parse_args([]).max_image_pixels is None
    [flag] = [action for action in parser._actions if action.dest == "max_image_pixels"]
    assert "89,478,485" in flag.help and "0 or less is refused" in flag.help


def test_every_script_applies_its_max_image_pixels_flag(tmp_path) -> None:
    """Found by a review: only the flag's parsing was tested; a script that dropped it went unnoticed."""
    from conftest import run_script

    from unet import UNet
    from utils.checkpoint import save_checkpoint

    imgs, masks = write_good_pairs(tmp_path, count=2)  # 48x32 = 1,536 pixels each
    save_checkpoint(tmp_path / "m.pth", UNet(3, 2, base_channels=8), [0, 1])
    limit = ["--max-image-pixels", "1000"]
    refused = "1,536 pixels, more than the safety limit of 1,000"
    check = run_script("-m utils.check_data", "--imgs", imgs, "--masks", masks, *limit, cwd=tmp_path)
    assert refused in check.stdout + check.stderr
    train = run_script("train.py", "--imgs", imgs, "--masks", masks, "--epochs", "1", "--wandb", "disabled",
                       "--workers", "0", *NARROW_UNET, *limit, cwd=tmp_path)
    assert train.returncode == 2 and refused in train.stdout + train.stderr
    evaluate = run_script("evaluate.py", "-m", "m.pth", "--imgs", imgs, "--masks", masks, "--workers", "0", *limit,
                          cwd=tmp_path)
    assert evaluate.returncode == 2 and refused in evaluate.stderr
    predict = run_script("predict.py", "-m", "m.pth", "-i", imgs / "good0.png", "-o", "out.png", *limit, cwd=tmp_path)
    assert predict.returncode == 1 and refused in predict.stdout + predict.stderr
    assert not (tmp_path / "out.png").exists()


def test_a_program_that_sets_no_pixel_limit_gets_none_anywhere(tmp_path, monkeypatch) -> None:
    """Found by a review: Image.MAX_IMAGE_PIXELS = None (a notebook's "no limit") made the data check's workers put
    Pillow's default back, and every dataset item a TypeError."""
    from PIL import Image

    imgs, masks = write_good_pairs(tmp_path, count=2)
    write_image(imgs / "big.png", noisy_rgb(9, 100, 120))  # 12,000 pixels
    write_image(masks / "big.png", box_mask(100, 120))
    set_image_pixel_limit(10_000)
    assert len(check_dataset(imgs, masks, workers=2).unreadable) == 2  # the limit, in the scan's workers
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for workers in (0, 2):
        check = check_dataset(imgs, masks, workers=workers)
        assert check.unreadable == [] and len(check.pairs) == 3
    np.save(imgs / "array.npy", np.zeros((20, 30, 3), np.uint8))
    dataset = SegmentationDataset(check.pairs, check.mask_values, scale=0.5)
    assert all(dataset[index]["image"].dtype == torch.uint8 for index in range(len(dataset)))
    from utils.data_loading import read_image
    assert read_image(imgs / "array.npy").shape == (20, 30, 3)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_a_loader_worker_process_applies_the_limit_set_before_the_loader_started(tmp_path, start_method) -> None:
    """Found by a review: a worker not forked from the main process (forkserver, Python 3.14's default on Linux;
    spawn on macOS and Windows) had Pillow's default limit, not --max-image-pixels."""
    import multiprocessing

    imgs, masks = write_good_pairs(tmp_path, count=2)  # 48x32 = 1,536 pixels each
    check = check_dataset(imgs, masks, workers=1)
    dataset = SegmentationDataset(check.pairs, check.mask_values, skip_unreadable=True)
    set_image_pixel_limit(1000)
    before = multiprocessing.get_start_method()
    multiprocessing.set_start_method(start_method, force=True)
    try:
        batches = list(make_loader(dataset, batch_size=2, device=torch.device("cpu"), workers=1))
    finally:
        multiprocessing.set_start_method(before, force=True)
    assert len(batches[0]["skipped"]) == 2 and "image" not in batches[0]
    assert all("1,536 pixels, more than the safety limit of 1,000" in reason for reason in batches[0]["skipped"])
    set_image_pixel_limit(2000)
    batches = list(make_loader(dataset, batch_size=2, device=torch.device("cpu"), workers=1))
    assert batches[0]["skipped"] == [] and batches[0]["image"].shape == (2, 3, H, W)


def test_the_data_check_cache_follows_the_limit_without_the_files_changing(tmp_path) -> None:
    imgs, masks = write_good_pairs(tmp_path)
    write_image(imgs / "big.png", noisy_rgb(9, 40, 60))  # 2,400 pixels
    write_image(masks / "big.png", box_mask(40, 60))
    set_image_pixel_limit(2000)
    refused = check_dataset(imgs, masks, workers=1)
    assert "big" not in [pair.name for pair in refused.pairs] and len(refused.unreadable) == 2
    assert all("2,400 pixels" in message and "--max-image-pixels" in message for message in refused.unreadable)
    set_image_pixel_limit(3000)
    assert "big" in [pair.name for pair in check_dataset(imgs, masks, workers=1).pairs]
    set_image_pixel_limit(2000)  # cached as readable, but not under this limit
    assert len(check_dataset(imgs, masks, workers=1).unreadable) == 2


def test_scaled_jpeg_whose_header_is_a_bomb_is_one_line_on_the_predict_path(tmp_path) -> None:
    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_header(65_535, 65_535))  # the header is read first to pick the JPEG draft size
    with pytest.raises(PixelLimitError) as error:
        load_scaled_image(path, 0.5)
    assert_one_line_naming(str(error.value), path)


# --- content that is not what the name says -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name", "expected"),
    [
        ("png", "photo.jpg", "it holds PNG data but is named .jpg: rename it to photo.png"),
        ("jpg", "mask.gif", "it holds JPEG data but is named .gif: rename it to mask.jpg"),
        ("gif", "mask.tif", "it holds GIF data but is named .tif: rename it to mask.gif"),
        ("tif", "scan.png", "it holds TIFF data but is named .png: rename it to scan.tif"),
        ("bmp", "old.jpeg", "it holds BMP data but is named .jpeg: rename it to old.bmp"),
        ("txt", "notes.png", "it is a text file, not an image: replace or remove it"),
        ("npy", "array.png", "it holds NumPy array data but is named .png: rename it to array.npy"),
        ("pt", "tensor.png", "it holds torch.save zip data but is named .png: rename it to tensor.pt"),
        ("png", "image.npy", "it holds PNG data but is named .npy: rename it to image.png"),
        ("jpg", "image.pt", "it holds JPEG data but is named .pt: rename it to image.jpg"),
    ],
)
def test_a_file_whose_content_is_another_format_names_it_and_the_fix(tmp_path, fmt: str, name: str,
                                                                     expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(encoded(fmt, "mask"))
    with pytest.raises(UserError) as error:
        read_mask(path)
    assert str(error.value) == f"cannot read {path}: {expected}"


def test_a_misnamed_file_is_an_unusable_pair_in_the_data_check(tmp_path) -> None:
    imgs, masks = write_good_pairs(tmp_path)
    (imgs / "misnamed.jpg").write_bytes(encoded("png", "image"))
    write_image(masks / "misnamed.png", box_mask())
    check = check_dataset(imgs, masks, workers=1)
    assert sorted(pair.name for pair in check.pairs) == ["good0", "good1", "good2"]
    assert check.unreadable == [f"cannot read {imgs / 'misnamed.jpg'}: it holds PNG data but is named .jpg: "
                                "rename it to misnamed.png"]
    assert check.problems and "unreadable: cannot read" in check.report()


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0.5, np.nan], [0.1, 0.2]], np.float32), "holds NaN or infinite values"),
        (np.array([[0.5, np.inf], [0.1, 0.2]], np.float64), "holds NaN or infinite values"),
        (np.zeros((0, 5), np.uint8), "holds no pixels (shape (0, 5))"),
        (np.ones((4, 4), np.complex64), "holds complex64 values"),
        (np.ones((4, 4, 3), np.float32) * np.array([-3e38, 0, 3e38], np.float32), None),  # extreme but finite
    ],
)
def test_arrays_with_values_no_image_or_mask_has_are_refused_by_name(tmp_path, array: np.ndarray,
                                                                     expected: str | None) -> None:
    for suffix in (".npy", ".pt"):
        path = write_image(tmp_path / f"odd{suffix}", array)
        if expected is None:
            assert read_image(path)[0, 0].tolist() == [0, 128, 255]
            continue
        for read in (read_image, read_mask):
            with pytest.raises(UserError) as error:
                read(path)
            assert expected in str(error.value)
            assert_one_line_naming(str(error.value), path)


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".png", ".jpg"])
@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 4], ids=["empty", "random"])
def test_empty_and_random_files_are_one_line_naming_them(tmp_path, suffix: str, content: bytes) -> None:
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(content)
    for read in (read_image, read_mask):
        with pytest.raises(UserError) as error:
            read(path)
        assert str(error.value).startswith(f"cannot read {path}")
        assert_one_line_naming(str(error.value), path)
        assert ("empty (0 bytes)" in str(error.value)) == (not content)


# --- what Pillow alone would read wrongly without a word ------------------------------------------------------------


def png_16_bit_colour(array: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (what cv2.imwrite writes for uint16 HxWx3), which Pillow decodes to 8 bits."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    height, width, _ = array.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in array)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def tiff_16_bit_colour(array: np.ndarray) -> bytes:
    """An uncompressed little-endian 48-bit RGB TIFF, strip of the whole image."""
    height, width, _ = array.shape
    pixels = array.astype("<u2").tobytes()
    tags = [(256, width), (257, height), (258, None), (259, 1), (262, 2), (273, None), (277, 3), (278, height),
            (279, len(pixels)), (284, 1)]
    bits_at = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, value in tags:
        if tag == 258:
            ifd += struct.pack("<HHII", tag, 3, 3, bits_at)
        elif tag in (273, 279):
            ifd += struct.pack("<HHII", tag, 4, 1, bits_at + 6 if tag == 273 else value)
        else:
            ifd += struct.pack("<HHIHH", tag, 3, 1, value, 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + pixels


def test_a_16_bit_colour_png_keeps_its_low_bits_and_is_stretched_like_16_bit_gray(tmp_path) -> None:
    """Found by a review: 12-bit data in a 48-bit PNG (0..4095) was read as its high byte, 0..15: nearly black."""
    array = np.zeros((8, 10, 3), np.uint16)
    array[..., 0] = np.linspace(0, 4095, 10, dtype=np.uint16)
    array[..., 2] = 1000
    path = tmp_path / "deep.png"
    path.write_bytes(png_16_bit_colour(array))
    expected = np.round(array / 4095 * 255).astype(np.uint8)
    assert np.array_equal(read_image(path), expected)
    with pytest.raises(UserError) as error:  # a colour mask's colours are its classes: 8 bits each
        read_mask(path)
    assert str(error.value) == (f"{path} holds 16 bits per colour channel: save colour masks with 8 bits per channel "
                                "(their colours are the classes)")


def test_a_16_bit_colour_tiff_and_a_tiff_of_pages_are_refused_by_name(tmp_path) -> None:
    deep = tmp_path / "deep.tif"
    deep.write_bytes(tiff_16_bit_colour(np.full((8, 10, 3), 4000, np.uint16)))
    assert Image.open(deep).mode == "RGB"  # Pillow would hand over the high bytes
    with pytest.raises(UserError) as error:
        read_image(deep)
    assert str(error.value) == (f"{deep} holds 16 bits per colour channel: Pillow cuts it to 8 in TIFF files: save it "
                                "as a 16-bit PNG or a .npy array (uint16, HxWx3)")
    pages = tmp_path / "pages.tif"
    page = Image.fromarray(np.zeros((8, 10), np.uint8))
    page.save(pages, save_all=True, append_images=[page, page])
    for read in (read_image, read_mask):
        with pytest.raises(UserError) as error:
            read(pages)
        assert_one_line_naming(str(error.value), pages)
        assert "is a TIFF of 3 pages, and one image per file is read: save each page as a file" in str(error.value)


@pytest.mark.parametrize("suffix", [".png", ".gif", ".webp"])
def test_an_animation_is_refused_by_name_not_read_as_its_first_frame(tmp_path, suffix: str) -> None:
    """Found by a review: an animated PNG was read as its first frame without a word (a TIFF of pages is refused)."""
    frames = [Image.fromarray(np.full((8, 10), value, np.uint8)) for value in (0, 255)]
    animation = tmp_path / f"anim{suffix}"
    frames[0].save(animation, save_all=True, append_images=frames[1:])
    assert getattr(Image.open(animation), "n_frames", 1) == 2
    for read in (read_image, read_mask):
        with pytest.raises(UserError) as error:
            read(animation)
        assert_one_line_naming(str(error.value), animation)
        assert str(error.value).endswith("is an animation of 2 frames, and one image per file is read: save the frame "
                                         "meant as a PNG of its own")
    frames[0].save(tmp_path / f"still{suffix}")
    assert read_mask(tmp_path / f"still{suffix}").shape[:2] == (8, 10)  # a still file of the format reads


def test_webp_and_jfif_images_pair_and_a_broken_link_is_reported_not_skipped(tmp_path) -> None:
    """Found by a review: x.webp was left out and its mask reported as unpaired; a dangling link vanished."""
    images, masks = write_good_pairs(tmp_path, 3)
    Image.open(images / "good0.png").save(images / "good0.webp", lossless=True)
    Image.open(images / "good1.png").convert("RGB").save(images / "good1.jfif", format="JPEG")
    (images / "good0.png").unlink()
    (images / "good1.png").unlink()
    (images / "good2.png").unlink()
    (images / "good2.png").symlink_to(tmp_path / "gone.png")
    check = check_dataset(images, masks, workers=1)
    assert sorted(pair.image.name for pair in check.pairs) == ["good0.webp", "good1.jfif"]
    assert check.unreadable == [f"{images / 'good2.png'} is a link to {tmp_path / 'gone.png'}, which does not exist: "
                                "mend or remove the link"]
    assert np.array_equal(read_image(images / "good0.webp"), noisy_rgb(0)[..., :3])


# --- histograms of a diverged model ---------------------------------------------------------------------------------


def test_histograms_bin_extreme_and_constant_finite_values() -> None:
    """NaN and inf are left out before (the wandb test below); the finite values, however extreme, all count."""
    counts, edges = finite_histogram(np.array([-3e38, 3e38, 0.0]))
    assert counts.sum() == 3 and np.isfinite(edges).all()
    counts, edges = finite_histogram(np.array([1e17, 1e17]))  # constant: numpy's own +-0.5 vanishes here
    assert counts.sum() == 2 and edges[0] < 1e17 < edges[-1]


def test_an_epoch_with_nan_and_inf_weights_and_gradients_is_logged_to_wandb_offline(tmp_path, monkeypatch,
                                                                                   capsys) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # never a server
    monkeypatch.setenv("WANDB_SILENT", "true")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        model[0].weight.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38])
        model[0].weight.view(-1)[4] = -3e38
        model[1].weight.fill_(float("nan"))  # nothing finite left: no histogram, no crash
    model[0].weight.grad = torch.full_like(model[0].weight, float("nan"))
    model[0].bias.grad = torch.full_like(model[0].bias, 1e-45)
    sample = {"image": torch.full((3, 8, 8), float("nan")), "true": torch.zeros(8, 8, dtype=torch.long),
              "pred": torch.ones(8, 8, dtype=torch.long)}
    run_log = RunLog(tmp_path, {"lr": 1.0}, "offline")
    assert run_log.wandb_run is not None
    logged: list[dict] = []
    real_log = run_log.wandb_run.log
    monkeypatch.setattr(run_log.wandb_run, "log", lambda record: (logged.append(record), real_log(record)))
    run_log.log_epoch({"epoch": 1, "step": 1, "train_loss": float("nan"), "val_dice": float("inf")}, model, sample)
    run_log.close()
    assert "warning" not in capsys.readouterr().err  # wandb was neither stopped nor failed
    histograms = {key: value for key, value in logged[0].items() if key.startswith(("Weights/", "Gradients/"))}
    assert set(histograms) == {"Weights/0/weight", "Weights/0/bias", "Gradients/0/bias", "Weights/1/bias"}
    assert sum(histograms["Weights/0/weight"].histogram) == model[0].weight.numel() - 3
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("1,1,nan,inf")


# --- the fuzz test --------------------------------------------------------------------------------------------------


class Case(NamedTuple):
    kind: str
    role: str  # "image" or "mask": which file of the pair is hostile
    suffix: str  # the hostile file's name ends so
    content: bytes
    after_check: bool  # written over a good file after the data check (size and mtime kept), as if it broke later
    must_fail: bool  # can never be a usable pair
    declared_pixels: int = 0  # what a crafted header claims


IMAGE_FORMATS = ("jpg", "png", "gif", "bmp", "tif")
ARRAY_CASES = {
    "nan": np.full((H, W), np.nan, np.float32), "inf": np.full((H, W, 3), np.inf, np.float64),
    "complex": np.ones((H, W), np.complex64), "empty": np.zeros((0, W), np.uint8), "1d": np.arange(W, dtype=np.uint8),
    "4d": np.zeros((1, 1, H, W), np.uint8), "5 channels": np.zeros((H, W, 5), np.uint8),
    "huge ints": np.full((H, W), 2**40, np.int64), "bool": box_mask().astype(bool),
    "floats 0..1": np.random.default_rng(0).random((H, W, 3)).astype(np.float32),
}


def array_bytes(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array) if fmt == "npy" else torch.save(torch.from_numpy(array), buffer)
    return buffer.getvalue()


@st.composite
def hostile_cases(draw: st.DrawFn, kind: str) -> Case:
    role = draw(st.sampled_from(["image", "mask"]))
    after_check = draw(st.booleans())
    if kind in ("truncated", "flipped"):
        fmt = draw(st.sampled_from(IMAGE_FORMATS))
        data = bytearray(encoded(fmt, role))
        if kind == "truncated":
            data = data[: draw(st.integers(0, len(data) - 1))]
        else:
            for offset, bits in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)),
                                              min_size=1, max_size=8)):
                data[offset] ^= bits
        return Case(kind, role, f".{fmt}", bytes(data), after_check, False)
    if kind == "wrong size":
        fmt = draw(st.sampled_from(("png", "gif", "jpg")))
        size = draw(st.tuples(st.integers(1, 64), st.integers(1, 64)).filter(lambda s: s != (W, H)))
        return Case(kind, role, f".{fmt}", encoded(fmt, role, size), after_check, True)
    if kind == "huge header":
        fmt = draw(st.sampled_from(sorted(HEADERS)))
        most = 65_535 if fmt in ("gif", "jpg") else 200_000
        sides = st.sampled_from([9_460, 10_000, 13_000, 65_535]) | st.integers(1, most)
        width, height = min(draw(sides), most), min(draw(sides), most)
        width += (width, height) == (W, H)  # a JPEG declaring its own size would simply be valid
        return Case(kind, role, f".{fmt}", HEADERS[fmt](width, height), after_check, True, width * height)
    suffix = draw(st.sampled_from([".jpg", ".png", ".gif", ".bmp", ".tif", ".npy", ".pt"]))
    if kind == "random bytes":
        return Case(kind, role, suffix, draw(st.binary(min_size=1, max_size=3000)), after_check, True)
    if kind == "empty":
        return Case(kind, role, suffix, b"", after_check, True)
    if kind == "misnamed":
        fmt = draw(st.sampled_from([*IMAGE_FORMATS, "npy", "pt", "txt"]).filter(lambda f: f".{f}" != suffix))
        return Case(kind, role, suffix, encoded(fmt, role), after_check, True)
    name = draw(st.sampled_from(sorted(ARRAY_CASES)))
    fmt = draw(st.sampled_from(["npy", "pt"]))
    valid = name in ("huge ints", "bool", "floats 0..1")  # odd, but an image or mask all the same
    return Case(kind, role, f".{fmt}", array_bytes(ARRAY_CASES[name], fmt), after_check, not valid)


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """A hang fails the test instead of stalling it (SIGALRM reaches the main thread also while it waits on workers)."""
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError(f"no outcome after {seconds} s")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def captured_output(path: Path) -> Iterator[Path]:
    """stdout and stderr of this process and of the loader workers it forks (they inherit both) go to path."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        try:
            with contextlib.redirect_stdout(file), contextlib.redirect_stderr(file):
                yield path
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def plant(root: Path, case: Case) -> Path:
    """Three good pairs and the hostile pair, or (after_check) only the good file it will overwrite: its path."""
    imgs, masks = write_good_pairs(root)
    if case.after_check:
        return (imgs if case.role == "image" else masks) / "good1.png"
    hostile = (imgs if case.role == "image" else masks) / f"hostile{case.suffix}"
    hostile.write_bytes(case.content)
    partner = (masks if case.role == "image" else imgs) / "hostile.png"
    write_image(partner, box_mask() if case.role == "image" else noisy_rgb(7))
    return hostile


def overwrite_keeping_size_and_mtime(path: Path, content: bytes) -> None:
    """The data check's cache keys on size and mtime: a file broken this way is only found when it is decoded."""
    stat = path.stat()
    path.write_bytes(content[: stat.st_size].ljust(stat.st_size, b"\0"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def run_check(root: Path, case: Case, hostile: Path) -> tuple[str, DataCheck | None]:
    """The data check; the hostile file is a usable pair or named in exactly the report's problem lines."""
    try:
        check = check_dataset(root / "imgs", root / "masks", workers=1)
    except UserError as error:  # nothing left to train on, or mixed mask encodings: one line naming the file
        assert_one_line_naming(str(error), hostile)
        return "refused", None
    problems = check.unreadable + check.size_mismatches
    for message in problems:
        assert "\n" not in message and "Traceback" not in message, message
    naming = [message for message in problems if hostile.name in message]
    usable = hostile.stem in [pair.name for pair in check.pairs]
    assert {"good0", "good1", "good2"} <= {pair.name for pair in check.pairs}
    assert usable != bool(naming), (case.kind, usable, problems)
    assert not (case.must_fail and not case.after_check and usable), case
    if case.declared_pixels > Image.MAX_IMAGE_PIXELS and not case.after_check:
        assert f"declares {case.declared_pixels:,} pixels, more than the safety limit" in naming[0], naming
    check.report()
    return ("usable" if usable else "reported"), check


def run_loader(check: DataCheck, hostile: Path) -> str:
    """The training dataset through a loader worker process: each file is decoded, skipped with a one-line reason,
    or stops the loader with a one-line UserError (a mask of another size or with unknown values)."""
    dataset = SegmentationDataset(check.pairs, check.mask_values, skip_unreadable=True)
    names, skipped = [], []
    try:
        for batch in make_loader(dataset, batch_size=2, device=torch.device("cpu"), workers=1):
            names += batch.get("name", [])
            skipped += batch["skipped"]
    except UserError as error:  # the worker's traceback is folded into the message: the CLI shows the last line
        assert_one_line_naming(str(error).strip().splitlines()[-1], hostile)
        return "worker stopped"
    for reason in skipped:
        assert "\n" not in reason and hostile.name in reason, reason
    assert len(names) + len(skipped) == len(check.pairs)
    return "worker skipped it" if skipped else "worker decoded it"


def run_training(root: Path, hostile: Path) -> str:
    """train.main itself, one epoch with a loader worker: it trains (the hostile file reported or skipped) or stops
    with a one-line UserError naming it."""
    import train

    args = train.get_args_parser().parse_args([
        "--imgs", str(root / "imgs"), "--masks", str(root / "masks"), "--checkpoint-dir", str(root / "ck"),
        "--epochs", "1", "--workers", "1", "--batch-size", "2", "--scale", "1", "--wandb", "disabled",
        "--validation", "0", "--precision", "fp32", "--bilinear", *NARROW_UNET])  # the quickest CPU step
    try:
        result = train.main(args)
    except UserError as error:
        assert_one_line_naming(str(error).strip().splitlines()[-1], hostile)
        return "train.main stopped"
    assert result["step"] >= 1
    return "train.main trained"


KINDS = ("truncated", "flipped", "wrong size", "huge header", "random bytes", "empty", "misnamed", "odd array")
EXAMPLES_PER_KIND = 20
# train.main costs ~2.5 s here: it runs on one example of each of these kinds, the others stop after the loader;
# False: the data check meets the hostile file, True: it breaks after the check and a loader worker meets it.
TRAINED_KINDS = {"truncated": False, "misnamed": False, "flipped": True, "wrong size": True}


def fuzz(kind: str, tally: Counter, outcomes: Counter) -> None:
    """EXAMPLES_PER_KIND hostile files of one kind, each in a fresh folder, with a time limit."""
    trained: list[Case] = []
    @settings(max_examples=EXAMPLES_PER_KIND, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=hostile_cases(kind))
    def one_case(case: Case) -> None:
        tally[kind] += 1
        # Past the first examples: hypothesis starts with its simplest (a file cut at byte 0, ...).
        train = TRAINED_KINDS.get(kind) == case.after_check and not trained and tally[kind] > 2
        if train:
            trained.append(case)
        with tempfile.TemporaryDirectory() as folder, time_limit(60):
            root = Path(folder)
            hostile = plant(root, case)
            with captured_output(root / "output.txt") as output:
                verdict, check = run_check(root, case, hostile)
                verdict = f"check: {verdict}"
                if case.after_check:
                    overwrite_keeping_size_and_mtime(hostile, case.content)
                if verdict == "check: usable":  # a reported file never reaches the loader: only the good ones would
                    verdict += ", " + run_loader(check, hostile)
                if train:
                    verdict += ", " + run_training(root, hostile)
            assert "Traceback" not in output.read_text(), output.read_text()[-3000:]
        outcomes[verdict] += 1

    one_case()


# Pillow notes a damaged TIFF tag with a UserWarning that names no file; the CLIs hide its notes (run_cli)
@pytest.mark.filterwarnings("ignore:Tag data larger than file:UserWarning")
def test_hostile_files_at_volume_end_as_usable_pairs_report_lines_or_one_line_errors() -> None:
    tally: Counter = Counter()
    outcomes: Counter = Counter()
    for kind in KINDS:
        fuzz(kind, tally, outcomes)
    summary = ", ".join(f"{kind} {tally[kind]}" for kind in KINDS)
    print(f"\nhostile-input fuzz: {sum(outcomes.values())} cases ({summary}); outcomes: {dict(outcomes)}")
    assert all(tally[kind] >= EXAMPLES_PER_KIND // 2 for kind in KINDS), tally  # small spaces may run out early
    assert sum("train.main" in verdict for verdict in outcomes.elements()) == len(TRAINED_KINDS)
    assert any("skipped" in verdict for verdict in outcomes) and any("reported" in verdict for verdict in outcomes)


def test_array_images_and_masks_keep_to_the_pixel_limit_and_hold_their_pixels(tmp_path) -> None:
    """Found by a review of untrusted files: a 1.5 KB .pt of torch.zeros(()).expand(100000, 100000, 3) (and a
    .npy whose header declares 20000x20000) went past --max-image-pixels, which only image headers met, and
    ended in allocation tracebacks."""
    from utils.data_loading import image_size, read_image, read_mask

    torch.save(torch.zeros((), dtype=torch.uint8).expand(100000, 100000, 3), tmp_path / "bomb.pt")
    torch.save(torch.zeros((), dtype=torch.uint8).expand(64, 48, 3), tmp_path / "repeated.pt")
    np.lib.format.open_memmap(tmp_path / "huge.npy", mode="w+", dtype=np.uint8, shape=(20000, 20000))
    for read in (read_image, read_mask, image_size):
        with pytest.raises(UserError, match=r"bomb.pt declares 10,000,000,000 pixels \(100000x100000x3\), more than "
                                            r"the safety limit of 89,478,485: if the file is trusted, raise it"):
            read(tmp_path / "bomb.pt")
        with pytest.raises(UserError, match=r"huge.npy declares 400,000,000 pixels \(20000x20000\)"):
            read(tmp_path / "huge.npy")
        with pytest.raises(UserError, match=r"repeated.pt holds a tensor of shape \[64, 48, 3\] whose data is "
                                            r"smaller than that \(one value repeated\)"):
            read(tmp_path / "repeated.pt")
    values = torch.arange(64 * 48 * 3, dtype=torch.int32).reshape(64, 48, 3) % 256
    torch.save(values.permute(2, 0, 1), tmp_path / "channels_first.pt")  # a view of all its data: read as before
    np.testing.assert_array_equal(read_image(tmp_path / "channels_first.pt"), values.numpy().astype(np.uint8))
