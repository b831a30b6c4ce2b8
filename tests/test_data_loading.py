"""Decoding images and masks of every supported format, pairing folders, and dataset items."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HEIGHT, WIDTH, disc_mask, random_rgb, write_image
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from utils.data_loading import (
    SegmentationDataset,
    class_index_dtype,
    image_in_memory,
    image_to_tensor,
    init_loader_worker,
    list_pairs,
    load_scaled_image,
    normalize_images,
    read_image,
    read_mask,
    resize_nearest,
)
from utils.errors import UserError

PALETTE = [0, 0, 0, 255, 0, 0, 0, 255, 0]  # index 0 black, 1 red, 2 green


def index_pattern(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """uint8 HxW with every one of the indices 0, 1, 2."""
    return (np.add.outer(np.arange(height), np.arange(width)) % 3).astype(np.uint8)


# --- read_image -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".npy", ".pt"])
def test_lossless_rgb_image_reads_back_exactly(tmp_path, suffix):
    rgb = random_rgb(0)
    path = write_image(tmp_path / f"img{suffix}", rgb)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(image, rgb)


def test_channels_first_tensor_is_transposed(tmp_path):
    rgb = random_rgb(1)
    path = write_image(tmp_path / "img.pt", rgb.transpose(2, 0, 1))
    assert np.array_equal(read_image(path), rgb)


def test_jpeg_reads_as_uint8_rgb_close_to_the_colour(tmp_path):
    rgb = np.full((HEIGHT, WIDTH, 3), (200, 30, 90), dtype=np.uint8)
    image = read_image(write_image(tmp_path / "img.jpg", rgb))
    assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(image.astype(int) - rgb).max() <= 6


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_palette_image_reads_as_its_colours(tmp_path, suffix):
    indices = index_pattern()
    path = write_image(tmp_path / f"img{suffix}", indices, mode="P", palette=PALETTE)
    image = read_image(path)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(image, np.array(PALETTE, dtype=np.uint8).reshape(3, 3)[indices])


def test_grayscale_image_is_repeated_to_three_channels(tmp_path):
    gray = random_rgb(2)[..., 0]
    path = write_image(tmp_path / "gray.png", gray)
    image = read_image(path)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert all(np.array_equal(image[..., c], gray) for c in range(3))


def test_grayscale_image_with_one_channel_is_hxwx1(tmp_path):
    gray = random_rgb(3)[..., 0]
    for suffix in (".png", ".npy"):
        image = read_image(write_image(tmp_path / f"gray{suffix}", gray), channels=1)
        assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 1)
        assert np.array_equal(image[..., 0], gray)


def test_rgb_image_with_one_channel_is_converted_to_luminance(tmp_path):
    rgb = random_rgb(4)
    image = read_image(write_image(tmp_path / "rgb.png", rgb), channels=1)
    assert image.shape == (HEIGHT, WIDTH, 1)
    assert np.array_equal(image[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))


@pytest.mark.parametrize("suffix", [".png", ".npy"])
def test_rgba_image_drops_alpha(tmp_path, suffix):
    rgba = np.random.default_rng(5).integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    image = read_image(write_image(tmp_path / f"rgba{suffix}", rgba))
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(image, rgba[..., :3])


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy"])
def test_a_four_channel_model_reads_all_four_bands(tmp_path, suffix):
    rgba = np.random.default_rng(6).integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    assert np.array_equal(read_image(write_image(tmp_path / f"rgba{suffix}", rgba), channels=4), rgba)


def _png_16_bit_gray_alpha(path: Path, gray: np.ndarray) -> None:
    """A 16-bit gray + alpha PNG (colour type 4), which Pillow cannot write: chunks by hand."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = np.stack([gray, np.full_like(gray, 65535)], -1).astype(">u2")
    rows = b"".join(b"\0" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", gray.shape[1], gray.shape[0], 16, 4, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_four_band_tiffs_and_16_bit_gray_alpha_read_as_stored_or_named(tmp_path):
    """Found by a review: a TIFF whose fourth band is tagged as premultiplied alpha had its RGB divided by it without
    a word; one tagged as unspecified (RGB + near-infrared from GIS tools) was said to hold 3 bands; a 16-bit gray +
    alpha PNG was refused for its shape; a TIFF Pillow cannot decode was only told to be replaced."""
    bands = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    bands[..., :3], bands[..., 3] = 100, 50
    Image.frombytes("RGBX", (WIDTH, HEIGHT), bands.tobytes()).save(tmp_path / "rgbn.tif")  # fourth: unspecified
    assert np.array_equal(read_image(tmp_path / "rgbn.tif"), bands[..., :3])
    with pytest.raises(UserError, match=r"rgbn.tif holds 4 bands, but Pillow reads only the first three of this "
                                        r"TIFF: save its bands as an HxWx4 .npy array"):
        read_image(tmp_path / "rgbn.tif", channels=4)
    from utils.check_data import check_dataset

    (tmp_path / "imgs").mkdir()
    (tmp_path / "rgbn.tif").rename(tmp_path / "imgs" / "rgbn.tif")
    write_image(tmp_path / "masks" / "rgbn.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    write_image(tmp_path / "imgs" / "rgb.png", random_rgb(0))  # a second group: the message names both (a review)
    write_image(tmp_path / "masks" / "rgb.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    assert check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).bands_error(4, "-") == (
        "the model reads 4 channels, but Pillow does not read the bands past three of 1 TIFF image (rgbn): save "
        "its bands as an HxWx4 .npy array (tifffile.imread reads them as stored), or as RGBA PNGs; and 1 of the 2 "
        "images holds fewer bands (rgb): give every image its fourth band (RGBA PNG or TIFF, HxWx4 .npy), or -")
    Image.fromarray(random_rgb(1)).convert("YCbCr").save(tmp_path / "ycbcr.tif", compression="tiff_lzw")
    with pytest.raises(UserError, match=r"ycbcr.tif holds 3 bands, but the model reads 4"):  # no fourth (a review)
        read_image(tmp_path / "ycbcr.tif", channels=4)
    Image.fromarray(bands, "RGBA").save(tmp_path / "a.tif")
    data = (tmp_path / "a.tif").read_bytes()
    unassociated = bytes.fromhex("5201 0300 01000000 0200")  # ExtraSamples: 1 value, 2 (unassociated alpha)
    assert data.count(unassociated) == 1
    (tmp_path / "a.tif").write_bytes(data.replace(unassociated, bytes.fromhex("5201 0300 01000000 0100")))
    with pytest.raises(UserError, match=r"a.tif is a TIFF whose fourth band is tagged as premultiplied alpha, which "
                                        r"Pillow divides the colours by as it reads: save its bands as an HxWxC .npy"):
        read_image(tmp_path / "a.tif")
    gray = np.full((HEIGHT, WIDTH), 400, np.uint16)
    gray[:10] = 4000
    _png_16_bit_gray_alpha(tmp_path / "la16.png", gray)
    assert np.array_equal(read_image(tmp_path / "la16.png", channels=1)[..., 0], (gray == 4000).astype(np.uint8) * 255)
    Image.fromarray(bands[..., :3]).save(tmp_path / "cut.tif")
    (tmp_path / "cut.tif").write_bytes((tmp_path / "cut.tif").read_bytes()[:200])
    with pytest.raises(UserError, match=r"cut.tif .*: a damaged file, or a TIFF layout Pillow does not read \(more "
                                        r"than four bands, several gray bands, bands stored apart\)"):
        read_image(tmp_path / "cut.tif")


def test_the_transparency_of_a_palette_image_is_no_fourth_band(tmp_path):
    """RGBA files hold a fourth band of data (near-infrared, say); a palette's transparency is not one: it is
    dropped, as gray + alpha's is (found by a review: one kept it, the other not)."""
    indices = np.arange(HEIGHT * WIDTH, dtype=np.uint8).reshape(HEIGHT, WIDTH) % 4
    palette = Image.fromarray(indices, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.save(tmp_path / "p.png", transparency=0)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)[indices]
    assert np.array_equal(read_image(tmp_path / "p.png"), colours)
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 2), np.uint8), "LA").save(tmp_path / "la.png")
    with pytest.raises(UserError, match="holds 1 band, but the model reads 4 channels"):
        read_image(tmp_path / "la.png", channels=4)
    with pytest.raises(UserError, match="holds 3 bands, but the model reads 4 channels"):
        read_image(tmp_path / "p.png", channels=4)


def test_a_four_band_array_is_stretched_over_the_bands_the_model_reads(tmp_path):
    """Found by a review: the stretch of a 16-bit RGB + near-infrared array took its range from all four bands,
    also for a 3-channel model, which then saw the three it reads dimmed by the fourth's brighter values."""
    bands = np.zeros((HEIGHT, WIDTH, 4), np.uint16)
    bands[..., :3] = np.linspace(100, 1100, WIDTH, dtype=np.uint16)[:, None]
    bands[..., 3] = 60000
    path = write_image(tmp_path / "rgbn.npy", bands)
    rgb = read_image(path)
    assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb.min() == 0 and rgb.max() == 255
    assert np.array_equal(read_image(path, channels=4)[..., 3], np.full((HEIGHT, WIDTH), 255))


@pytest.mark.parametrize(("array", "mode", "held"), [
    (np.zeros((HEIGHT, WIDTH, 3), np.uint8), "RGB", "3 bands"),
    (np.zeros((HEIGHT, WIDTH), np.uint8), "L", "1 band"),
    (np.zeros((HEIGHT, WIDTH, 4), np.uint8), "CMYK", "CMYK colours"),  # a colour space, read as RGB
])
def test_a_four_channel_model_refuses_an_image_without_a_fourth_band(tmp_path, array, mode, held):
    path = tmp_path / "three.tif"
    Image.fromarray(array, mode).save(path)
    with pytest.raises(UserError) as error:
        read_image(path, channels=4)
    assert str(error.value) == (
        f"{path} holds {held}, but the model reads 4 channels (RGB + a fourth band, such as near-infrared): save "
        "each image's four bands as an RGBA PNG or TIFF or an HxWx4 .npy, or use a model of 3 channels")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_image_is_stretched_to_full_uint8_range(tmp_path, suffix):
    values = np.array([[1000, 2000, 3000], [4000, 5000, 1000]], dtype=np.uint16)
    path = write_image(tmp_path / f"deep{suffix}", values)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (2, 3, 3)
    expected = np.round((values.astype(np.float64) - 1000) / 4000 * 255).astype(np.uint8)
    assert np.array_equal(image[..., 0], expected)
    assert image.min() == 0 and image.max() == 255


def test_float_tensor_in_unit_range_is_scaled_by_255(tmp_path):
    values = np.array([[[0.0, 0.5], [0.25, 1.0]]] * 3, dtype=np.float32)  # 3x2x2, channels first
    image = read_image(write_image(tmp_path / "float.pt", values))
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    assert np.array_equal(image[..., 1], np.array([[0, 128], [64, 255]], dtype=np.uint8))


def test_8_bit_values_in_a_wider_integer_type_are_taken_as_they_are(tmp_path):
    """Found by a review: an int64 array of 10..199 (astype(int) of an 8-bit image) was stretched to 0..255, and so
    predicted on other pixels than the same image as uint8; 16-bit images are still stretched."""
    values = np.array([[10, 100], [150, 199]], dtype=np.int64)
    assert np.array_equal(read_image(write_image(tmp_path / "wide.npy", values))[..., 0], values)
    for order in ("<u2", ">u2"):  # big-endian too: ImageJ's TIFFs (found by a review)
        sixteen = read_image(write_image(tmp_path / "sixteen.npy", values.astype(order)))[..., 0]
        assert sixteen.min() == 0 and sixteen.max() == 255, order
    assert read_image(write_image(tmp_path / "beyond.npy", values * 2))[..., 0].max() == 255  # 20..398: stretched


def test_16_bit_slices_are_stretched_alike_whatever_their_values(tmp_path):
    """Found by a medical-imaging review: a signed 16-bit slice (int16 .npy, or a signed TIFF, which Pillow reads
    as 32-bit "I") whose values happened to lie within 0..255 was taken as it was, while its neighbours of the
    same volume, one pixel brighter, were stretched."""
    values = np.array([[50, 100], [175, 250]])
    stretched = np.round((values - 50) / 200 * 255).astype(np.uint8)
    for order in ("<i2", ">i2", "<u2"):
        assert np.array_equal(read_image(write_image(tmp_path / "slice.npy", values.astype(order)))[..., 0],
                              stretched), order
    tiff = tmp_path / "slice.tif"
    Image.fromarray(values.astype(np.int32)).save(tiff)
    with Image.open(tiff) as opened:
        assert opened.mode == "I"
        assert np.array_equal(image_in_memory(opened)[..., 0], stretched)
    assert np.array_equal(read_image(tiff)[..., 0], stretched)
    assert np.array_equal(read_image(write_image(tmp_path / "wide.npy", values))[..., 0], values)  # int64: 8-bit


def test_unreadable_image_raises_user_error_naming_it(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="broken.png"):
        read_image(path)
    with pytest.raises(UserError, match="missing.png"):
        read_image(tmp_path / "missing.png")


# --- read_mask --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_palette_mask_keeps_indices_not_colours(tmp_path, suffix):
    indices = index_pattern()
    mask = read_mask(write_image(tmp_path / f"mask{suffix}", indices, mode="P", palette=PALETTE))
    assert mask.dtype == np.uint8 and mask.shape == (HEIGHT, WIDTH)
    assert np.array_equal(mask, indices)


def test_gray_mask_saved_as_rgb_stays_a_colour_mask(tmp_path):
    gray = disc_mask(value=255)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    mask = read_mask(write_image(tmp_path / "mask.png", rgb))
    assert mask.shape == (HEIGHT, WIDTH, 3)  # RGB in, RGB out: the encoding is the file's, not its content's
    assert np.array_equal(mask, rgb)


def test_colour_mask_stays_hxwx3(tmp_path):
    colours = np.array(PALETTE, dtype=np.uint8).reshape(3, 3)[index_pattern()]
    mask = read_mask(write_image(tmp_path / "mask.png", colours))
    assert mask.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(mask, colours)


def test_rgba_colour_mask_drops_alpha(tmp_path):
    colours = np.array(PALETTE, dtype=np.uint8).reshape(3, 3)[index_pattern()]
    rgba = np.concatenate([colours, np.full((HEIGHT, WIDTH, 1), 255, np.uint8)], axis=-1)
    mask = read_mask(write_image(tmp_path / "mask.png", rgba))
    assert np.array_equal(mask, colours)


def test_bool_npy_mask_reads_as_zero_one(tmp_path):
    flags = disc_mask().astype(bool)
    mask = read_mask(write_image(tmp_path / "mask.npy", flags))
    assert mask.dtype == np.uint8 and mask.shape == (HEIGHT, WIDTH)
    assert np.array_equal(mask, flags.astype(np.uint8))
    assert set(np.unique(mask)) == {0, 1}


def test_label_tensor_mask_keeps_values(tmp_path):
    labels = index_pattern().astype(np.int64) * 7
    mask = read_mask(write_image(tmp_path / "mask.pt", labels))
    assert mask.shape == (HEIGHT, WIDTH)
    assert np.array_equal(mask, labels)


# --- list_pairs -------------------------------------------------------------------------------------


def _touch_images(folder, names, seed: int = 0):
    for i, name in enumerate(names):
        write_image(folder / name, random_rgb(seed + i, 6, 5))


def test_carvana_mask_suffix_is_detected(carvana_folder):
    pairs = list_pairs(carvana_folder / "imgs", carvana_folder / "masks")
    assert [(p.name, p.image.name, p.mask.name) for p in pairs] == [
        ("car0_01", "car0_01.png", "car0_01_mask.gif"),
        ("car1_01", "car1_01.png", "car1_01_mask.gif"),
    ]


def test_same_stem_pairs_are_detected(tmp_path):
    _touch_images(tmp_path / "imgs", ["a.jpg", "b.jpg"])
    _touch_images(tmp_path / "masks", ["a.png", "b.png"])
    pairs = list_pairs(tmp_path / "imgs", tmp_path / "masks")
    assert [(p.image.name, p.mask.name) for p in pairs] == [("a.jpg", "a.png"), ("b.jpg", "b.png")]


def test_images_and_masks_in_one_folder_pair_by_suffix_not_with_themselves(tmp_path, capsys):
    _touch_images(tmp_path, ["a.jpg", "a_mask.png", "b.jpg", "b_mask.png"])
    pairs = list_pairs(tmp_path, tmp_path)
    assert [(p.image.name, p.mask.name) for p in pairs] == [("a.jpg", "a_mask.png"), ("b.jpg", "b_mask.png")]
    assert "skipping" not in capsys.readouterr().err  # the masks are not unpaired images
    with pytest.raises(UserError, match="masks need a name suffix .*--mask-suffix"):
        list_pairs(tmp_path, tmp_path, mask_suffix="")


def test_explicit_mask_suffix_overrides_detection(tmp_path):
    _touch_images(tmp_path / "imgs", ["a.png", "b.png"])
    _touch_images(tmp_path / "masks", ["a_mask.png", "b_mask.png", "a_seg.png", "b_seg.png"])
    with pytest.raises(UserError, match="pair with the images in two ways, 2 each: e.g. image 'a' has both 'a_mask' "
                                        "and 'a_seg': pass --mask-suffix '_mask' or --mask-suffix '_seg'"):
        list_pairs(tmp_path / "imgs", tmp_path / "masks")  # two suffixes pair every image: not a guess
    explicit = list_pairs(tmp_path / "imgs", tmp_path / "masks", mask_suffix="_seg")
    assert [p.mask.name for p in explicit] == ["a_seg.png", "b_seg.png"]
    _touch_images(tmp_path / "masks", ["c_mask.png"])
    _touch_images(tmp_path / "imgs", ["c.png"])
    detected = list_pairs(tmp_path / "imgs", tmp_path / "masks")  # one suffix pairs more images: that one
    assert [p.mask.name for p in detected] == ["a_mask.png", "b_mask.png", "c_mask.png"]


def test_a_typed_mask_suffix_that_pairs_nothing_is_told_the_one_that_does(tmp_path):
    """Found by a review: --mask-suffix _mask.gif (with the extension) or mask (without the underscore) were told
    "pass --mask-suffix", which they had done."""
    _touch_images(tmp_path / "imgs", ["a.png", "b.png"])
    _touch_images(tmp_path / "masks", ["a_mask.png", "b_mask.png"])
    with pytest.raises(UserError, match=r"has no 'a_mask\.png\.\*'\): --mask-suffix is the part of the name before "
                                        r"the extension: try --mask-suffix '_mask'$"):
        list_pairs(tmp_path / "imgs", tmp_path / "masks", mask_suffix="_mask.png")
    with pytest.raises(UserError, match=r"the masks pair with --mask-suffix '_mask' \(or leave the flag out"):
        list_pairs(tmp_path / "imgs", tmp_path / "masks", mask_suffix="mask")
    _touch_images(tmp_path / "other_masks", ["c_mask.png"])  # no suffix pairs these
    with pytest.raises(UserError, match=r"check the folders and --mask-suffix, or leave the flag out to detect it$"):
        list_pairs(tmp_path / "imgs", tmp_path / "other_masks", mask_suffix="_x")
    # found by the review of that change: only advice that pairs (no extension-less suffix that pairs nothing
    # either, no empty suffix for images and masks in one folder)
    _touch_images(tmp_path / "labels", ["a_label.png", "b_label.png"])
    with pytest.raises(UserError, match=r"the masks pair with --mask-suffix '_label' \(or leave"):
        list_pairs(tmp_path / "imgs", tmp_path / "labels", mask_suffix="_mask.png")
    _touch_images(tmp_path / "one", ["x.png", "x_label.png"])
    with pytest.raises(UserError, match=r"the masks pair with --mask-suffix '_label' \(or leave"):
        list_pairs(tmp_path / "one", tmp_path / "one", mask_suffix="_mask")


def test_a_copy_of_the_images_beside_the_masks_is_not_taken_for_them(tmp_path):
    """Found by a review: masks/ held x_mask.gif and a PNG copy of each photo x.png; the empty suffix won the tie
    and the photos were trained as 4280 colour classes."""
    _touch_images(tmp_path / "imgs", ["x.jpg", "y.jpg"])
    _touch_images(tmp_path / "masks", ["x.png", "y.png", "x_mask.gif", "y_mask.gif"])
    with pytest.raises(UserError, match="image 'x' has both 'x' and 'x_mask'"):
        list_pairs(tmp_path / "imgs", tmp_path / "masks")
    for name in ("y.png", "x_mask.gif"):  # masks named two ways, one image each: x.png, y_mask.gif
        (tmp_path / "masks" / name).unlink()
    with pytest.raises(UserError, match=r"two ways, 1 each: e.g. image 'x' has 'x', image 'y' has 'y_mask': pass "):
        list_pairs(tmp_path / "imgs", tmp_path / "masks")


def test_images_and_masks_of_one_folder_are_told_apart_by_the_suffix_when_unpaired(tmp_path):
    """Found by a review: an image without a mask was also listed as a mask without an image."""
    from utils.data_loading import pair_files

    _touch_images(tmp_path, ["a.jpg", "a_mask.png", "lonely.jpg", "z_mask.png"])
    pairing = pair_files(tmp_path, tmp_path)
    assert (pairing.lonely_images, pairing.lonely_masks) == (["lonely.jpg"], ["z_mask.png"])


def test_unpaired_files_are_skipped_with_a_warning_naming_them(tmp_path, capsys):
    _touch_images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    _touch_images(tmp_path / "masks", ["a_mask.png", "b_mask.png", "z_mask.png"])
    pairs = list_pairs(tmp_path / "imgs", tmp_path / "masks")
    assert [p.name for p in pairs] == ["a", "b"]
    err = capsys.readouterr().err
    assert "warning" in err
    assert "c.png" in err and "z_mask.png" in err
    assert "a.png" not in err and "b_mask.png" not in err


def test_hidden_and_non_image_files_are_ignored(tmp_path, capsys):
    _touch_images(tmp_path / "imgs", ["a.png"])
    _touch_images(tmp_path / "masks", ["a.png"])
    (tmp_path / "masks" / ".mask_values_cache.json").write_text("{}")
    (tmp_path / "imgs" / "notes.txt").write_text("x")
    (tmp_path / "imgs" / ".hidden.png").write_bytes(b"")
    pairs = list_pairs(tmp_path / "imgs", tmp_path / "masks")
    assert [p.name for p in pairs] == ["a"]
    assert capsys.readouterr().err == ""


def test_image_formats_not_read_here_are_named_with_the_fix(tmp_path, capsys):
    """Found by a review: phone photos (.heic) in the image folder were passed over in silence, and their masks
    called unpaired. Files that are no images at all (.txt) are still left alone."""
    from utils.data_loading import pair_files, read_image

    _touch_images(tmp_path / "imgs", ["a.png"])
    _touch_images(tmp_path / "masks", ["a.png", "b.png", "c.png"])
    for name in ("b.heic", "c.HEIC", "notes.txt"):
        (tmp_path / "imgs" / name).write_bytes(b"\x00" * 64)
    (tmp_path / "masks" / "d.jp2").write_bytes(b"\x00" * 64)
    assert [path.name for path in pair_files(tmp_path / "imgs", tmp_path / "masks").unread] == \
        ["b.heic", "c.HEIC", "d.jp2"]
    assert [pair.name for pair in list_pairs(tmp_path / "imgs", tmp_path / "masks")] == ["a"]
    err = capsys.readouterr().err
    assert "warning: skipping 3 files in formats not read here (.heic 2, .jp2 1: b.heic, c.HEIC, d.jp2): convert " \
        "them to PNG" in err
    assert "notes.txt" not in err
    from utils.check_data import check_dataset
    assert "\n  not read: 3 files in formats not read here (.heic 2, .jp2 1: " in \
        check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1).report()
    with pytest.raises(UserError, match=r"cannot read .*b\.heic: \.heic files are not read here: convert it to PNG"):
        read_image(tmp_path / "imgs" / "b.heic")
    (tmp_path / "imgs" / "a.png").unlink()
    with pytest.raises(UserError, match=r"no image files .* in .*imgs, only 2 files in formats not read here "
                                        r"\(\.heic 2: b\.heic, c\.HEIC\): convert them to PNG"):
        list_pairs(tmp_path / "imgs", tmp_path / "masks")


def test_no_pairs_raises_user_error_naming_the_folder(tmp_path):
    _touch_images(tmp_path / "imgs", ["a.png", "b.png"])
    _touch_images(tmp_path / "masks", ["x_mask.png"])
    with pytest.raises(UserError) as error:
        list_pairs(tmp_path / "imgs", tmp_path / "masks")
    assert str(tmp_path / "imgs") in str(error.value)
    assert str(tmp_path / "masks") in str(error.value)


def test_masks_named_with_another_first_or_last_word_are_told_to_be_renamed(tmp_path):
    """Found by a review: img_000.png beside mask_000.png was told to pass --mask-suffix, which cannot pair them."""
    _touch_images(tmp_path / "imgs", ["img_000.png", "img_001.png"])
    _touch_images(tmp_path / "masks", ["mask_000.gif", "mask_001.gif"])
    _touch_images(tmp_path / "ends" / "imgs", ["000_image.png", "001_image.png"])
    _touch_images(tmp_path / "ends" / "masks", ["000_label.png", "001_label.png"])
    for root, image, mask in ((tmp_path, "img_000.png", "mask_000.gif"),
                              (tmp_path / "ends", "000_image.png", "000_label.png")):
        for typed in (None, "_mask"):
            with pytest.raises(UserError) as error:
                list_pairs(root / "imgs", root / "masks", typed)
            stem, suffix = Path(image).stem, Path(mask).suffix
            assert str(error.value).endswith(
                f"the names differ at their start or end ({image}, {mask}), and --mask-suffix only adds to an image's "
                f"name: rename each mask to its image's name ({stem}{suffix}, or {stem}_mask{suffix})")
    _touch_images(tmp_path / "shared" / "imgs", ["scan_a.png", "scan_b.png"])  # one shared word, nothing else
    _touch_images(tmp_path / "shared" / "masks", ["scan_x.png", "scan_y.png"])
    with pytest.raises(UserError, match=r"check the folders or pass --mask-suffix$"):
        list_pairs(tmp_path / "shared" / "imgs", tmp_path / "shared" / "masks")


@pytest.mark.parametrize("missing", ["imgs", "masks"])
def test_missing_folder_raises_user_error(tmp_path, missing):
    for role in ("imgs", "masks"):
        if role != missing:
            _touch_images(tmp_path / role, ["a.png"])
    with pytest.raises(UserError, match=str(tmp_path / missing)):
        list_pairs(tmp_path / "imgs", tmp_path / "masks")


def test_folder_without_images_raises_user_error(tmp_path):
    _touch_images(tmp_path / "imgs", ["a.png"])
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no image files"):
        list_pairs(tmp_path / "imgs", tmp_path / "masks")


def test_two_files_with_the_same_stem_raise_user_error(tmp_path):
    _touch_images(tmp_path / "imgs", ["a.jpg", "a.png"])
    _touch_images(tmp_path / "masks", ["a.png"])
    with pytest.raises(UserError) as error:
        list_pairs(tmp_path / "imgs", tmp_path / "masks")
    assert "a.jpg" in str(error.value) and "a.png" in str(error.value)


# --- SegmentationDataset ----------------------------------------------------------------------------


def test_item_is_uint8_image_and_int8_mask_scaled_by_int_rule(carvana_folder):
    pairs = list_pairs(carvana_folder / "imgs", carvana_folder / "masks")
    item = SegmentationDataset(pairs, [0, 1], scale=0.5)[1]
    width, height = int(0.5 * WIDTH), int(0.5 * HEIGHT)  # 26, 18
    assert item["name"] == "car1_01"
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, height, width)
    assert item["mask"].dtype == torch.int8 and item["mask"].shape == (height, width)  # .long() on the device
    assert set(item["mask"].unique().tolist()) == {0, 1}


@pytest.mark.parametrize("classes, dtype", [
    (2, torch.int8), (128, torch.int8), (129, torch.int16), (2**15, torch.int16), (2**15 + 1, torch.int32)])
def test_class_indices_travel_in_the_smallest_type_that_holds_them_and_the_ignore_value(classes, dtype):
    assert class_index_dtype(classes) == dtype
    top = torch.tensor([classes - 1, -1])
    assert torch.equal(top.to(dtype).long(), top)


def test_item_at_full_scale_is_the_encoded_mask(carvana_folder):
    pairs = list_pairs(carvana_folder / "imgs", carvana_folder / "masks")
    dataset = SegmentationDataset(pairs, [0, 1])
    assert len(dataset) == 2
    item = dataset[0]
    assert torch.equal(item["image"], torch.from_numpy(random_rgb(0)).permute(2, 0, 1))
    assert torch.equal(item["mask"], torch.from_numpy(disc_mask()).long())


def test_scaled_mask_is_resized_nearest_without_new_classes(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", random_rgb(0))
    write_image(tmp_path / "masks" / "a.png", disc_mask(value=20))  # values 0 and 20, never 10
    pairs = list_pairs(tmp_path / "imgs", tmp_path / "masks")
    mask = SegmentationDataset(pairs, [0, 10, 20], scale=0.5)[0]["mask"]
    assert mask.shape == (int(0.5 * HEIGHT), int(0.5 * WIDTH))
    assert set(mask.unique().tolist()) == {0, 2}


def test_scale_masks_false_keeps_native_mask_size(carvana_folder):
    pairs = list_pairs(carvana_folder / "imgs", carvana_folder / "masks")
    item = SegmentationDataset(pairs, [0, 1], scale=0.5, scale_masks=False)[0]
    assert item["image"].shape == (3, int(0.5 * HEIGHT), int(0.5 * WIDTH))
    assert item["mask"].shape == (HEIGHT, WIDTH)
    assert torch.equal(item["mask"], torch.from_numpy(disc_mask()).long())
    # scored as predicted: evaluate.py may upscale the image, as predict.py may; the mask stays as it is
    item = SegmentationDataset(pairs, [0, 1], scale=1.5, scale_masks=False)[0]
    assert item["image"].shape == (3, int(1.5 * HEIGHT), int(1.5 * WIDTH)) and item["mask"].shape == (HEIGHT, WIDTH)
    with pytest.raises(UserError, match="--scale must be above 0, got 0"):
        SegmentationDataset(pairs, [0, 1], scale=0, scale_masks=False)


def test_one_channel_dataset_gives_one_channel_images(carvana_folder):
    pairs = list_pairs(carvana_folder / "imgs", carvana_folder / "masks")
    image = SegmentationDataset(pairs, [0, 1], scale=0.5, channels=1)[0]["image"]
    assert image.dtype == torch.uint8 and image.shape == (1, int(0.5 * HEIGHT), int(0.5 * WIDTH))
    whole = SegmentationDataset(pairs, [0, 1], scale=1, channels=1)[0]["image"]
    with Image.open(pairs[0].image) as colour:  # the luminance, not one of the colour channels
        np.testing.assert_array_equal(whole[0].numpy(), np.asarray(colour.convert("L")))


def test_image_mask_size_mismatch_raises_user_error_naming_both(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", random_rgb(0))
    write_image(tmp_path / "masks" / "a_mask.png", disc_mask(HEIGHT, WIDTH + 1))
    pairs = list_pairs(tmp_path / "imgs", tmp_path / "masks")
    with pytest.raises(UserError) as error:
        SegmentationDataset(pairs, [0, 1])[0]
    assert "a.png" in str(error.value) and "a_mask.png" in str(error.value)


def test_unknown_mask_value_raises_user_error_naming_the_mask(carvana_folder):
    pairs = list_pairs(carvana_folder / "imgs", carvana_folder / "masks")
    with pytest.raises(UserError, match="car0_01_mask.gif"):
        SegmentationDataset(pairs, [0, 255])[0]


def test_scale_that_shrinks_to_nothing_raises_user_error(carvana_folder):
    pairs = list_pairs(carvana_folder / "imgs", carvana_folder / "masks")
    with pytest.raises(UserError, match=r"only 0x0 at scale 0.01: the U-Net needs .*: use --scale 0.44 or more"):
        SegmentationDataset(pairs, [0, 1], scale=0.01)[0]


def test_a_scale_that_shrinks_an_image_below_the_unet_is_refused_before_the_resize(tmp_path):
    """Found by a review: resized to 1x1, torch's antialiased bicubic failed with an internal assertion."""
    write_image(tmp_path / "a.png", random_rgb(0, 64, 64))
    with pytest.raises(UserError, match=r"a.png is 64x64, only 1x1 at scale 0.02: the U-Net needs at least 16 px"):
        load_scaled_image(tmp_path / "a.png", 0.02)


def test_a_scale_beyond_the_pixel_limit_is_refused_before_any_resize(tmp_path):
    """Found by a review: a checkpoint's scale of 1e9 (or --scale 1e9) crashed in the resize's allocation."""
    from utils.data_loading import scaled_size, set_image_pixel_limit

    write_image(tmp_path / "a.png", random_rgb(0, 32, 24))
    with pytest.raises(UserError) as error:
        load_scaled_image(tmp_path / "a.png", 1e9)
    assert str(error.value) == (f"scale 1e+09 makes {tmp_path / 'a.png'} (24x32) 24000000000x32000000000, more than "
                                f"--max-image-pixels ({Image.MAX_IMAGE_PIXELS:,}) allows: use a smaller --scale, or "
                                "raise the limit for trusted files")
    try:
        set_image_pixel_limit(10_000)
        assert scaled_size(50, 200, 1.0) == (50, 200)  # at the limit: allowed
        assert scaled_size(500, 200, 1.0) == (500, 200)  # an array file beyond the limit, not grown: allowed
        assert scaled_size(500, 200, 0.5) == (250, 100)
        with pytest.raises(UserError, match=r"makes image \(50x200\) 75x300, more than --max-image-pixels \(10,000\)"):
            scaled_size(50, 200, 1.5)
    finally:
        set_image_pixel_limit(None)


@pytest.mark.parametrize(("size", "scale", "message"), [
    ((53, 37), 0.3, r"a\.png is 53x37, only 15x11 at scale 0\.3: the U-Net needs at least 16 px a side "
                    r"\(four halvings\): use --scale 0\.44 or more"),
    ((40, 12), 1.0, r"a\.png is 40x12: the U-Net needs .* leave it out or enlarge it"),
])
def test_images_smaller_than_the_unet_takes_are_refused_with_the_scale_that_fits(size, scale, message):
    from utils.data_loading import check_model_input_size

    with pytest.raises(UserError, match=message):
        check_model_input_size(*size, scale, "a.png")
    check_model_input_size(53, 37, 0.44, "a.png")  # 23x16: fits
    check_model_input_size(16, 16, 1.0, "a.png")


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5])
def test_scale_outside_zero_one_is_refused(carvana_folder, scale):
    pairs = list_pairs(carvana_folder / "imgs", carvana_folder / "masks")
    with pytest.raises(UserError, match="--scale"):
        SegmentationDataset(pairs, [0, 1], scale=scale)


def test_normalize_images_maps_uint8_to_unit_range():
    images = torch.tensor([[[[0, 51, 255]]]], dtype=torch.uint8)
    assert torch.allclose(normalize_images(images), torch.tensor([[[[0.0, 0.2, 1.0]]]]))


# --- scaling ----------------------------------------------------------------------------------------


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """A photo-like image (smooth gradients and a disc): JPEG's reduced-size decoding is meant for such."""
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    disc = ((yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (height / 4) ** 2) * 80.0
    channels = [xx / width * 200, yy / height * 200, 120 + disc - xx / width * 60]
    return np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("scale", [0.5, 0.3, 0.2, 1.0])
def test_scaled_jpeg_matches_full_decode_then_resize(tmp_path, scale):
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth_rgb(400, 600)).save(path, quality=95)
    tensor, size = load_scaled_image(path, scale)
    assert size == (600, 400)
    assert tuple(tensor.shape) == (3, int(400 * scale), int(600 * scale)) and tensor.dtype == torch.uint8
    full = image_to_tensor(read_image(path), (int(600 * scale), int(400 * scale)))
    assert (tensor.float() - full.float()).abs().mean() < 2.0  # grey levels out of 255


def test_a_jpeg_named_jfif_is_decoded_at_reduced_size_as_one_named_jpg(tmp_path):
    """.jfif is a JPEG's name too (data_loading reads it): its scaled-down decode took the slow full-size path."""
    Image.fromarray(smooth_rgb(400, 600)).save(tmp_path / "photo.jpg", quality=95)
    shutil.copy(tmp_path / "photo.jpg", tmp_path / "photo.jfif")
    jpg, jfif = (load_scaled_image(tmp_path / name, 0.25)[0] for name in ("photo.jpg", "photo.jfif"))
    assert torch.equal(jpg, jfif)


def test_scaled_png_is_the_bicubic_resize_of_the_file(tmp_path):
    rgb = smooth_rgb(40, 60)
    tensor, size = load_scaled_image(write_image(tmp_path / "img.png", rgb), 0.5)
    expected = TF.resize(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), [20, 30],
                         interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert size == (60, 40) and torch.equal(tensor, expected)


@pytest.mark.parametrize("size", [(30, 20), (17, 11), (53, 37), (106, 74)])
def test_resize_nearest_picks_the_same_pixels_as_torch_nearest_exact(size):
    labels = np.random.default_rng(0).integers(0, 1000, (HEIGHT, WIDTH)).astype(np.uint16)
    expected = TF.resize(torch.from_numpy(labels.astype(np.int32))[None], [size[1], size[0]],
                         interpolation=InterpolationMode.NEAREST_EXACT)[0].numpy()
    assert np.array_equal(resize_nearest(labels, size), expected)


def test_resize_nearest_keeps_colour_triples_together():
    colours = np.random.default_rng(1).integers(0, 3, (HEIGHT, WIDTH, 1)).repeat(3, axis=-1).astype(np.uint8) * 100
    resized = resize_nearest(colours, (20, 15))
    assert resized.shape == (15, 20, 3)
    assert (resized == resized[..., :1]).all()  # every pixel is still one of the grey triples


# --- batches of images of different sizes ---------------------------------------------------------------------------


def mixed_size_folder(root, sizes=((37, 53), (48, 30), (48, 30), (37, 53))):
    """image{i}.png RGB and masks/image{i}.png 0/1 discs, of the given (height, width) sizes in this order."""
    for index, (height, width) in enumerate(sizes):
        write_image(root / "imgs" / f"image{index}.png", random_rgb(index, height, width))
        write_image(root / "masks" / f"image{index}.png", disc_mask(height, width))
    return list_pairs(root / "imgs", root / "masks")


def test_mixed_sizes_are_padded_with_ignored_pixels_and_given_back_unpadded(tmp_path):
    from utils.data_loading import collate_skipping, same_size_parts
    from utils.mask_encoding import IGNORE_CLASS

    # scale 0.55: 53x37 -> 29x20 and 30x48 -> 16x26, each at least the U-Net's 16 px a side (checked on reading)
    dataset = SegmentationDataset(mixed_size_folder(tmp_path), [0, 1], scale=0.55, scale_masks=False)
    items = [dataset[index] for index in range(4)]
    batch = collate_skipping(items)
    assert batch["image"].shape == (4, 3, 26, 29) and batch["mask"].shape == (4, 48, 53)  # the largest of each
    assert batch["sizes"] == [((20, 29), (37, 53)), ((26, 16), (48, 30)), ((26, 16), (48, 30)), ((20, 29), (37, 53))]
    assert (batch["image"][0, :, 20:] == 0).all() and (batch["image"][1, :, :, 16:] == 0).all()
    assert (batch["mask"][0, 37:] == IGNORE_CLASS).all() and (batch["mask"][1, :, 30:] == IGNORE_CLASS).all()
    assert (batch["mask"][0, :37, :53] != IGNORE_CLASS).all()

    parts = list(same_size_parts(batch))  # consecutive runs, in order
    assert [part["name"] for part in parts] == [["image0"], ["image1", "image2"], ["image3"]]
    unpadded = [(image, mask) for part in parts for image, mask in zip(part["image"], part["mask"])]
    for item, (image, mask) in zip(items, unpadded):
        assert torch.equal(image, item["image"]) and torch.equal(mask, item["mask"])

    same = collate_skipping(items[1:3])  # one size: a plain batch, nothing padded
    assert "sizes" not in same and same["image"].shape == (2, 3, 26, 16)
    (whole,) = same_size_parts(same)
    assert whole.keys() == {"image", "mask", "name"} and all(whole[key] is same[key] for key in whole)


# --- training crops (--crop) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [("512", (512, 512)), ("640x384", (640, 384)), ("64X128", (64, 128))])
def test_crop_sizes_are_read_as_typed(text, size):
    from utils.data_loading import parse_crop

    assert parse_crop(text) == size


@pytest.mark.parametrize("text", ["0", "100", "16", "40", "512x", "x512", "ax512", "512x512x3", "-512"])
def test_crop_sizes_the_unet_cannot_halve_four_times_are_refused(text):
    from utils.data_loading import parse_crop

    with pytest.raises(UserError, match=r"--crop .*multiples of 16 of at least 32"):
        parse_crop(text)


def test_crops_cut_the_same_window_of_image_and_mask_at_random_and_pad_small_images(tmp_path):
    from utils.mask_encoding import IGNORE_CLASS
    from utils.sampling import SeededItems

    height, width = 80, 112
    rows, cols = np.mgrid[:height, :width]
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)  # each pixel names its place
    write_image(tmp_path / "imgs" / "big.png", image)
    write_image(tmp_path / "masks" / "big.png", ((rows + cols) % 2).astype(np.uint8))  # a checkerboard
    write_image(tmp_path / "imgs" / "small.png", random_rgb(1, 40, 50))
    write_image(tmp_path / "masks" / "small.png", disc_mask(40, 50))
    pairs = list_pairs(tmp_path / "imgs", tmp_path / "masks")
    dataset = SeededItems(SegmentationDataset(pairs, [0, 1], crop=(64, 48)))
    corners = set()
    for seed in range(12):
        item = dataset[(0, seed)]
        assert item["image"].shape == (3, 48, 64) and item["mask"].shape == (48, 64)
        top, left = int(item["image"][0, 0, 0]), int(item["image"][1, 0, 0])
        assert 0 <= top <= height - 48 and 0 <= left <= width - 64
        assert torch.equal(item["image"][0].long(), torch.arange(top, top + 48)[:, None].expand(48, 64))
        assert torch.equal(item["image"][1].long(), torch.arange(left, left + 64)[None].expand(48, 64))
        expected = (torch.arange(top, top + 48)[:, None] + torch.arange(left, left + 64)[None]) % 2
        assert torch.equal(item["mask"].long(), expected)  # the mask's window is the image's
        assert torch.equal(dataset[(0, seed)]["image"], item["image"])  # the seed decides the window
        corners.add((top, left))
    assert len(corners) > 6  # windows all over the image

    small = dataset[(1, 0)]  # 50x40, smaller than the 64x48 window: all of it, padded at the bottom and right
    assert small["image"].shape == (3, 48, 64)
    whole = SegmentationDataset(pairs, [0, 1])[1]
    assert torch.equal(small["image"][:, :40, :50], whole["image"]) and (small["image"][:, 40:] == 0).all()
    assert torch.equal(small["mask"][:40, :50], whole["mask"])
    assert (small["mask"][40:] == IGNORE_CLASS).all() and (small["mask"][:, 50:] == IGNORE_CLASS).all()


def test_a_foreground_pixel_is_one_of_a_random_class_present_and_none_without_objects():
    from utils.data_loading import foreground_pixel
    from utils.mask_encoding import IGNORE_CLASS

    classes = np.zeros((20, 30), np.int8)
    classes[2:18, 2:28] = 1  # a large object of class 1
    classes[5, 7] = 2  # and one pixel of class 2
    classes[0, :] = IGNORE_CLASS
    picks = []
    for seed in range(40):
        torch.manual_seed(seed)
        picks.append(foreground_pixel(classes))
    assert all(classes[row, col] in (1, 2) for row, col in picks)
    assert 10 < picks.count((5, 7)) < 30  # a class first: the lone pixel is found about half the time
    assert foreground_pixel(np.where(classes > 0, 0, classes)) is None  # background and ignored pixels only


@pytest.mark.parametrize(("centre", "expected"), [
    ((40, 50), (slice(16, 64), slice(18, 82))),  # centred
    ((2, 3), (slice(0, 48), slice(0, 64))),  # moved inside at the top left
    ((79, 111), (slice(32, 80), slice(48, 112))),  # and at the bottom right
])
def test_a_window_around_a_pixel_is_centred_on_it_but_stays_inside_the_image(centre, expected):
    from utils.data_loading import crop_window

    assert crop_window(80, 112, (64, 48), centre) == expected
    assert crop_window(30, 40, (64, 48), centre) == (slice(0, 48), slice(0, 64))  # smaller image: all of it


def test_windows_around_objects_hold_foreground(tmp_path):
    from utils.sampling import SeededItems

    mask = np.zeros((128, 160), np.uint8)
    mask[100:104, 140:144] = 1  # one small object in a corner
    write_image(tmp_path / "imgs" / "a.png", random_rgb(0, 128, 160))
    write_image(tmp_path / "masks" / "a.png", mask)
    pairs = list_pairs(tmp_path / "imgs", tmp_path / "masks")
    anywhere, around = (SeededItems(SegmentationDataset(pairs, [0, 1], crop=(32, 32), crop_foreground=share))
                        for share in (0.0, 1.0))
    assert all((around[(0, seed)]["mask"] == 1).sum() == 16 for seed in range(10))  # the whole object, every time
    assert sum(bool((anywhere[(0, seed)]["mask"] == 1).any()) for seed in range(10)) < 5


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_an_image_smaller_than_the_window_is_augmented_before_it_is_padded(tmp_path, preset):
    """Found by a review: padded first, a 24x40 image sat in the corner of a 256x256 window whose centre the zoom
    and rotation turned about; up to a quarter of the windows held no pixel of it, half lost their object."""
    from utils.augmentation import train_augmentation
    from utils.mask_encoding import IGNORE_CLASS
    from utils.sampling import SeededItems

    mask = np.zeros((40, 24), np.uint8)
    mask[15:25, 8:16] = 1
    write_image(tmp_path / "imgs" / "a.png", random_rgb(0, 40, 24))
    write_image(tmp_path / "masks" / "a.png", mask)
    dataset = SeededItems(SegmentationDataset(list_pairs(tmp_path / "imgs", tmp_path / "masks"), [0, 1],
                                              crop=(256, 256), crop_foreground=1.0,
                                              transform=train_augmentation(preset)))
    for seed in range(40):
        window = dataset[(0, seed)]["mask"]
        assert window.shape == (256, 256) and (window[40:, :] == IGNORE_CLASS).all() and \
            (window[:, 24:] == IGNORE_CLASS).all(), seed  # the padding: bottom and right, out of the loss
        assert (window == 1).any(), seed  # the object the window was cut around


def test_worker_priority_is_lowered_where_the_system_has_nice(monkeypatch):
    import signal

    import utils.data_loading

    increments, left = [], []
    monkeypatch.setattr(utils.data_loading, "leave_first_signal_to_main", left.append)  # this process's handlers
    monkeypatch.setattr(os, "nice", increments.append, raising=False)
    init_loader_worker(0)
    assert increments == [10]
    init_loader_worker(0, stops_gracefully=True)  # training's workers: SIGTERM too is the main process's to act on
    assert left == [(signal.SIGINT,), (signal.SIGINT, signal.SIGTERM)]
    monkeypatch.delattr(os, "nice")  # Windows has no os.nice: the worker starts at the default priority
    init_loader_worker(0)


def _held_signals(_: object = None) -> list[int]:
    """The signals blocked in the process (thread) that runs this."""
    import signal

    return sorted(int(number) for number in signal.pthread_sigmask(signal.SIG_BLOCK, []))


class _ReportsWorkerSignals(torch.utils.data.Dataset):
    """Its one item: the signals its worker held when the dataset arrived there (unpickled under spawn, before
    the worker's init function), and those it holds when reading the item."""

    def __init__(self) -> None:
        self.held_on_arrival: list[int] = []

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, held_on_arrival=_held_signals())

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        import signal

        return {"held_on_arrival": torch.tensor(self.held_on_arrival), "held": torch.tensor(_held_signals()),
                "sigint_default": signal.getsignal(signal.SIGINT) == signal.default_int_handler}


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="no signal masks (Windows)")
def test_spawned_workers_start_with_signals_held_until_their_handlers_are_set() -> None:
    """Found by a macOS review (spawn): a Ctrl-C while a worker was still importing torch ended it in a
    traceback; the worker now starts with SIGINT and SIGTERM held, and init_loader_worker takes them."""
    import multiprocessing
    import signal

    from utils.data_loading import WorkerLoader

    assert int(signal.SIGINT) not in _held_signals()  # nothing held here to begin with
    loader = WorkerLoader(_ReportsWorkerSignals(), batch_size=None, num_workers=1,
                          multiprocessing_context=multiprocessing.get_context("spawn"))
    (item,) = list(loader)
    assert {int(signal.SIGINT), int(signal.SIGTERM)} <= set(item["held_on_arrival"].tolist())
    assert not {int(signal.SIGINT), int(signal.SIGTERM)} & set(item["held"].tolist())  # taken by init_loader_worker
    assert not item["sigint_default"]  # and a first Ctrl-C is the main process's
    assert int(signal.SIGINT) not in _held_signals()  # this process's mask is given back


def test_image_resizing_gives_torchvisions_pixels() -> None:
    """image_to_tensor calls PyTorch's uint8 bicubic kernel itself (predict.py then starts without torchvision):
    the pixels torchvision's resize gives, up and down, one and three channels."""
    rng = np.random.default_rng(0)
    for (height, width, channels), (new_width, new_height) in [((37, 53, 3), (20, 14)), ((40, 30, 1), (97, 61)),
                                                                ((64, 48, 3), (48, 64))]:
        image = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        expected = TF.resize(torch.from_numpy(image.transpose(2, 0, 1).copy()), [new_height, new_width],
                             interpolation=InterpolationMode.BICUBIC, antialias=True)
        assert torch.equal(image_to_tensor(image, (new_width, new_height)), expected)


def test_names_spelled_in_either_unicode_form_pair(tmp_path):
    """Found by a macOS review: macOS may store "café" as e + combining accent (NFD), a script on Linux writes é
    (NFC); the image and its mask, alike on screen, were listed as unpaired and left out of training."""
    import unicodedata

    write_image(tmp_path / "imgs" / (unicodedata.normalize("NFD", "café") + ".png"), random_rgb(0))
    write_image(tmp_path / "masks" / (unicodedata.normalize("NFC", "café_masqué") + ".png"), disc_mask())
    write_image(tmp_path / "imgs" / "plain.png", random_rgb(1))
    write_image(tmp_path / "masks" / "plain_masqué.png", disc_mask())
    pairs = list_pairs(tmp_path / "imgs", tmp_path / "masks", unicodedata.normalize("NFD", "_masqué"))  # as typed
    assert [pair.name for pair in pairs] == ["café", "plain"]
    assert pairs[0].image.name == unicodedata.normalize("NFD", "café") + ".png"


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="no signal masks (Windows)")
def test_forkserver_workers_hold_nothing_and_the_server_is_not_left_holding() -> None:
    """Found by a review: a forkserver first started while signals were held kept them held for good, so every
    later process it forked began with SIGINT and SIGTERM blocked (and terminate() could not stop it)."""
    import multiprocessing
    import signal

    from utils.data_loading import WorkerLoader

    context = multiprocessing.get_context("forkserver")
    for _ in range(2):  # the second loader's workers come from the server the first one started
        (item,) = list(WorkerLoader(_ReportsWorkerSignals(), batch_size=None, num_workers=1,
                                    multiprocessing_context=context))
        assert not {int(signal.SIGINT), int(signal.SIGTERM)} & set(item["held_on_arrival"].tolist())
        assert not item["sigint_default"]


def test_reading_gif_masks_and_images_closes_their_files(tmp_path):
    """Found by a notebook review: each GIF mask read (Carvana's) was left for the garbage collector to close, a
    ResourceWarning per mask and epoch under warnings.simplefilter("always")."""
    import gc
    import warnings

    for index in range(3):
        Image.fromarray(disc_mask(HEIGHT, WIDTH) * 255).save(tmp_path / f"m{index}.gif")
        Image.fromarray(random_rgb(index)).save(tmp_path / f"i{index}.gif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = [read_mask(tmp_path / f"m{index}.gif") for index in range(3)]
        images = [read_image(tmp_path / f"i{index}.gif") for index in range(3)]
        gc.collect()
    assert [str(warning.message) for warning in caught if warning.category is ResourceWarning] == []
    assert all(mask.shape == (HEIGHT, WIDTH) for mask in masks) and all(image.ndim == 3 for image in images)


# --- EXIF orientation from headers ------------------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[bytes]:
    """The chunks of a PNG file's bytes, each whole (length, type, data, checksum)."""
    chunks, at = [], 8
    while at < len(data):
        end = at + 12 + int.from_bytes(data[at:at + 4], "big")
        chunks.append(data[at:end])
        at = end
    return chunks


def test_the_orientation_of_a_png_is_read_without_decoding_its_pixels_unless_tags_follow_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: Pillow's PNG getexif decodes every pixel, in case an EXIF chunk follows them, so each
    PNG was decoded twice (the data check, predict.py, evaluate.py: 33-53% of inspecting a file)."""
    from PIL import PngImagePlugin

    from utils.data_loading import file_orientation

    decoded: list[str] = []
    load = PngImagePlugin.PngImageFile.load

    def counting_load(image):
        decoded.append(image.filename)
        return load(image)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", counting_load)
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = Image.fromarray(random_rgb(0, 40, 56))
    pixels.save(tmp_path / "plain.png")
    pixels.save(tmp_path / "tagged.png", exif=exif)  # Pillow writes the eXIf chunk before the pixels
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="3"/></x:xmpmeta>'
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    pixels.save(tmp_path / "xmp.png", pnginfo=info)
    assert [file_orientation(tmp_path / name) for name in ("plain.png", "tagged.png", "xmp.png")] == [1, 6, 3]
    assert decoded == []

    chunks = png_chunks((tmp_path / "tagged.png").read_bytes())  # the eXIf chunk moved after the pixels
    tag = next(chunk for chunk in chunks if chunk[4:8] == b"eXIf")
    chunks.remove(tag)
    (tmp_path / "late.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks[:-1]) + tag + chunks[-1])
    assert [chunk[4:8] for chunk in png_chunks((tmp_path / "late.png").read_bytes())][-3:] == \
        [b"IDAT", b"eXIf", b"IEND"]
    assert file_orientation(tmp_path / "late.png") == 6
    assert decoded == [str(tmp_path / "late.png")]  # only where the tags follow the pixels
    (tmp_path / "cut.png").write_bytes((tmp_path / "late.png").read_bytes()[:-40])  # no IEND: Pillow judges
    assert file_orientation(tmp_path / "cut.png") == 1


def test_where_all_finds_what_where_finds_folder_by_folder(tmp_path: Path) -> None:
    from utils.data_loading import where, where_all

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.png").write_bytes(b"a")
    (tmp_path / "real" / "b.png").write_bytes(b"b")
    (tmp_path / "linked").symlink_to("real")  # a folder through a link
    (tmp_path / "real" / "to_a.png").symlink_to("a.png")  # a file that is a link
    (tmp_path / "real" / "elsewhere.png").symlink_to(tmp_path / "linked" / "b.png")
    (tmp_path / "real" / "loop.png").symlink_to("loop.png")
    paths = [tmp_path / "real" / "a.png", tmp_path / "linked" / "a.png", tmp_path / "linked" / "to_a.png",
             tmp_path / "real" / "elsewhere.png", tmp_path / "real" / "loop.png", tmp_path / "gone" / "x.png",
             Path("relative.png"), tmp_path / "real" / ".." / "real" / "b.png", tmp_path / "real" / "..",
             tmp_path / "real" / ("a" * 300 + ".png"),  # too long a name: lstat fails
             tmp_path / "linked" / "loop.png"]  # a loop through a linked folder: as typed (a code review)
    assert where_all(paths) == [where(path) for path in paths]
    assert where_all(paths)[:4] == [tmp_path / "real" / name for name in ("a.png", "a.png", "a.png", "b.png")]
