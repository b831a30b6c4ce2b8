"""Image/mask pairs from two folders: list once, pair once, decode, scale, encode masks to class indices."""

import argparse
import contextlib
import math
import os
import re
import signal
import sys
import threading
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from unet import MIN_SIDE

from .device import memory_format
from .errors import UserError, check_flag, counted
from .mask_encoding import IGNORE_CLASS, JPEG_SUFFIXES, MaskValue, binarize_threshold, encode_mask
from .signals import leave_first_signal_to_main, signals_held_for_new_processes, take_held_signals

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".npy", ".pt")
# Image formats that users' folders hold and that are not read here (phone photos, JPEG 2000, medical and raw
# camera files, ...): named with the fix instead of passed over in silence. Other files (.txt, .csv) are left alone.
UNREAD_IMAGE_SUFFIXES = (".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".jpx", ".dcm", ".dicom", ".nii",
                         ".nrrd", ".mha", ".svs", ".ndpi", ".czi", ".psd", ".dng", ".cr2", ".nef", ".arw", ".exr",
                         ".hdr", ".ppm", ".pgm", ".pnm", ".pbm", ".tga", ".ico", ".svg")
# Tried in this order when --mask-suffix is not given; the one pairing the most images wins.
MASK_SUFFIX_CANDIDATES = ("", "_mask", "_masks", "_label", "_labels", "_seg", "_gt", "-mask")


class Pair(NamedTuple):
    name: str
    image: Path
    mask: Path


# Pillow's own default (1 GiB of 4-byte pixels / 3, about 9459 x 9459): files declaring more are refused.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# What a file's suffix promises, by Pillow's detected format (MPO: a camera JPEG carrying extra frames) or, for
# arrays, by the first bytes.
FORMATS_BY_SUFFIX = {".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".jfif": ("JPEG", "MPO"), ".png": ("PNG",),
                     ".gif": ("GIF",), ".tif": ("TIFF",), ".tiff": ("TIFF",), ".bmp": ("BMP", "DIB"),
                     ".webp": ("WEBP",), ".npy": ("NumPy array",), ".pt": ("torch.save zip",)}
SUFFIX_BY_FORMAT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "TIFF": ".tif", "BMP": ".bmp",
                    "DIB": ".bmp", "WEBP": ".webp", "NumPy array": ".npy", "torch.save zip": ".pt"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# First bytes of the formats a misnamed file most often holds: the hint in its error message.
MAGIC_NUMBERS = ((PNG_SIGNATURE, "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
                 (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x93NUMPY", "NumPy array"),
                 (b"PK\x03\x04", "torch.save zip"))


class PixelLimitError(UserError):
    """A file declaring more pixels than the limit: the data check re-inspects it when --max-image-pixels changes."""


def add_image_limit_argument(parser: argparse.ArgumentParser) -> None:
    """--max-image-pixels, the same in every script that reads images."""
    parser.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                        help="refuse image and mask files declaring more than N pixels, a guard against "
                             f"decompression bombs (default: Pillow's {DEFAULT_MAX_IMAGE_PIXELS:,}, about 9459x9459); "
                             "raise it for trusted large files. It cannot be switched off: 0 or less is refused")


def set_image_pixel_limit(value: int | None) -> None:
    """Set the limit for this process and the loader workers it starts later; None restores Pillow's default.

    Set it before a loader is made: its workers take the value it had then (WorkerLoader).
    """
    if value is not None and value < 1:
        raise UserError(f"--max-image-pixels must be a positive number of pixels, got {value}: the limit can be "
                        "raised for trusted files, not switched off")
    Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS if value is None else value


@contextlib.contextmanager
def image_pixel_limit(value: int | None) -> Iterator[None]:
    """set_image_pixel_limit for one run: Pillow's process-wide limit is put back afterwards, so that a notebook
    that called a script's main() keeps its own."""
    before = Image.MAX_IMAGE_PIXELS
    set_image_pixel_limit(value)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _reason(error: BaseException) -> str:
    """The first line of a decoder's message (torch's run to dozens), or its type when it has none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _content_type(path: Path) -> str | None:
    """What the file's first bytes say it is ("empty", "text", a format name), None when they say nothing."""
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError:
        return None
    if not head:
        return "empty"
    for magic, name in MAGIC_NUMBERS:
        if head.startswith(magic):
            return name
    if head[8:12] == b"WEBP" and head.startswith(b"RIFF"):
        return "WEBP"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text" if all(c.isprintable() or c.isspace() for c in text) else None


def _misnamed(path: Path, found: str) -> UserError | None:
    """The error for a file whose content is another format than its suffix says; None when they agree."""
    suffix = path.suffix.lower()
    if found in FORMATS_BY_SUFFIX.get(suffix, (found,)):
        return None
    if found == "empty":
        return UserError(f"cannot read {path}: the file is empty (0 bytes): replace or remove it")
    if found == "text":
        return UserError(f"cannot read {path}: it is a text file, not an image: replace or remove it")
    renamed = SUFFIX_BY_FORMAT.get(found)
    fix = f"rename it to {path.with_suffix(renamed).name}" if renamed else f"convert it to {suffix[1:].upper()}"
    return UserError(f"cannot read {path}: it holds {found} data but is named {path.suffix}: {fix}")


def unread_format_note(paths: list[Path]) -> str:
    """'N files in formats not read here (.heic 4: a.heic, ...): convert them ...' for files of
    UNREAD_IMAGE_SUFFIXES."""
    suffixes = Counter(path.suffix.lower() for path in paths)
    counts = ", ".join(f"{suffix} {count}" for suffix, count in suffixes.most_common())
    names = ", ".join(path.name for path in paths[:3]) + (", ..." if len(paths) > 3 else "")
    return (f"{counted(len(paths), 'file')} in formats not read here ({counts}: {names}): "
            f"convert {'them' if len(paths) != 1 else 'it'} to PNG (or JPEG or TIFF for images)")


def _unreadable(path: Path, error: Exception) -> UserError:
    """A file no decoder took: say what it holds instead when its first bytes tell."""
    if path.suffix.lower() in UNREAD_IMAGE_SUFFIXES:
        return UserError(f"cannot read {path}: {path.suffix} files are not read here: convert it to PNG (or JPEG "
                         "or TIFF for an image)")
    found = _content_type(path)
    problem = _misnamed(path, found) if found else None
    return problem or _decode_error(path, error, found)


TIFF_BANDS_FIX = "save its bands as an HxWxC .npy array (tifffile.imread reads them as stored)"


def _decode_error(path: Path, error: BaseException, image_format: str | None) -> UserError:
    """A decoder's failure on a file: a TIFF may be one of the layouts Pillow does not read (4 gray bands, more than
    four, bands stored one after another) rather than a broken file."""
    if image_format == "TIFF":
        return UserError(f"cannot read {path} ({_reason(error)}): a damaged file, or a TIFF layout Pillow does not "
                         f"read (more than four bands, several gray bands, bands stored apart): {TIFF_BANDS_FIX}, or "
                         "replace the file")
    return UserError(f"cannot read {path} ({_reason(error)}): replace or remove the file")


def _pixel_limit_error(path: Path, error: Exception) -> PixelLimitError:
    found = re.search(r"\((\d+) pixels\)", str(error))
    declared = f"{int(found.group(1)):,} pixels" if found else "more pixels"
    return PixelLimitError(f"{path} declares {declared}, more than the safety limit of {Image.MAX_IMAGE_PIXELS:,}: "
                           "if the file is trusted, raise it with --max-image-pixels")


def open_image(path: Path) -> Image.Image:
    """Image.open (the header only) for user files: one-line errors naming the file for bombs and misnamed files.

    Between the limit and twice it Pillow only warns; here that is refused too, so --max-image-pixels is the one
    threshold and nothing that large is ever decoded.
    """
    try:
        # catch_warnings is process-wide, not per thread; the one threaded reader (predict's mask writers, for
        # --overlay/--viz) re-reads inputs that already passed here, so it never meets the warning.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise UserError(f"{path} is a link to {os.path.realpath(path)}, which does not exist: mend or "
                            "remove the link") from None
        raise UserError(f"{path} does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _pixel_limit_error(path, error) from None
    except Exception as error:  # noqa: BLE001 - whatever a decoder raises on a bad file, the user gets one line
        raise _unreadable(path, error) from None
    problem = _misnamed(path, image.format) if image.format else None
    if problem is not None:
        image.close()
        raise problem
    return image


def _read_array(path: Path) -> np.ndarray:
    """A .npy or .pt image or mask, within the pixel limit as its header declares it (read before the values)."""
    try:
        if path.suffix.lower() == ".npy":
            _npy_shape(path)
            return np.load(path, allow_pickle=False)
        tensor = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"{path} does not hold a single tensor: save it with torch.save(tensor, path)")
        _check_array_pixels(path, tuple(tensor.shape))
        if repeats_values(tensor):
            raise UserError(f"{path} holds a tensor of shape {list(tensor.shape)} whose data is smaller than that "
                            "(one value repeated): save the pixels themselves, torch.save(tensor.clone(), path)")
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except Exception as error:  # noqa: BLE001 - numpy and torch raise a dozen types on bad files
        raise _unreadable(path, error) from None


def repeats_values(tensor: torch.Tensor) -> bool:
    """A tensor whose stored values are fewer than its shape holds (torch.zeros(()).expand(...)): a file of a few
    KB that becomes gigabytes once copied, so no image or model is read from one."""
    return tensor.layout == torch.strided and \
        tensor.untyped_storage().nbytes() < tensor.numel() * tensor.element_size()


def _npy_shape(path: Path) -> tuple[int, ...]:
    """A .npy's shape from its header (its values not read), within the pixel limit."""
    shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    _check_array_pixels(path, shape)
    return shape


def _check_array_pixels(path: Path, shape: tuple[int, ...]) -> None:
    """--max-image-pixels for arrays too: height x width of an HxW(xC) or CxHxW shape, as image headers are."""
    sides = shape[1:3] if _channels_first(shape) else shape[:2]
    limit = Image.MAX_IMAGE_PIXELS  # None: a program's own choice of no limit (the CLIs always set one)
    if len(shape) in (2, 3) and limit is not None and math.prod(sides) > limit:
        raise PixelLimitError(f"{path} declares {math.prod(sides):,} pixels ({'x'.join(map(str, shape))}), more than "
                              f"the safety limit of {Image.MAX_IMAGE_PIXELS:,}: if the file is trusted, raise it with "
                              "--max-image-pixels")


def _check_values(path: Path | str, array: np.ndarray) -> None:
    """Arrays from .npy/.pt and float TIFFs may hold anything: refuse what would train on garbage silently."""
    if array.dtype.kind not in "biuf":
        raise UserError(f"{path} holds {array.dtype} values: save numbers (uint8 images, integer masks)")
    if array.size == 0:
        raise UserError(f"{path} holds no pixels (shape {array.shape}): replace or remove the file")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError(f"{path} holds NaN or infinite values: replace them (numpy.nan_to_num) or remove the file")


def _raw_modes(image: Image.Image) -> set[str]:
    """How the file stores its pixels (Pillow's raw modes), where the mode says how they are read."""
    raw_modes = [tile.args if isinstance(tile.args, str) else tile.args[0] for tile in image.tile if tile.args]
    return {raw for raw in raw_modes if isinstance(raw, str)}


def _sixteen_bit_colour(image: Image.Image) -> bool:
    """16 bits per colour channel (48/64-bit PNG, TIFF): Pillow decodes these to 8 bits, the low byte dropped."""
    return image.mode in ("RGB", "RGBA") and any(";16" in raw for raw in _raw_modes(image))


def _read_png_16(path: Path) -> np.ndarray:
    """A 16-bit colour (or gray + alpha) PNG as HxWxC uint16 (torchvision's decoder keeps every bit)."""
    from torchvision import io as tv_io  # here: importing torchvision costs every script ~1 s at start

    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's (not installed)
            warnings.simplefilter("ignore", DeprecationWarning)
            data = tv_io.decode_png(tv_io.read_file(str(path)), tv_io.ImageReadMode.UNCHANGED)
    except Exception as error:  # noqa: BLE001 - see _open
        raise _decode_error(path, error, "PNG") from None
    if data.shape[0] == 2:  # gray + alpha (Pillow calls it RGBA): the transparency is no band of data, as in 8 bits
        data = data[:1]
    return data.permute(1, 2, 0).numpy()


def _open(path: Path, reduce_to: tuple[int, int] | None = None, mask: bool = False) -> np.ndarray | Image.Image:
    """Decode a file; reduce_to=(width, height) lets JPEGs decode at 1/2, 1/4 or 1/8 size, not below it.

    What Pillow would read wrongly without a word is refused or read otherwise: a TIFF of several pages or an
    animation (only the first would be read), a TIFF's orientation tag, and 16 bits per colour channel (cut to 8;
    images in PNG files are read whole)."""
    if path.suffix.lower() in (".npy", ".pt"):
        return _read_array(path)
    image = open_image(path)
    # JPEGs are left out: a phone's MPO file holds a preview or depth map beside the photo, rightly not read
    pages = getattr(image, "n_frames", 1) if image.format in ("TIFF", "PNG", "GIF", "WEBP") else 1
    if pages > 1:
        image_format = image.format
        image.close()
        if image_format == "TIFF":
            raise UserError(f"{path} is a TIFF of {pages} pages, and one image per file is read: save each page as a "
                            "file of its own (or, for channels stored as pages, the channels as one RGB image)")
        raise UserError(f"{path} is an animation of {pages} frames, and one image per file is read: save the frame "
                        "meant as a PNG of its own")
    orientation = image.tag_v2.get(EXIF_ORIENTATION, 1) if image.format == "TIFF" else 1
    if orientation != 1:
        image.close()
        raise UserError(f"{path} is a TIFF with an orientation tag ({orientation}), which Pillow applies as it reads "
                        "(and garbles in grayscale files), unlike every other format, read as stored: save it as PNG "
                        "without the tag (tifffile.imread gives the pixels as stored)")
    if any(raw.startswith("RGBa") for raw in _raw_modes(image)):  # RGBa, RGBaX, RGBa;16B, ...
        image.close()
        raise UserError(f"{path} is a TIFF whose fourth band is tagged as premultiplied alpha, which Pillow divides "
                        f"the colours by as it reads: {TIFF_BANDS_FIX}")
    # TIFF samples beyond the colours Pillow reads (RGB + near-infrared tagged "unspecified", as GIS tools write):
    # noted before loading, which forgets how the file stores its pixels
    samples = image.tag_v2.get(TIFF_SAMPLES_PER_PIXEL, 0) if image.format == "TIFF" else 0
    if image.mode == "RGB" and samples > 3:
        image.info[TIFF_BANDS_READ_AS_RGB] = samples
    if _sixteen_bit_colour(image):
        image_format, bands = image.format, max(samples, len(image.getbands()))
        image.close()
        if image_format == "PNG" and not mask:
            return _read_png_16(path)
        fix = ("save colour masks with 8 bits per channel (their colours are the classes)" if mask else
               f"Pillow cuts it to 8 in {image_format} files: save it as a 16-bit PNG or a .npy array (uint16, "
               f"HxWx{bands})")
        raise UserError(f"{path} holds 16 bits per colour channel: {fix}")
    try:
        if reduce_to is not None and image.format == "JPEG":
            # DCT-domain downscaling inside libjpeg: 2-8x less decoding and resizing for a scaled image.
            image.draft(image.mode, reduce_to)
        image.load()
        return image
    except Image.DecompressionBombError as error:  # a GIF frame may grow the canvas while loading
        image.close()
        raise _pixel_limit_error(path, error) from None
    except Exception as error:  # noqa: BLE001 - a decoder failing on a file is the file's fault: one line naming it
        image.close()
        raise _decode_error(path, error, image.format) from None


def _as_array(path: Path | str, image: Image.Image, mode: str | None = None) -> np.ndarray:
    """The pixels as an array, converted to mode first; exotic modes Pillow cannot convert name the file."""
    try:
        return np.asarray(image.convert(mode) if mode else image)
    except Exception as error:  # noqa: BLE001 - see _open
        fix = "convert it to PNG" if isinstance(path, Path) else "convert it to a mode such as RGB or L first"
        raise UserError(f"cannot read {path} ({image.mode} pixels: {_reason(error)}): {fix}") from None


STRETCH_BLOCK_VALUES = 2**22  # values stretched at a time (32 MiB of float64)
TIFF_SAMPLES_PER_PIXEL = 277
TIFF_BANDS_READ_AS_RGB = "unet_tiff_bands"  # image.info key: a TIFF's band count where Pillow reads three of them


def unread_bands(mode: str | None) -> int:
    """The bands of a TIFF that Pillow read as RGB, from the mode read_image_data reports for it ("RGB of 4
    bands"); 0 for any other image."""
    found = re.fullmatch(r"RGB of (\d+) bands", mode or "")
    return int(found.group(1)) if found else 0


EXIF_ORIENTATION = 0x0112  # 1: stored upright; 2-8: viewers turn or mirror the stored pixels to show the image
UPRIGHT_FIX = "save the images upright first, e.g. with PIL.ImageOps.exif_transpose"


SIZE_MISMATCH_FIX = "resize each mask to its image with nearest-neighbour interpolation, or remove the pair"
SWAPPED_SIZES_FIX = ("the mask is the image's size turned by 90 degrees: check that it is not stored turned "
                     "(resizing would not align it), or remove the pair")


TURNED_IMAGE_FIX = f"the mask was drawn on the image as viewers show it: {UPRIGHT_FIX}"
TURNED_MASK_FIX = "the mask is stored turned and shown upright by viewers: save the masks upright, e.g. with " \
                  "PIL.ImageOps.exif_transpose"


def size_mismatch(image: Path, image_size: tuple[int, int], mask: Path, mask_size: tuple[int, int],
                  orientation: int, mask_orientation: int = 1) -> tuple[str, str]:
    """The words for a pair whose sizes (width, height) differ, naming the folders where the names are alike, and
    the fix: where an EXIF orientation of the image or the mask explains it (tags 5-8 turn by 90 degrees), the
    pair was made as viewers show it, and files are read as stored."""
    names = (image.name, mask.name) if image.name != mask.name else (image, mask)
    message = f"{names[0]} is {image_size[0]}x{image_size[1]} but {names[1]} is {mask_size[0]}x{mask_size[1]}"
    if image_size[::-1] != tuple(mask_size):
        return message, SIZE_MISMATCH_FIX
    if orientation >= 5:
        return f"{message}, the image as its EXIF orientation ({orientation}) turns it for viewers", TURNED_IMAGE_FIX
    if mask_orientation >= 5:
        return f"{message}, the mask as its EXIF orientation ({mask_orientation}) turns it for viewers", \
            TURNED_MASK_FIX
    return message, SWAPPED_SIZES_FIX


def file_orientation(path: Path) -> int:
    """The EXIF orientation tag of an image file, from its header alone: 1 when absent or unreadable, and for
    arrays, which have no EXIF. Files are read as stored, not turned by it (TIFFs too: _open)."""
    if path.suffix.lower() in (".npy", ".pt"):
        return 1
    with warnings.catch_warnings():  # Pillow warns about broken tags; the pixels were judged elsewhere
        warnings.simplefilter("ignore", UserWarning)
        try:
            with open_image(path) as header:
                # a PNG's getexif decodes every pixel to reach chunks that may follow them (found by a review: each
                # PNG was decoded twice); where none do, the chunks read with the header hold all its tags
                tags_read = header.format == "PNG" and not _png_chunks_after_pixels(path)
                exif = Image.Image.getexif(header) if tags_read else header.getexif()
                value = int(exif.get(EXIF_ORIENTATION, 1))
        except Exception:  # noqa: BLE001 - a broken EXIF block, or a file gone since it was read: reading says so
            return 1
    return value if 1 <= value <= 8 else 1


def _png_chunks_after_pixels(path: Path) -> bool:
    """Whether a PNG has chunks between its pixel data and its end (EXIF or text, where the orientation may be),
    read from the chunks' headers, skipping their contents; True for a file cut short (Pillow then judges it)."""
    with open(path, "rb") as file:
        file.seek(len(PNG_SIGNATURE))
        in_pixels = False
        while len(head := file.read(8)) == 8:  # each chunk: its length, its type, the data and a checksum
            kind = head[4:]
            if kind == b"IEND":
                return False
            if kind == b"IDAT":
                in_pixels = True
            elif in_pixels:
                return True
            file.seek(int.from_bytes(head[:4], "big") + 4, os.SEEK_CUR)
    return True


def read_image_data(path: Path, reduce_to: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """Decode fully to HxWxC (C = 1, 3 or 4) in the file's own depth, plus the file's mode for reports; a fourth
    band (alpha, or one such as near-infrared) is kept for the model to read or leave (_model_pixels)."""
    data = _open(path, reduce_to)
    if isinstance(data, Image.Image):
        with data:  # closed once decoded: GIF and TIFF keep their file open for other frames
            bands = data.info.get(TIFF_BANDS_READ_AS_RGB)
            mode = f"RGB of {bands} bands" if bands else data.mode
            array = _as_array(path, data, _read_mode(data))
    else:
        array = np.asarray(data)
        arrays = path.suffix.lower() in (".npy", ".pt")
        mode = (f"{path.suffix.lower()[1:]} {array.dtype}" if arrays
                else f"{'RGBA' if array.shape[-1] == 4 else 'RGB'} 16-bit")  # a 16-bit colour PNG
    return _image_shape(path, array), mode


def _read_mode(image: Image.Image) -> str | None:
    """The mode an image is read in: its own for plain pixels and RGBA (whose fourth band may be one such as
    near-infrared), else L or RGB: the transparency of palette and gray + alpha images is no band of data, and is
    dropped. CMYK is a colour space, read as the RGB colours it means."""
    mode = image.mode
    if mode in ("L", "RGB", "RGBA", "I;16", "I;16B", "I", "F"):
        return None
    return "L" if mode in ("1", "LA") else "RGB"


def _channels_first(shape: tuple[int, ...]) -> bool:
    """CxHxW, as tensors are saved, rather than HxWxC."""
    return len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4)


def _image_shape(source: Path | str, array: np.ndarray) -> np.ndarray:
    """HxWxC with C = 1, 3 or 4, from HxW, HxWxC or channels-first CxHxW (tensors saved that way)."""
    if _channels_first(array.shape):
        array = array.transpose(1, 2, 0)
    _check_values(source, array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise _shape_error(source, array.shape)
    return array


def _shape_error(source: Path | str, shape: tuple[int, ...]) -> UserError:
    return UserError(f"{source} has shape {shape}: expected HxW, HxWx3, HxWx4 or channels first (3xHxW)")


def read_image(path: Path, channels: int = 3, reduce_to: tuple[int, int] | None = None) -> np.ndarray:
    """Decode to uint8 HxWxC with the model's channel count (grayscale repeated, palette converted, a fourth band
    kept for 4-channel models only).

    reduce_to: the size the image will be resized to; JPEGs may then decode smaller (never below it).
    """
    array, mode = read_image_data(path, reduce_to)
    return _model_pixels(array, channels, path, mode)


def in_memory_name(image: object) -> str:
    """How messages name an image a program holds, where a file's would name the file."""
    return "the PIL image" if isinstance(image, Image.Image) else f"the {type(image).__name__} image"


def image_in_memory(image: Image.Image | np.ndarray | torch.Tensor, channels: int = 3) -> np.ndarray:
    """read_image for an image a program already holds: a PIL image, an HxW or HxWxC array, or a CxHxW tensor;
    its pixels are taken as they are, with the rules of files (16-bit and float stretched, palettes converted)."""
    source = in_memory_name(image)
    mode = None
    if isinstance(image, Image.Image):
        mode = image.mode
        array = _as_array(source, image, _read_mode(image))
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        array = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(f"an image is a PIL image, a numpy array or a torch tensor, not a {type(image).__name__}")
    return _model_pixels(_image_shape(source, array), channels, source, mode)


def _model_pixels(array: np.ndarray, channels: int, source: Path | str, mode: str | None = None) -> np.ndarray:
    """HxWxC in its own depth -> uint8 HxWxC with the model's channel count. A model of 3 channels or 1 reads
    the first three bands of a 4-band image, stretched (16-bit, float) over those three alone."""
    bands = array.shape[-1]
    if channels == 4 and (samples := unread_bands(mode)):
        raise UserError(f"{source} holds {samples} bands, but Pillow reads only the first three of this TIFF: "
                        f"{TIFF_BANDS_FIX.replace('HxWxC', 'HxWx4') if samples == 4 else TIFF_BANDS_FIX}"
                        f"{', or save them as an RGBA PNG' if samples == 4 else ''}")
    if channels == 4 and bands != 4:
        held = f"{mode} colours" if mode == "CMYK" else counted(bands, "band")
        raise UserError(f"{source} holds {held}, but the model reads 4 channels (RGB + a fourth band, such as "
                        "near-infrared): save each image's four bands as an RGBA PNG or TIFF or an HxWx4 .npy, or "
                        "use a model of 3 channels")
    if channels < 4:
        array = array[..., :3]
    if array.dtype != np.uint8:
        array = _to_uint8(array, mode)
    if channels == 1 and array.shape[-1] == 3:
        array = np.asarray(Image.fromarray(array).convert("L"))[..., None]
    elif channels == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def _to_uint8(array: np.ndarray, mode: str | None = None) -> np.ndarray:
    # 16-bit and float images: stretch each image's own range to 0..255 (floats already in [0, 1] kept). Decided by
    # the type, not the values, so that the slices of one volume are read alike: 16-bit arrays (signed or not,
    # either byte order) and Pillow's 32-bit "I" (signed 16-bit and 32-bit TIFFs) are always stretched; only
    # numpy's default integers (astype(int): 32 or 64 bits) and int8 holding 0..255 are 8-bit values, as they are.
    # float64 arithmetic: a float32 range like -3e38..3e38 overflows to inf.
    # In blocks of rows: whole, an 8000x6000x4 image's float64 temporaries took 5.6 GB (a review's measurement).
    eight_bit_values = array.dtype.kind in "iu" and array.dtype.itemsize != 2 and mode != "I"
    if eight_bit_values and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    low, high = float(array.min()), float(array.max())
    if array.dtype.kind == "f" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    stretched = np.empty(array.shape, np.uint8)
    rows = max(1, STRETCH_BLOCK_VALUES // max(1, array[0].size))
    for top in range(0, array.shape[0], rows):
        values = array[top:top + rows].astype(np.float64)
        stretched[top:top + rows] = ((values - low) / max(high - low, 1e-12) * 255).round()
    return stretched


def _refuse_alpha_drawn_mask(path: Path, pixels: np.ndarray) -> None:
    """A mask painted in one colour whose shapes are in the alpha channel (as drawing tools export layers): read
    as colours, it would be one value everywhere."""
    colours, alpha = pixels[..., :-1], pixels[..., -1]
    if (colours == colours.flat[: colours.shape[-1]]).all() and alpha.min() != alpha.max():
        raise UserError(f"{path} holds its mask in the alpha channel (its colours are all one): save the alpha "
                        "channel as a grayscale mask, e.g. Image.open(path).getchannel('A').save(path)")


def read_mask(path: Path) -> np.ndarray:
    """Decode a mask to raw values: HxW (palette index, gray level, label) or HxWx3 colours."""
    data = _open(path, mask=True)
    if isinstance(data, Image.Image):
        with data:  # closed once decoded: a GIF (Carvana's masks) keeps its file open for other frames
            if data.mode in ("RGBA", "LA", "PA"):
                _refuse_alpha_drawn_mask(path, _as_array(path, data))
            convert = data.mode in ("RGBA", "LA", "PA", "CMYK", "YCbCr", "HSV")
            array = _as_array(path, data, ("RGB" if data.mode != "LA" else "L") if convert else None)
    else:
        array = np.asarray(data)
    _check_values(path, array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise UserError(f"{path} has shape {array.shape}: a mask must be HxW or HxWx3")
    if array.ndim == 3:
        # An RGB file stays a colour mask even when its colours happen to be gray (e.g. a background-only
        # frame of a colour-coded set): masks are written back in the encoding they came in.
        array = array[..., :3]
    return array


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as stored, from the header (a .npy's shape, without reading its values; a .pt is read)."""
    if path.suffix.lower() in (".npy", ".pt"):
        try:
            shape = _npy_shape(path) if path.suffix.lower() == ".npy" else _read_array(path).shape
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - numpy raises a dozen types on bad files
            raise _unreadable(path, error) from None
        if len(shape) not in (2, 3):
            raise _shape_error(path, shape)
        height, width = shape[1:3] if _channels_first(shape) else shape[:2]
        return width, height
    with open_image(path) as image:
        return image.size


def require_folder(folder: Path, role: str) -> None:
    """Said before anything else about a run (its checkpoint folder, its resume), so a typo is the first error."""
    if not Path(folder).is_dir():
        what = ("is a file, not a folder" if Path(folder).exists() else
                "is a link that leads back to itself" if Path(folder).is_symlink() and where(Path(folder)) ==
                Path(folder).absolute() else "does not exist")
        raise UserError(f"{role} folder {folder} {what}: pass --{role} DIR (see download_data.sh)")


def is_hidden(path: Path) -> bool:
    """.DS_Store, macOS's ._x.jpg beside x.jpg on shared drives, .gitkeep: never data."""
    return path.name.startswith(".")


def is_image_file(path: Path) -> bool:
    """A file of an image suffix in a listed folder; a broken link too, so that its reader reports it."""
    return path.suffix.lower() in IMAGE_SUFFIXES and (path.is_file() or path.is_symlink() and not path.exists())


def _files_by_stem(folder: Path, role: str, shared: bool = False) -> tuple[dict[str, Path], list[Path]]:
    """The image files by name without suffix, and the files of UNREAD_IMAGE_SUFFIXES. shared: the folder holds
    the masks too (then x.jpg beside x.png is an image and its mask, named alike)."""
    require_folder(folder, role)
    files: dict[str, Path] = {}
    unread: list[Path] = []
    for path in sorted(folder.iterdir()):
        if is_hidden(path):
            continue
        if not is_image_file(path):
            if path.suffix.lower() in UNREAD_IMAGE_SUFFIXES and path.is_file():
                unread.append(path)
            continue
        # One spelling of accented names: macOS may store é as e + accent (NFD) where Linux and scripts write é
        stem = unicodedata.normalize("NFC", path.stem)
        if stem in files and shared:
            raise UserError(f"{files[stem].name} and {path.name} in {folder} have the same name, and images and "
                            "masks are both in it: move the masks to a folder of their own, or rename them with a "
                            "suffix (x_mask.png) and pass --mask-suffix _mask")
        if stem in files:
            raise UserError(f"{files[stem].name} and {path.name} in {folder} have the same name: keep one")
        files[stem] = path
    if not files:
        found = f", only {unread_format_note(unread)}" if unread else ""
        raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}{found}")
    return files, unread


def detect_mask_suffix(image_stems: list[str], mask_stems: set[str],
                       candidates: tuple[str, ...] = MASK_SUFFIX_CANDIDATES, masks_dir: Path | str = "masks") -> str:
    """The suffix (e.g. Carvana's "_mask") that pairs the most images with masks. Two that pair as many are
    refused: which files are the masks would be a guess (x.png beside x_mask.gif: a copy of the image, or the mask?)."""
    counts = {suffix: sum(f"{stem}{suffix}" in mask_stems for stem in image_stems) for suffix in candidates}
    best = max(counts.values())
    tied = [suffix for suffix, count in counts.items() if count == best]
    if best and len(tied) > 1:
        first, second = tied[:2]
        both = next((stem for stem in image_stems if {stem + first, stem + second} <= mask_stems), None)
        if both is not None:
            example = f"image '{both}' has both '{both + first}' and '{both + second}'"
        else:  # masks named two ways: a -> a.png, b -> b_mask.png
            one, other = (next(stem for stem in image_stems if stem + suffix in mask_stems)
                          for suffix in (first, second))
            example = f"image '{one}' has '{one + first}', image '{other}' has '{other + second}'"
        raise UserError(f"the files in {masks_dir} pair with the images in two ways, {best} each: e.g. {example}: "
                        f"pass --mask-suffix '{first}' or --mask-suffix '{second}' to say which are the masks (and "
                        "rename the others)")
    return tied[0]


class Pairing(NamedTuple):
    pairs: list[Pair]
    mask_suffix: str
    lonely_images: list[str]
    lonely_masks: list[str]
    unread: list[Path]  # in either folder: files of UNREAD_IMAGE_SUFFIXES


def where(path: Path) -> Path:
    """The file a path names, through links; a link loop is its own (reading it says what is wrong, in one line)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a symlink loop: RuntimeError before Python 3.13
        return path.absolute()


def where_all(paths: Iterable[Path]) -> list[Path]:
    """where() of each path, each folder resolved once and each file followed only where it is a link: a whole
    resolve per file walks every folder above it (found by a profiling review: 0.5 ms a file, before predicting)."""
    folders: dict[Path, Path] = {}
    found = []
    for path in paths:
        folder = folders.get(path.parent)
        if folder is None:
            folder = folders[path.parent] = where(path.parent)
        joined = folder / path.name
        # a link (or a link loop, which where() leaves unresolved as typed) is followed from the path as given
        found.append(where(path) if path.name in ("", ".", "..") or _is_link(joined) else joined)
    return found


def _is_link(path: Path) -> bool:
    try:
        return path.is_symlink()
    except OSError:  # a name too long for the file system, say: where() tells
        return True


def _typed_suffix_fix(typed: str, image_stems: list[str], mask_stems: set[str], one_folder: bool) -> str:
    """What to pass instead of a --mask-suffix that pairs nothing: the suffix without its extension
    (_mask.gif -> _mask), or the suffix the names show, where it pairs some images."""
    def pairs(suffix: str) -> bool:  # in one folder, no suffix would pair each file with itself
        return (bool(suffix) or not one_folder) and any(stem + suffix in mask_stems for stem in image_stems)

    extension = Path(typed).suffix
    with_extension = extension.lower() in IMAGE_SUFFIXES and typed != extension
    if with_extension and pairs(typed[:-len(extension)]):
        return (f"--mask-suffix is the part of the name before the extension: try --mask-suffix "
                f"'{typed[:-len(extension)]}'")
    fits = next((suffix for suffix in MASK_SUFFIX_CANDIDATES if pairs(suffix)), None)
    if fits is not None:
        return f"the masks pair with --mask-suffix '{fits}' (or leave the flag out to detect it)"
    if with_extension:
        return ("--mask-suffix is the part of the name before the extension (_mask for x_mask.png): check it and the "
                "folders")
    return "check the folders and --mask-suffix, or leave the flag out to detect it"


def _names_apart(image_stems: list[str], mask_stems: set[str]) -> tuple[str, str] | None:
    """An image and a mask whose names differ by a word at the start or at the end of each (img_000 and mask_000,
    000_img and 000_mask), which no --mask-suffix pairs: it is added to the image's whole name. The rest of the
    name must be one file's own in each folder (scan_a beside scan_b is no such pair)."""
    def cores(stems: Iterable[str]) -> dict[tuple[int, str], str]:
        found: dict[tuple[int, str], list[str]] = {}
        for stem in stems:
            words = re.split(r"[_\-. ]", stem)
            if len(words) > 1:  # without the first word, or without the last
                found.setdefault((0, stem[len(words[0]):]), []).append(stem)
                found.setdefault((1, stem[:len(stem) - len(words[-1])]), []).append(stem)
        return {core: stems[0] for core, stems in found.items() if len(stems) == 1}

    images = cores(image_stems)
    return next(((images[core], mask) for core, mask in sorted(cores(mask_stems).items()) if core in images), None)


def pair_files(images_dir: Path, masks_dir: Path, mask_suffix: str | None = None) -> Pairing:
    """Pair every image with its mask, listing each folder once; the unpaired files are returned by name."""
    # One folder for both (x.jpg beside x_mask.png): without a suffix every file would be its own mask.
    one_folder = where(Path(images_dir)) == where(Path(masks_dir))
    images, unread = _files_by_stem(Path(images_dir), "imgs", one_folder)
    masks, unread_masks = _files_by_stem(Path(masks_dir), "masks", one_folder)
    if not one_folder:
        unread += unread_masks
    if one_folder and mask_suffix == "":
        raise UserError(f"images and masks are both in {images_dir}, so masks need a name suffix (x.jpg, x_mask.png): "
                        "pass it with --mask-suffix, or move the masks to a folder of their own")
    typed = mask_suffix is not None
    if typed:
        mask_suffix = unicodedata.normalize("NFC", mask_suffix)  # spelled as the names are (_files_by_stem)
    else:
        candidates = tuple(s for s in MASK_SUFFIX_CANDIDATES if s) if one_folder else MASK_SUFFIX_CANDIDATES
        mask_suffix = detect_mask_suffix(list(images), set(masks), candidates, masks_dir)
    pairs = [Pair(stem, image, masks[stem + mask_suffix])
             for stem, image in images.items() if stem + mask_suffix in masks]
    if not pairs:
        example = next(iter(images.values())).name
        apart = None if one_folder else _names_apart(list(images), set(masks))
        fix = (f"the names differ at their start or end ({images[apart[0]].name}, {masks[apart[1]].name}), and "
               "--mask-suffix only adds to an image's name: rename each mask to its image's name "
               f"({apart[0]}{masks[apart[1]].suffix}, or {apart[0]}_mask{masks[apart[1]].suffix})" if apart
               else _typed_suffix_fix(mask_suffix, list(images), set(masks), one_folder) if typed
               else "check the folders or pass --mask-suffix")
        raise UserError(f"no image in {images_dir} has a mask in {masks_dir} (e.g. {example} has no "
                        f"'{Path(example).stem}{mask_suffix}.*'): {fix}")
    paired_images, paired_masks = {pair.image for pair in pairs}, {pair.mask for pair in pairs}
    # In one folder (suffix "_mask"), the names with the suffix are the masks and the others the images.
    lonely_images = [p.name for stem, p in images.items() if p not in paired_images and p not in paired_masks
                     and not (one_folder and stem.endswith(mask_suffix))]
    lonely_masks = [p.name for stem, p in masks.items() if p not in paired_masks and p not in paired_images
                    and not (one_folder and not stem.endswith(mask_suffix))]
    return Pairing(pairs, mask_suffix, lonely_images, lonely_masks, unread)


def list_pairs(images_dir: Path, masks_dir: Path, mask_suffix: str | None = None) -> list[Pair]:
    """pair_files, with a warning that names the files left unpaired."""
    pairing = pair_files(images_dir, masks_dir, mask_suffix)
    for kind, names in (("images without a mask", pairing.lonely_images),
                        ("masks without an image", pairing.lonely_masks)):
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            print(f"warning: skipping {len(names)} {kind}: {shown}", file=sys.stderr)
    if pairing.unread:
        print(f"warning: skipping {unread_format_note(pairing.unread)}", file=sys.stderr)
    return pairing.pairs


def scaled_size(width: int, height: int, scale: float, source: Path | str = "image") -> tuple[int, int]:
    """The reference's rule: int(scale * side), which must stay positive."""
    new_width, new_height = int(scale * width), int(scale * height)
    if new_width <= 0 or new_height <= 0:
        raise UserError(f"scale {scale} shrinks {source} ({width}x{height}) to nothing: use a larger --scale")
    # Growing past the decoders' limit (an array file is not decoded, so its own size may be beyond it)
    limit = Image.MAX_IMAGE_PIXELS  # None: no limit, as a program may set it
    if limit is not None and new_width * new_height > max(limit, width * height):
        raise UserError(f"scale {scale:g} makes {source} ({width}x{height}) {new_width}x{new_height}, more than "
                        f"--max-image-pixels ({Image.MAX_IMAGE_PIXELS:,}) allows: use a smaller --scale, or raise "
                        "the limit for trusted files")
    return new_width, new_height


def parse_crop(text: str) -> tuple[int, int]:
    """--crop: N (a square) or WxH, each side a multiple of 16 (the U-Net halves it four times), at least 32."""
    try:
        sides = [int(side) for side in text.lower().split("x")]
    except ValueError:
        sides = []
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or any(side < 32 or side % 16 for side in sides):
        raise UserError(f"--crop {text}: give N or WxH in pixels, multiples of 16 of at least 32 (e.g. 512 or 640x384)")
    return sides[0], sides[1]


def crop_window(height: int, width: int, size: tuple[int, int],
                centre: tuple[int, int] | None = None) -> tuple[slice, slice]:
    """Rows and columns of a (width, height) = size window in a height x width image (all of a side shorter than
    the window): around centre = (row, column), moved inside the image, or at a uniformly random place, from
    torch's generator (seeded per item in training)."""
    crop_width, crop_height = size
    if centre is None:
        top = int(torch.randint(max(height - crop_height, 0) + 1, ()))
        left = int(torch.randint(max(width - crop_width, 0) + 1, ()))
    else:
        top = min(max(centre[0] - crop_height // 2, 0), max(height - crop_height, 0))
        left = min(max(centre[1] - crop_width // 2, 0), max(width - crop_width, 0))
    return slice(top, top + crop_height), slice(left, left + crop_width)


def foreground_pixel(class_indices: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of a random pixel of a random class other than the background (0) present in the mask, from
    torch's generator; None when there is none. A class first, so that small objects are found as often as large
    ones of another class."""
    counts = np.bincount(class_indices.ravel().astype(np.int64) - IGNORE_CLASS)  # IGNORE_CLASS (-1) -> 0
    present = [index + IGNORE_CLASS for index, count in enumerate(counts) if count and index + IGNORE_CLASS > 0]
    if not present:
        return None
    chosen = present[int(torch.randint(len(present), ()))]
    rows, cols = np.nonzero(class_indices == chosen)
    pick = int(torch.randint(len(rows), ()))
    return int(rows[pick]), int(cols[pick])


def check_model_input_size(width: int, height: int, scale: float, source: Path | str) -> None:
    """Refuse an image that int(scale * side) leaves smaller than the U-Net takes (a max-pool error otherwise)."""
    new_width, new_height = int(scale * width), int(scale * height)
    if min(new_width, new_height) < MIN_SIDE:
        smallest = min(width, height)
        fix = (f"use --scale {math.ceil(100 * MIN_SIDE / smallest) / 100:g} or more" if smallest >= MIN_SIDE
               else "leave it out or enlarge it")
        scaled = f", only {new_width}x{new_height} at scale {scale:g}" if scale != 1 else ""  # typed, or the model's
        raise UserError(f"{source} is {width}x{height}{scaled}: the U-Net needs at least {MIN_SIDE} px a side (four "
                        f"halvings): {fix}")


def load_scaled_image(path: Path, scale: float, channels: int = 3) -> tuple[torch.Tensor, tuple[int, int]]:
    """The model's view of an image file: uint8 CxH'xW' at int(scale * side), and the file's own (width, height);
    an image the U-Net cannot take at that size is refused (check_model_input_size).

    The one image-reading path of training, validation, evaluation and prediction, so that all see the
    same pixels. A scaled-down JPEG is decoded at reduced size by libjpeg, then resized the rest of the way.
    """
    size = reduce_to = None
    if scale < 1 and path.suffix.lower() in JPEG_SUFFIXES:
        try:
            with open_image(path) as header:  # the size, without decoding the pixels
                size = header.size
        except UserError:
            pass  # read_image below names the problem
        reduce_to = scaled_size(*size, scale, path) if size else None
    image = read_image(path, channels, reduce_to)
    size = size or (image.shape[1], image.shape[0])
    check_model_input_size(*size, scale, path)  # before resizing: to 1x1, torch's antialiased bicubic fails
    return image_to_tensor(image, scaled_size(*size, scale, path)), size


def image_to_tensor(image: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 HxWxC -> uint8 CxHxW, resized to size=(width, height) with bicubic (antialiased, like PIL's).

    PyTorch's own uint8 kernel, which torchvision's resize calls on CPUs (the same pixels): predict.py and
    evaluate.py then start without importing torchvision (~1.2 s)."""
    tensor = torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C"))  # a writable copy
    if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
        width, height = size
        tensor = F.interpolate(tensor[None], size=(height, width), mode="bicubic", antialias=True,
                               align_corners=False)[0]
    return tensor


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxW or HxWxC of any dtype -> size=(width, height), nearest neighbour (pixel centres, as NEAREST_EXACT).

    Applied to raw mask values before they are encoded: the same result as encoding first, on fewer pixels.
    """
    width, height = size
    rows = np.minimum(((np.arange(height) + 0.5) * (array.shape[0] / height)).astype(np.intp), array.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (array.shape[1] / width)).astype(np.intp), array.shape[1] - 1)
    return array[rows[:, None], cols]


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float in [0, 1]; done on the device so that uint8 crosses the bus."""
    if images.dtype != torch.uint8:  # a float batch would be divided again, in place: wrong, and the caller's changed
        raise TypeError(f"the model takes uint8 images (0..255), as load_scaled_image gives them, not {images.dtype}: "
                        "for floats in 0..1, pass (images * 255).round().to(torch.uint8)")
    return images.float().div_(255)


def model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader's uint8 batch as the model takes it: moved as uint8 (a quarter of the bytes), then scaled to [0, 1]
    on the device, in the memory layout its convolutions run fastest in."""
    return normalize_images(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format(device))


def class_index_dtype(n_classes: int) -> torch.dtype:
    """The smallest signed type for class indices and the ignore value -1: int8 for up to 128 classes, an eighth
    of int64 on the way from the loader workers to the device (where the loss takes .long())."""
    return torch.int8 if n_classes <= 2**7 else torch.int16 if n_classes <= 2**15 else torch.int32


class SegmentationDataset(Dataset):
    """Items are {"image": uint8 CxHxW, "mask": HxW class indices (class_index_dtype: int8 for up to 128 classes;
    IGNORE_CLASS for ignored pixels), "name": str}.

    scale_masks=False keeps masks at native resolution (for evaluation against the original masks).
    crop=(width, height): a random window of that size of each scaled item (crop_window), for training; an
    item smaller than it is padded at the bottom and right, the mask with IGNORE_CLASS (no loss there). With
    probability crop_foreground the window is centred on a pixel of an object (foreground_pixel) instead.
    transform(image, mask) -> (image, mask) is the augmentation, applied after scaling and cropping.
    skip_unreadable: a file that fails to decode mid-epoch, or a pair changed since the data check (a mask of
    another size, or of a value not among mask_values), yields {"skipped": reason} instead of stopping the run
    (collate_skipping drops it from the batch and reports it).
    either_binary: masks are scored against a model's binary values, 0/1 and 0/255 alike (encode_mask).
    """

    def __init__(
        self,
        pairs: list[Pair],
        mask_values: list[MaskValue],
        scale: float = 1.0,
        channels: int = 3,
        scale_masks: bool = True,
        binarize: int | None = None,
        ignore_value: int | None = None,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        skip_unreadable: bool = False,
        crop: tuple[int, int] | None = None,
        crop_foreground: float = 0.0,
        either_binary: bool = False,
    ):
        if crop is not None and not scale_masks:
            raise ValueError("crop needs scale_masks: the window is cut from the image and its mask at one size")
        if not 0 < scale <= (1 if scale_masks else math.inf):  # scored as predicted: predict.py may upscale too
            raise UserError(f"--scale must be in (0, 1], got {scale}" if scale_masks else
                            f"--scale must be above 0, got {scale}")
        self.pairs = pairs
        self.mask_values = mask_values
        self.scale = scale
        self.channels = channels
        self.scale_masks = scale_masks
        self.binarize = binarize_threshold(binarize)  # values above it are foreground; None: kept
        self.ignore_value = ignore_value
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        self.crop, self.crop_foreground = crop, crop_foreground
        self.either_binary = either_binary
        self.mask_dtype = class_index_dtype(max(len(mask_values), 2))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        try:
            return self._item(self.pairs[index])
        except UserError as error:  # also a pair changed since the data check (a mask of another size or value)
            if self.skip_unreadable:
                return {"skipped": str(error)}
            raise

    def _item(self, pair: Pair) -> dict:
        image_tensor, (width, height) = load_scaled_image(pair.image, self.scale, self.channels)
        mask = read_mask(pair.mask)
        if (height, width) != mask.shape[:2]:
            message, fix = size_mismatch(pair.image, (width, height), pair.mask, (mask.shape[1], mask.shape[0]),
                                         file_orientation(pair.image), file_orientation(pair.mask))
            raise UserError(f"{message}: {fix}")
        if self.scale_masks and self.scale != 1.0:
            mask = resize_nearest(mask, (image_tensor.shape[-1], image_tensor.shape[-2]))
        if self.crop is not None:
            image_tensor, class_indices = self._cut_window(image_tensor, mask, pair)
        else:
            class_indices = self._encode(mask, pair)
        mask_tensor = torch.from_numpy(class_indices).long()
        if self.transform is not None:  # before padding: zoom and rotation about the image's centre, not the window's
            image_tensor, mask_tensor = self.transform(image_tensor, mask_tensor)
        if self.crop is not None:  # an image smaller than the window
            crop_width, crop_height = self.crop
            image_tensor = pad_bottom_right(image_tensor, crop_height, crop_width, 0)
            mask_tensor = pad_bottom_right(mask_tensor, crop_height, crop_width, IGNORE_CLASS)
        return {"image": image_tensor, "mask": mask_tensor.to(self.mask_dtype), "name": pair.name}

    def _encode(self, mask: np.ndarray, pair: Pair) -> np.ndarray:
        return encode_mask(mask, self.mask_values, pair.mask, self.binarize, self.ignore_value, self.either_binary)

    def _cut_window(self, image: torch.Tensor, mask: np.ndarray, pair: Pair) -> tuple[torch.Tensor, np.ndarray]:
        """The crop window of the image and its class indices. Anywhere: only the window's mask pixels are
        encoded. Around an object (probability crop_foreground): the whole mask is encoded to find one."""
        height, width = image.shape[-2:]
        if self.crop_foreground > 0 and float(torch.rand(())) < self.crop_foreground:
            classes = self._encode(mask, pair)
            rows, cols = crop_window(height, width, self.crop, foreground_pixel(classes))
            return image[:, rows, cols].clone(), np.ascontiguousarray(classes[rows, cols])
        rows, cols = crop_window(height, width, self.crop)
        return image[:, rows, cols].clone(), self._encode(np.ascontiguousarray(mask[rows, cols]), pair)


class ImageFiles(Dataset):
    """Images to predict: {"index", "image": uint8 CxH'xW', "size": (height, width) of the file, "orientation": its
    EXIF tag}, or {"index", "error": one line} for a file that cannot be read (reported, the others go on).

    indices: the positions in paths to read (default: all); "index" is always the position in paths.
    """

    def __init__(self, paths: list[Path], scale: float, channels: int = 3, indices: list[int] | None = None):
        self.paths, self.scale, self.channels = paths, scale, channels
        self.indices = list(range(len(paths))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        index = self.indices[position]
        path = self.paths[index]
        try:
            image, (width, height) = load_scaled_image(path, self.scale, self.channels)
            orientation = file_orientation(path)  # the header again: the tag, not the pixels
        except UserError as error:
            return {"index": index, "error": str(error)}
        return {"index": index, "image": image, "size": (height, width), "orientation": orientation}


def collate_skipping(items: list[dict]) -> dict:
    """Batch of the readable items (pad_to_largest); "skipped" lists why the others were left out."""
    readable = [item for item in items if "skipped" not in item]
    batch = pad_to_largest(readable) if readable else {}
    batch["skipped"] = [item["skipped"] for item in items if "skipped" in item]
    return batch


def pad_to_largest(items: list[dict]) -> dict:
    """default_collate; items of different sizes (cells, tiles, photos) are first padded at the bottom and right
    to the largest height and width among them, images with 0 and masks with IGNORE_CLASS, so that the padding
    counts in no loss or score. Such a batch also carries "sizes": per item, the (height, width) of its image and
    of its mask before padding (same_size_parts gives the items back unpadded)."""
    sizes = [(tuple(item["image"].shape[-2:]), tuple(item["mask"].shape[-2:])) for item in items]
    if len(set(sizes)) == 1:
        return default_collate(items)
    image_height, image_width = (max(size[0][axis] for size in sizes) for axis in (0, 1))
    mask_height, mask_width = (max(size[1][axis] for size in sizes) for axis in (0, 1))
    padded = [{**item,
               "image": pad_bottom_right(item["image"], image_height, image_width, 0),
               "mask": pad_bottom_right(item["mask"], mask_height, mask_width, IGNORE_CLASS)} for item in items]
    return {**default_collate(padded), "sizes": sizes}


def pad_bottom_right(tensor: torch.Tensor, height: int, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]), value=value)


def same_size_parts(batch: dict) -> Iterator[dict]:
    """The batch's images, masks and names, or for a padded one (pad_to_largest) its runs of consecutive same-size
    items, unpadded: scores must see each image as it is predicted alone, without another image's padding."""
    if "sizes" not in batch:  # its images, masks and names only, as the runs below: one part of one shape
        yield {key: batch[key] for key in ("image", "mask", "name")}
        return
    sizes = batch["sizes"]
    start = 0
    for end in range(1, len(sizes) + 1):
        if end == len(sizes) or sizes[end] != sizes[start]:
            (image_height, image_width), (mask_height, mask_width) = sizes[start]
            yield {"image": batch["image"][start:end, :, :image_height, :image_width],
                   "mask": batch["mask"][start:end, :mask_height, :mask_width], "name": batch["name"][start:end]}
            start = end


def _quiet_handover_breaks(args: threading.ExceptHookArgs, default: Callable = threading.excepthook) -> None:
    """A worker hands each batch's shared memory to the main process through multiprocessing's resource sharer
    thread ("Thread-N (_serve)"); a main process stopped by Ctrl-C mid-handover breaks that connection, and its
    traceback is not the user's to read. Every other thread error is printed as usual."""
    thread_name = args.thread.name if args.thread is not None else ""
    if not (issubclass(args.exc_type, (ConnectionError, EOFError)) and thread_name.endswith("(_serve)")):
        default(args)


def init_loader_worker(worker_id: int, stops_gracefully: bool = False,
                       pixel_limit: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Loader workers yield the cores to the training process (CPU training threads, GPU feeding) when both want
    them (idle cores still go to the workers), and leave a Ctrl-C to it; also a SIGTERM where it stops gracefully
    on one (stops_gracefully: train.py). pixel_limit: the main process's --max-image-pixels when the loader was
    made, which a worker started by forkserver or spawn (not forked from it) would not have."""
    Image.MAX_IMAGE_PIXELS = pixel_limit
    leave_first_signal_to_main((signal.SIGINT, signal.SIGTERM) if stops_gracefully else (signal.SIGINT,))
    take_held_signals()  # held while the worker started (WorkerLoader)
    threading.excepthook = _quiet_handover_breaks
    if not hasattr(os, "nice"):  # Windows
        return
    try:
        os.nice(10)
    except OSError:
        pass  # not permitted here: keep the default priority


def stop_loader_workers(iterator: Iterator | None) -> None:
    """End a DataLoader iterator's worker processes now rather than when it is garbage-collected. Something that
    keeps the caller's frames (wandb keeps the traceback of a failed start) would leave them alive until the
    interpreter exits, where multiprocessing sends them one SIGTERM, which training's workers leave to the main
    process (leave_first_signal_to_main), and then waits for them forever."""
    shutdown = getattr(iterator, "_shutdown_workers", None)  # PyTorch's own, also run by the iterator's __del__
    if shutdown is not None:
        shutdown()


def check_workers_flag(workers: int | None) -> None:
    """--workers in every script: 0 (decoding in the process itself) to 4 per core; more only adds processes that
    wait, each with its own memory (a typo of 1e9 would fork until the machine stalls)."""
    most = 4 * (os.cpu_count() or 1)
    check_flag("--workers", workers, workers is None or 0 <= workers <= most, f"0 (none) to {most} (4 per core here)")


class WorkerLoader(DataLoader):
    """A DataLoader whose workers run init_loader_worker (low priority, signals left to the main process) and
    start with SIGINT and SIGTERM held until it has run (signals_held_for_new_processes)."""

    def __init__(self, dataset: Dataset, *, stops_gracefully: bool = False, **options: Any) -> None:
        workers = options.get("num_workers", 0)
        super().__init__(dataset, worker_init_fn=partial(init_loader_worker, stops_gracefully=stops_gracefully,
                                                         pixel_limit=Image.MAX_IMAGE_PIXELS)
                         if workers > 0 else None, **options)

    def _get_iterator(self) -> Any:  # where the workers start, once (persistent) or for each pass
        if self.num_workers == 0:
            return super()._get_iterator()
        context = self.multiprocessing_context
        with signals_held_for_new_processes(context.get_start_method() if context is not None else None):
            return super()._get_iterator()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    workers: int,
    batches: Sampler[list] | None = None,
    stops_gracefully: bool = False,
) -> DataLoader:
    """Decoding in low-priority worker processes, pinned memory for CUDA; workers stay alive across epochs.

    In order, batch_size at a time, unless batches (lists of keys) are given: training's are
    utils.sampling.EpochBatches. stops_gracefully: the main process stops after a SIGTERM itself (training),
    so its workers leave the signal to it."""
    return WorkerLoader(
        dataset,
        stops_gracefully=stops_gracefully,
        batch_size=batch_size if batches is None else 1,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=False,
        collate_fn=collate_skipping,
    )
