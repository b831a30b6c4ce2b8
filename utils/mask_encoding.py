"""Mask values <-> class indices, one mapping used by train, evaluate and predict.

`mask_values` is the sorted list of distinct values found in the masks (by utils.check_data): scalars
(0, 255, palette indices, labels) for single-channel masks, [r, g, b] lists for colour-coded masks.
Class i is the pixel value mask_values[i]; IGNORE_CLASS marks pixels left out of loss and scores.
"""

import argparse
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, count, product
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError, check_flag

MaskValue = int | list[int]
IGNORE_CLASS = -1
MAX_CLASSES = 2**16  # label masks 0 to 65535: what a 16-bit mask image holds
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jfif")  # lossy: a JPEG mask holds values made up along its edges


def is_colour(mask_values: Sequence[MaskValue]) -> bool:
    return bool(mask_values) and isinstance(mask_values[0], list)


def value_counts(mask: np.ndarray) -> tuple[list[MaskValue], list[int]]:
    """Sorted distinct values of one decoded mask (HxW scalars or HxWx3 colours) and their pixel counts."""
    if mask.ndim == 3:
        values, counts = np.unique(pack_colours(mask), return_counts=True)
        return [unpack_colour(int(v)) for v in values], [int(c) for c in counts]
    if mask.dtype in (np.bool_, np.uint8, np.uint16):
        histogram = np.bincount(mask.ravel().astype(np.int64, copy=False))  # far faster than np.unique here
        present = np.flatnonzero(histogram)
        return [int(v) for v in present], [int(histogram[v]) for v in present]
    values, counts = np.unique(mask, return_counts=True)
    if not np.all(values == np.round(values)):
        raise UserError("mask holds non-integer values: save class labels as integers")
    return [int(v) for v in values], [int(c) for c in counts]


def distinct_values(mask: np.ndarray) -> list[MaskValue]:
    return value_counts(mask)[0]


def pack_colours(mask: np.ndarray) -> np.ndarray:
    rgb = mask[..., :3].astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def unpack_colour(packed: int) -> list[int]:
    return [(packed >> 16) & 255, (packed >> 8) & 255, packed & 255]


def merge_values(values_by_file: dict[str, list[MaskValue]], folder: Path) -> list[MaskValue]:
    """The sorted union of every file's values; scalar and colour masks must not be mixed."""
    scalars: set[int] = set()
    colours: set[tuple[int, ...]] = set()
    kinds: dict[str, str] = {}
    for name, values in values_by_file.items():
        for value in values:
            if isinstance(value, list):
                colours.add(tuple(value))
                kinds.setdefault("colour", name)
            else:
                scalars.add(value)
                kinds.setdefault("scalar", name)
    if scalars and colours:
        raise UserError(
            f"masks in {folder} mix single-channel ({kinds['scalar']}) and RGB colour ({kinds['colour']}) "
            "encodings: save all masks the same way"
        )
    if colours:
        return [list(c) for c in sorted(colours)]
    return sorted(scalars)


def check_classes(mask_values: Sequence[MaskValue], n_classes: int) -> None:
    """Fail before training, not with a device-side assert, when the classes cannot hold the values."""
    if n_classes == 1:
        if len(mask_values) > 2:
            raise UserError(
                f"--classes 1 is for binary masks, but the masks hold {len(mask_values)} values "
                f"{short_values(mask_values)}: use --classes {len(mask_values)}"
            )
    elif len(mask_values) > n_classes:
        raise UserError(
            f"the masks hold {len(mask_values)} distinct values {short_values(mask_values)} but --classes is "
            f"{n_classes}: use --classes {len(mask_values)}"
        )


def complete_mask_values(mask_values: Sequence[MaskValue], n_classes: int, avoid: int | None = None
                         ) -> list[MaskValue]:
    """A value for every class the model predicts: a model trained with more --classes than its masks hold values
    writes each extra class as the smallest label (or a colour) the masks do not use, rather than failing on it.
    avoid: the --ignore-index value, which must not come to mean a class."""
    values = list(mask_values)
    if is_colour(values):
        alpha = [255] * (len(values[0]) - 3)  # RGBA colours stay opaque
        candidates: Iterable[MaskValue] = ([*colour, *alpha] for colour in unused_colours(v[:3] for v in values))
    else:
        taken = {*values, avoid}  # a set: --classes 65536 over a few values looks through 65536 labels
        candidates = (label for label in count() if label not in taken)
    for candidate in candidates:
        if len(values) >= max(n_classes, 2):
            break
        values.append(candidate)
    return values


def unused_colours(used: Iterable[Sequence[int]]) -> Iterator[list[int]]:
    """RGB colours not among used, well apart first (channels of 0 and 255, then 128 too, then 64 and 192), then
    any other."""
    taken = {tuple(colour) for colour in used}
    levels = ((0, 255), (0, 255, 128), (0, 255, 128, 64, 192))
    well_apart = (colour for channels in levels for colour in product(channels, repeat=3))
    for colour in chain(well_apart, (tuple(unpack_colour(p)) for p in count())):
        if colour not in taken:
            taken.add(colour)
            yield list(colour)


def full_palette(palette: Sequence[int], mask_values: Sequence[MaskValue]) -> list[int]:
    """The palette written with palette masks: 256 entries, since Pillow writes a PNG with a shorter one at 1, 2 or
    4 bits per pixel, which cuts larger class indices; and a colour of its own for each class, where the masks'
    palette has no entry for its index or shows it in an earlier class's colour (an extra --classes)."""
    given = len(palette) // 3
    entries = [tuple(palette[3 * i: 3 * i + 3]) for i in range(min(given, 256))] + [(0, 0, 0)] * (256 - given)
    labels = [int(value) for value in mask_values if not isinstance(value, list) and 0 <= value < 256]
    fresh = unused_colours(entries[value] for value in labels if value < given)
    shown: set[tuple[int, ...]] = set()
    for value in labels:
        if value >= given or entries[value] in shown:
            entries[value] = tuple(next(fresh))
        shown.add(entries[value])
    return [channel for entry in entries for channel in entry]


def short_values(values: Sequence[MaskValue]) -> str:
    """The first eight values, as messages show them: [0, 127, 255]."""
    shown = ", ".join(str(v) for v in values[:8])
    return f"[{shown}{', ...' if len(values) > 8 else ''}]"


def add_binarize_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--binarize [T], the same in every script that reads masks for training."""
    parser.add_argument("--binarize", nargs="?", type=int, const=0, default=None, metavar="T",
                        help="mask values above T are foreground (1), the others background (0): instance labels, "
                             "0/255 masks; T is 0 (any nonzero value) when omitted. JPEG masks need a T between "
                             "their two values, e.g. 127, since compression blurs their edges")


def check_binarize_flag(threshold: int | None) -> None:
    """--binarize's range, the same in every script that takes it."""
    check_flag("--binarize", threshold, threshold is None or threshold >= 0, "0 or more")


def check_classes_flag(classes: int | None) -> None:
    """--classes' range, the same in train.py and the data check."""
    check_flag("--classes", classes, classes is None or 1 <= classes <= MAX_CLASSES,
               f"a whole number from 1 to {MAX_CLASSES}")


def binarize_threshold(setting: bool | int | None) -> int | None:
    """The --binarize threshold from a setting as stored in a checkpoint's args: None (or False) for no
    binarization; True, from checkpoints written before --binarize took a value, meant any nonzero value (0)."""
    if setting is None or setting is False:
        return None
    return 0 if setting is True else int(setting)


def binarize(values: np.ndarray, threshold: int, colour: bool) -> np.ndarray:
    """Foreground (1) where a value (any channel of a colour) is above threshold, else background (0)."""
    above = values > threshold
    return (above.any(axis=-1) if colour else above).astype(np.int64)


def encode_mask(
    mask: np.ndarray,
    mask_values: Sequence[MaskValue],
    source: Path | str,
    binarize_above: int | None = None,
    ignore_value: int | None = None,
    either_binary: bool = False,
) -> np.ndarray:
    """Pixel values -> class indices (int64), IGNORE_CLASS where the value is ignore_value.

    binarize_above: values above it (instance labels, 0/255, colours) are foreground (class value 1); None keeps
    the values. either_binary: for a model's binary values, a mask saved the other common way reads as the same
    (evaluation; training takes its values from its own masks). A value outside mask_values is an error naming
    the file.
    """
    if len(mask_values) == 0:
        raise UserError(f"no mask values known to encode {source}")
    ignored = (mask == ignore_value) if ignore_value is not None and mask.ndim == 2 else None
    if binarize_above is not None:
        mask = binarize(mask, binarize_above, mask.ndim == 3)
    elif either_binary and mask.ndim == 2:
        mask = _in_binary_values(mask, mask_values, ignore_value)
    colour = is_colour(mask_values)
    if colour != (mask.ndim == 3):
        kind, trained = ("an RGB colour", "single-channel") if mask.ndim == 3 else ("a single-channel", "RGB colour")
        raise UserError(f"{source} is {kind} mask, but the model was trained on {trained} masks (classes "
                        f"{short_values(mask_values)}): score it on masks saved the way its training masks were")
    table = np.array([pack_colours(np.array(v)) for v in mask_values] if colour else mask_values, dtype=np.int64)
    pixels = pack_colours(mask) if colour else mask.astype(np.int64)
    order = np.argsort(table, kind="stable")  # checkpoints from elsewhere may list values unsorted
    positions = np.searchsorted(table[order], pixels).clip(0, len(table) - 1)
    indices = order[positions]
    unknown = table[indices] != pixels
    if ignored is not None:
        unknown &= ~ignored
        indices[ignored] = IGNORE_CLASS
    if unknown.any():
        bad = pixels[unknown][0]
        value = unpack_colour(int(bad)) if colour else int(bad)
        suffix = Path(str(source)).suffix.lower()
        fix = ("it is a JPEG file, whose lossy compression makes up values along edges: save the masks as PNG "
               "(lossless)" if suffix in JPEG_SUFFIXES
               else "if it was saved as lossy WebP (Pillow's default), its compression made up values along edges: "
               "save the masks as PNG (lossless)" if suffix == ".webp"
               else "fix the mask or train with it included")
        raise UserError(f"{source} has the value {value}, which is not among the mask values "
                        f"{short_values(mask_values)} the model knows: {fix}")
    return indices


def _in_binary_values(mask: np.ndarray, mask_values: Sequence[MaskValue], ignore_value: int | None) -> np.ndarray:
    """A binary mask saved the other common way (0/255 for a model of 0/1, or 0/1 for one of 0/255) in the model's
    values: predict.py writes 0/1 models' masks as 0/255, and reference checkpoints without mask_values are taken
    as 0/1, so either encoding of object and background is read as the object and the background."""
    if len(mask_values) != 2 or is_colour(mask_values) or {int(v) for v in mask_values} not in ({0, 1}, {0, 255}):
        return mask
    foreground = int(max(mask_values))
    other = 1 if foreground == 255 else 255
    if other == ignore_value or not (mask == other).any() or (mask == foreground).any():
        return mask
    return np.where(mask == other, foreground, mask)


def unwritable_values(mask_values: Sequence[MaskValue]) -> list[int]:
    """Label values no 8- or 16-bit mask image holds (negative, above 65535): predict.py could not write them."""
    return [] if is_colour(mask_values) else [int(v) for v in mask_values if not 0 <= v < MAX_CLASSES]


def written_as_0_255(mask_values: Sequence[MaskValue], ignore_value: int | None = None) -> bool:
    """Whether 0/1 masks are written 0/255, to be visible: not where 255 is the masks' "not labelled"."""
    return not is_colour(mask_values) and set(mask_values) <= {0, 1} and ignore_value != 255


def encoding_table(mask_values: Sequence[MaskValue], ignore_value: int | None = None) -> np.ndarray:
    """Class index -> the pixel value written for it: table[class_indices] is the mask in the training encoding.

    Colour masks get their colours back ((classes, 3) uint8), label and palette masks their values (uint8, or
    uint16 above 255); binary 0/1 masks are written 0/255 so that they are visible, unless training ignored 255
    (ignore_value: the masks' own "not labelled", which objects must not be written as). A lookup table, so that
    predict.py can apply it on the GPU and its writer threads only wrap and compress the result.
    """
    if is_colour(mask_values):
        return np.array(mask_values, dtype=np.uint8)
    values = np.array(mask_values, dtype=np.int64)
    if outside := unwritable_values(mask_values):
        raise UserError(f"the model's mask values {short_values(mask_values)} include {outside[0]}, which no 8- or "
                        "16-bit mask image can hold: train on masks with labels from 0 to 65535 to predict mask files")
    if written_as_0_255(mask_values, ignore_value):
        return (values * 255).astype(np.uint8)
    return values.astype(np.uint8 if values.max(initial=0) <= 255 else np.uint16)


def mask_image(encoded: np.ndarray, mask_values: Sequence[MaskValue], palette: Sequence[int] | None = None,
               ignore_value: int | None = None) -> Image.Image:
    """An encoded mask (encoding_table applied, with this ignore_value) as an image; palette masks keep their
    palette, 0/1 ones too where they stay 0/1 (255 ignored, as in VOC's masks of one class and a void border)."""
    if palette and encoded.ndim == 2 and encoded.dtype == np.uint8 and not written_as_0_255(mask_values,
                                                                                             ignore_value):
        image = Image.fromarray(encoded, mode="P")
        image.putpalette(full_palette(palette, mask_values))
        return image
    return Image.fromarray(encoded)


def decode_mask(class_indices: np.ndarray, mask_values: Sequence[MaskValue], palette: Sequence[int] | None = None,
                ignore_value: int | None = None) -> Image.Image:
    """Class indices -> an image in the training masks' encoding (see encoding_table)."""
    return mask_image(encoding_table(mask_values, ignore_value)[class_indices], mask_values, palette, ignore_value)
