"""Mask values <-> class indices: scanned once (cached next to the data), used by train, evaluate and predict.

`mask_values` is the sorted list of distinct values found in the masks: scalars (0, 255, ...) for
single-channel masks, [r, g, b] lists for colour-coded masks. Class i is the pixel value mask_values[i].
"""

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError

CACHE_NAME = ".mask_values_cache.json"
CACHE_VERSION = 1
MaskValue = int | list[int]


def distinct_values(mask: np.ndarray) -> list[MaskValue]:
    """Sorted distinct values of one decoded mask (HxW scalars or HxWx3 colours)."""
    if mask.ndim == 3:
        packed = pack_colours(mask)
        return [unpack_colour(int(v)) for v in np.unique(packed)]
    if mask.dtype in (np.bool_, np.uint8, np.uint16):
        counts = np.bincount(mask.ravel().astype(np.int64, copy=False))  # far faster than np.unique here
        return [int(v) for v in np.flatnonzero(counts)]
    values = np.unique(mask)
    if not np.all(values == np.round(values)):
        raise UserError("mask holds non-integer values: save class labels as integers")
    return [int(v) for v in values]


def pack_colours(mask: np.ndarray) -> np.ndarray:
    rgb = mask[..., :3].astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def unpack_colour(packed: int) -> list[int]:
    return [(packed >> 16) & 255, (packed >> 8) & 255, packed & 255]


def _scan_one(path: str) -> list[MaskValue]:
    from .data_loading import read_mask  # late import: data_loading imports this module

    return distinct_values(read_mask(Path(path)))


def _file_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def scan_mask_values(mask_paths: Sequence[Path], workers: int | None = None) -> list[MaskValue]:
    """Union of the distinct values of all masks, read in parallel once and cached beside the masks.

    The cache holds one entry per file keyed by size and mtime, so editing or adding a mask rescans
    only that file.
    """
    if not mask_paths:
        return []
    cache_file = Path(mask_paths[0]).parent / CACHE_NAME
    cached = _read_cache(cache_file)
    entries: dict[str, dict] = {}
    stale: list[Path] = []
    for path in mask_paths:
        key = _file_key(path)
        entry = cached.get(path.name)
        if entry is not None and entry.get("key") == key:
            entries[path.name] = entry
        else:
            entries[path.name] = {"key": key}
            stale.append(path)
    if stale:
        workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        if workers > 1 and len(stale) >= 32:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                scanned = list(pool.map(_scan_one, [str(p) for p in stale], chunksize=8))
        else:
            scanned = [_scan_one(str(p)) for p in stale]
        for path, values in zip(stale, scanned):
            entries[path.name]["values"] = values
        _write_cache(cache_file, {**cached, **entries})
    return merge_values(entries, cache_file.parent)


def merge_values(entries: dict[str, dict], folder: Path) -> list[MaskValue]:
    scalars: set[int] = set()
    colours: set[tuple[int, ...]] = set()
    kinds: dict[str, str] = {}
    for name, entry in entries.items():
        for value in entry["values"]:
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


def _read_cache(cache_file: Path) -> dict:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    return data.get("files", {})


def _write_cache(cache_file: Path, files: dict) -> None:
    # Read-only data folders are fine: the scan is simply redone next time.
    tmp = cache_file.with_name(f"{CACHE_NAME}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": files}))
        os.replace(tmp, cache_file)
    except OSError:
        tmp.unlink(missing_ok=True)


def check_classes(mask_values: Sequence[MaskValue], n_classes: int) -> None:
    """Fail before training, not with a device-side assert, when the classes cannot hold the values."""
    if n_classes == 1:
        if len(mask_values) > 2:
            raise UserError(
                f"--classes 1 is for binary masks, but the masks hold {len(mask_values)} values "
                f"{_short(mask_values)}: use --classes {len(mask_values)}"
            )
    elif len(mask_values) > n_classes:
        raise UserError(
            f"the masks hold {len(mask_values)} distinct values {_short(mask_values)} but --classes is "
            f"{n_classes}: use --classes {len(mask_values)}"
        )


def _short(values: Sequence[MaskValue]) -> str:
    shown = ", ".join(str(v) for v in values[:8])
    return f"[{shown}{', ...' if len(values) > 8 else ''}]"


def encode_mask(mask: np.ndarray, mask_values: Sequence[MaskValue], source: Path | str) -> np.ndarray:
    """Pixel values -> class indices (int64); a value outside mask_values is an error naming the file."""
    if len(mask_values) == 0:
        raise UserError(f"no mask values known to encode {source}")
    colour = isinstance(mask_values[0], list)
    if colour != (mask.ndim == 3):
        kind = "RGB colour" if mask.ndim == 3 else "single-channel"
        raise UserError(f"{source} is a {kind} mask, unlike the masks the model was trained on")
    table = np.array([pack_colours(np.array(v)) for v in mask_values] if colour else mask_values, dtype=np.int64)
    pixels = pack_colours(mask) if colour else mask.astype(np.int64)
    order = np.argsort(table, kind="stable")  # checkpoints from elsewhere may list values unsorted
    positions = np.searchsorted(table[order], pixels).clip(0, len(table) - 1)
    indices = order[positions]
    unknown = table[indices] != pixels
    if unknown.any():
        bad = pixels[unknown][0]
        value = unpack_colour(int(bad)) if colour else int(bad)
        raise UserError(
            f"{source} has the value {value}, which is not among the mask values {_short(mask_values)} "
            "the model knows: fix the mask or train with it included"
        )
    return indices


def decode_mask(class_indices: np.ndarray, mask_values: Sequence[MaskValue]) -> Image.Image:
    """Class indices -> an image in the training masks' encoding (binary 0/1 masks are written 0/255)."""
    if mask_values and isinstance(mask_values[0], list):
        colours = np.array(mask_values, dtype=np.uint8)
        return Image.fromarray(colours[class_indices])
    values = np.array(mask_values, dtype=np.int64)
    if set(mask_values) <= {0, 1}:
        values = values * 255  # visible, and what users expect from a binary mask file
    if values.max(initial=0) <= 255:
        return Image.fromarray(values[class_indices].astype(np.uint8))
    return Image.fromarray(values[class_indices].astype(np.uint16))
