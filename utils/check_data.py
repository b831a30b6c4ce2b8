"""The data check: what an image/mask folder pair holds, and what is wrong with it, before training starts.

    python -m utils.check_data --imgs data/imgs --masks data/masks

Every file is decoded once, in parallel, and what was learnt (size, channels, mask encoding, values and pixel
counts, or why it is unreadable) is cached in the masks folder, keyed by each file's size and mtime: a second
check, and every training start after it, decodes no file. train.py runs the same check and prints the same report.
"""

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

if not __package__:  # run as a file (python utils/check_data.py), where its imports of the package fail
    sys.stderr.write("error: run it as a module, from the repository's folder: python -m utils.check_data (see -h)\n")
    raise SystemExit(2)  # as every other one-line error

from unet import MIN_SIDE

from .atomic_files import atomic_path
from .data_loading import (
    SIZE_MISMATCH_FIX,
    TIFF_BANDS_FIX,
    TURNED_IMAGE_FIX,
    TURNED_MASK_FIX,
    UPRIGHT_FIX,
    Pair,
    PixelLimitError,
    add_image_limit_argument,
    check_workers_flag,
    file_orientation,
    image_pixel_limit,
    open_image,
    pair_files,
    read_image_data,
    read_mask,
    size_mismatch,
    unread_bands,
    unread_format_note,
)
from .errors import UserError, counted, run_cli
from .mask_encoding import (
    MaskValue,
    add_binarize_argument,
    binarize,
    binarize_threshold,
    check_binarize_flag,
    check_classes,
    check_classes_flag,
    is_colour,
    merge_values,
    pack_colours,
    short_values,
    unwritable_values,
    value_counts,
)
from .signals import signals_held_for_new_processes, take_held_signals

CACHE_NAME = ".unet_check_cache.json"
CACHE_VERSION = 11  # 3: misnamed files and files over --max-image-pixels are unreadable; 4: JPEG masks noted;
# 5: EXIF orientation of images noted; 6: interior pixels of each mask value; 7: EXIF orientation of masks noted;
# 8: RGBA images counted as 4 bands, and whether the fourth varies; 9: int16 and float masks named as such;
# 10: entries of files outside the cache's folder (images) keyed by absolute path, and dropped once gone; label
# masks named by their type and values; 11: lossy WebP masks noted as JPEG ones are, and TIFFs whose fourth band
# Pillow drops

# a pair's fix (data_loading.size_mismatch) as said of all the mismatched pairs
FIXES_OF_ALL = {TURNED_IMAGE_FIX: f"the masks were drawn on the images as viewers show them: {UPRIGHT_FIX}",
                TURNED_MASK_FIX: "the masks are stored turned and shown upright by viewers: save them upright, e.g. "
                                 "with PIL.ImageOps.exif_transpose"}
RARE_CLASS_FRACTION = 0.01
INSTANCE_LABELS_FIX = "look like instance labels (one value per object): pass --binarize to train foreground vs " \
    "background"
INSTANCE_LABEL_HINT = 16  # more distinct values than this in label masks usually means one value per object
# Mask values made up by resizing with interpolation, lossy saving or noise: each under STRAY_FRACTION of the
# pixels, at least twice as many as the values that cover more, and under STRAY_INTERIOR of their pixels inside a
# region of their own value (thin bands along edges, isolated pixels). Objects of one value each (instance labels)
# are mostly interior: a disc of radius 2 already has 5 of 13 pixels. Together over STRAY_TOTAL, under
# STRAY_BANDS_INTERIOR: the edge bands of small masks cover more (8.9% of 32x32 tiles of resized discs, 0% of them
# inside), and so may many tiny objects (40 of 3x3 pixels on 64x64 images: 8.8%, 11% inside). Without interior
# counts, under STRAY_TOTAL alone.
STRAY_FRACTION = 0.005
STRAY_TOTAL = 0.05
STRAY_INTERIOR = 0.2
STRAY_BANDS_INTERIOR = 0.02
# 255 as VOC's and Cityscapes' "void": the other labels all at most VOID_APART, and under VOID_INTERIOR of its
# pixels inside a region of it (a border a few pixels wide; a class's regions are mostly interior, though a class
# of specks is not, hence a hint with "if").
VOID_LABEL, VOID_APART, VOID_INTERIOR = 255, 127, 0.8
BINARY_OBJECT_VALUES = (1, 255, 65535)  # a binary mask's object: 0/1 (or bool), 8-bit and 16-bit full scale
NUMBER_WORDS = {2: "two", 3: "three"}
GRAY_TINGE = 8  # a lossy file's gray pixels may differ this much between channels (WebP's subsampled colour)
WEBP_CHUNKS_READ = 8  # the image's chunk comes after at most a few others (VP8X, ICCP, ALPH)
ORPHAN_CHECK_SECONDS = 1.0  # how often a scan worker checks that the process it works for is still there
RECORD_KEYS = {"image": {"width", "height", "channels", "mode"},  # what a cached record must hold to be used
               "mask": {"width", "height", "values", "counts", "interior", "encoding"}}
INTERIOR_BLOCK_ROWS = 512  # rows per block when counting interior pixels: bounded memory on very large masks


def inspect_image(path: Path) -> dict[str, Any]:
    """Decode the whole file (a truncated JPEG fails only when decoded) and note its size and channels."""
    array, mode = read_image_data(path)
    record = {"width": int(array.shape[1]), "height": int(array.shape[0]), "channels": int(array.shape[2]),
              "mode": mode, "orientation": file_orientation(path)}
    if array.shape[2] == 4:  # opaque alpha carries nothing; transparency or a band such as near-infrared does
        record["fourth_band_varies"] = bool(array[..., 3].min() != array[..., 3].max())
    return record


def interior_counts(mask: np.ndarray, values: list[MaskValue]) -> list[int]:
    """Per value (as value_counts lists them): its pixels whose four neighbours hold the same value. Classes and
    objects are mostly interior; values made up along edges by interpolation, or by noise, hardly ever are."""
    keys = pack_colours(mask) if mask.ndim == 3 else mask
    found: Counter = Counter()
    for top in range(1, keys.shape[0] - 1, INTERIOR_BLOCK_ROWS):
        bottom = min(top + INTERIOR_BLOCK_ROWS, keys.shape[0] - 1)
        core = keys[top:bottom, 1:-1]
        same = ((core == keys[top - 1:bottom - 1, 1:-1]) & (core == keys[top + 1:bottom + 1, 1:-1])
                & (core == keys[top:bottom, :-2]) & (core == keys[top:bottom, 2:]))
        inside, counts = value_counts(core[same]) if mask.ndim == 2 else np.unique(core[same], return_counts=True)
        found.update(dict(zip((int(v) for v in inside), (int(c) for c in counts))))
    return [found.get(int(pack_colours(np.array(value))) if mask.ndim == 3 else value, 0) for value in values]


def inspect_mask(path: Path) -> dict[str, Any]:
    mask = read_mask(path)
    values, counts = value_counts(mask)
    record: dict[str, Any] = {"width": int(mask.shape[1]), "height": int(mask.shape[0]),
                              "values": values, "counts": counts, "interior": interior_counts(mask, values)}
    mode, palette = None, None
    if path.suffix.lower() not in (".npy", ".pt"):
        with open_image(path) as header:  # header only: the pixels were decoded by read_mask
            mode = header.mode
            palette = header.getpalette() if mode == "P" else None
            record["lossy"] = lossy_format(path, header.format)  # edges blur into in-between values
        record["orientation"] = file_orientation(path)
    if mode == "P":
        record["encoding"] = "palette"
        record["palette"] = list(palette or [])[: 3 * 256]
    elif mask.ndim == 3:
        record["encoding"] = "colour"
    elif mask.dtype.kind == "f":
        record["encoding"] = "float labels"
    elif mask.dtype.itemsize == 1:
        record["encoding"] = "8-bit labels"
    elif mask.dtype.itemsize == 2 or _fits_16_bits(values):
        record["encoding"] = "16-bit labels"  # also a signed 16-bit TIFF, which Pillow reads as 32-bit "I"
    else:
        record["encoding"] = f"{mask.dtype.itemsize * 8}-bit labels"
    return record


def lossy_format(path: Path, image_format: str | None) -> str | None:
    """"JPEG", or "lossy WebP" for a WebP file holding a VP8 stream (Pillow's default when saving WebP) rather than
    a lossless VP8L one; None for lossless formats. Either makes up values along a mask's edges."""
    if image_format in ("JPEG", "MPO"):
        return "JPEG"
    if image_format != "WEBP":
        return None
    with open(path, "rb") as file:  # RIFF chunks from offset 12: the extended header, ICC, alpha, then the image
        file.seek(12)
        for _ in range(WEBP_CHUNKS_READ):
            header = file.read(8)
            if len(header) < 8:
                return None
            if header[:4] in (b"VP8 ", b"VP8L"):
                return "lossy WebP" if header[:4] == b"VP8 " else None
            size = int.from_bytes(header[4:], "little")
            # an animation's first frame: its image's chunks follow the frame's 16-byte header
            file.seek(16 if header[:4] == b"ANMF" else size + size % 2, os.SEEK_CUR)
    return None


def _fits_16_bits(values: list[int]) -> bool:
    """Labels a signed or an unsigned 16-bit type holds (values sorted, as value_counts gives them)."""
    return not values or -2**15 <= values[0] and values[-1] < 2**15 or 0 <= values[0] and values[-1] < 2**16


def _inspect_one(kind: str, path: str) -> dict[str, Any]:
    """A record for one file, or {"error": reason}: an unreadable file is a finding, not a crash."""
    try:
        return (inspect_mask if kind == "mask" else inspect_image)(Path(path))
    except UserError as error:
        message = str(error)
        record = {"error": message if Path(path).name in message else f"{path}: {message}"}
        if isinstance(error, PixelLimitError):
            record["pixel_limit"] = Image.MAX_IMAGE_PIXELS  # the verdict changes with --max-image-pixels
        return record


def _verdict_holds(record: Any, kind: str) -> bool:
    """A cached record of an unchanged file still applies under the current --max-image-pixels (and is whole: a
    cache edited or written by other code is scanned again, not a traceback)."""
    if not isinstance(record, dict) or not ("error" in record or RECORD_KEYS[kind] <= record.keys()):
        return False
    limit = Image.MAX_IMAGE_PIXELS
    if "error" in record:
        return record.get("pixel_limit", limit) == limit
    return limit is None or record["width"] * record["height"] <= limit


def inspect_files(
    paths: Sequence[Path], kind: str, workers: int | None = None, cache_dir: Path | None = None
) -> list[dict[str, Any]]:
    """inspect_image/inspect_mask for every path, from the cache where the file is unchanged.

    The cache lives in cache_dir (default: the first file's folder; check_dataset keeps images' and masks'
    entries in the masks folder, leaving the image folder as it was).
    """
    if not paths:
        return []
    cache_file = Path(cache_dir or paths[0].parent) / CACHE_NAME
    cache = _read_cache(cache_file)
    records, changed = _inspect_with_cache(paths, kind, workers, cache, cache_file.parent)
    if changed:
        _write_cache(cache_file, cache)
    return records


def _cache_key(kind: str, path: Path, folder: Path) -> str:
    """Files beside the cache by name (it moves with its folder); others (images, whose entries are kept with
    the masks) by absolute path, so that image folders sharing a mask folder keep their own entries."""
    return f"{kind}:{path.name}" if path.parent == folder else f"{kind}:{os.path.abspath(path)}"  # without ..


def _inspect_with_cache(paths: Sequence[Path], kind: str, workers: int | None, cache: dict[str, Any],
                        folder: Path) -> tuple[list[dict[str, Any]], bool]:
    """inspect_files' work on a cache read by the caller: the records, and whether the cache changed (files
    scanned, or entries of files gone from the folder dropped, so that renames do not grow it without end)."""
    if not paths:
        return [], False
    records: list[dict[str, Any] | None] = [None] * len(paths)
    stale: list[int] = []
    for index, path in enumerate(paths):
        try:
            stat = path.stat()
            key = [stat.st_size, stat.st_mtime_ns]
        except OSError:  # a broken link, or a file gone since the listing: inspected (and reported) each time
            key = None
        entry = cache.get(_cache_key(kind, path, folder))
        entry = entry if isinstance(entry, dict) else {}
        if key is not None and entry.get("key") == key and _verdict_holds(entry.get("record"), kind):
            records[index] = entry["record"]
        else:
            stale.append(index)
            cache[_cache_key(kind, path, folder)] = {"key": key}
    if stale:
        workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        kinds, names = [kind] * len(stale), [str(paths[i]) for i in stale]
        if workers > 1 and len(stale) >= 16:
            # The limit is handed over, not inherited: under spawn or forkserver a worker imports Pillow afresh.
            with ProcessPoolExecutor(max_workers=min(workers, len(stale)), initializer=_start_scan_worker,
                                     initargs=(Image.MAX_IMAGE_PIXELS, os.getpid())) as pool:
                with signals_held_for_new_processes():  # map submits every chunk at once: the workers start here
                    results = pool.map(_inspect_one, kinds, names, chunksize=8)
                try:
                    scanned = list(results)
                except KeyboardInterrupt:  # the files not yet scanned are dropped, not scanned before stopping
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        else:
            scanned = [_inspect_one(k, n) for k, n in zip(kinds, names)]
        for index, record in zip(stale, scanned):
            records[index] = record
            cache[_cache_key(kind, paths[index], folder)]["record"] = record
    listed, prefix = {_cache_key(kind, path, folder) for path in paths}, f"{kind}:"
    gone = [key for key in cache if key.startswith(prefix) and key not in listed
            and not (folder / key[len(prefix):]).exists()]  # an absolute path stays itself under folder /
    for key in gone:
        del cache[key]
    return records, bool(stale or gone)  # type: ignore[return-value]


def _start_scan_worker(pixel_limit: int | None, owner: int) -> None:
    """A scanning process: Pillow's limit as the main process has it (None too: a program's "no limit"); a
    Ctrl-C is the main process's to act on; it ends with the main process, also one killed outright (SIGKILL, the
    out-of-memory killer), which would otherwise leave it waiting for work for good (a review found them hours
    later, 300-400 MB each). owner: the main process's pid."""
    Image.MAX_IMAGE_PIXELS = pixel_limit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    take_held_signals()
    threading.Thread(target=_end_when_orphaned, args=(owner,), daemon=True, name="orphan-watch").start()


def _end_when_orphaned(owner: int) -> None:
    """Exit once the owner is gone. A forked worker is its child, and is handed to another parent when it dies; one
    started by forkserver is the server's child (which outlives the owner), and one by spawn may start after the
    owner died: those look for the owner's pid itself (found by a code review: forkserver's never ended)."""
    forked = os.getppid() == owner
    while not _owner_gone(owner, forked):
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(1)


def _owner_gone(owner: int, forked: bool) -> bool:
    return os.getppid() != owner if forked else not _exists(owner)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: whether the process is there
    except ProcessLookupError:
        return False
    except PermissionError:  # there, another user's (the pid taken again)
        return True
    return True


def _read_cache(cache_file: Path) -> dict:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _write_cache(cache_file: Path, files: dict) -> None:
    # A read-only data folder is fine: the check is simply redone next time.
    with contextlib.suppress(OSError), atomic_path(cache_file) as tmp:
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": files}))


def scan_mask_values(mask_paths: Sequence[Path], workers: int | None = None) -> list[MaskValue]:
    """The sorted distinct values of all masks (the class list), through the cached inspection."""
    records = inspect_files(list(mask_paths), "mask", workers)
    for record in records:
        if "error" in record:
            raise UserError(record["error"])
    return merge_values({path.name: record["values"] for path, record in zip(mask_paths, records)},
                        Path(mask_paths[0]).parent if mask_paths else Path("."))


@dataclass
class DataCheck:
    """What check_dataset found; `pairs` are the usable ones (readable, image and mask of one size)."""

    imgs: Path
    masks: Path
    mask_suffix: str
    pairs: list[Pair]
    mask_values: list[MaskValue]
    class_pixels: list[int]
    binarize: int | None = None  # values above it are foreground
    ignore_value: int | None = None
    lonely_images: list[str] = field(default_factory=list)
    lonely_masks: list[str] = field(default_factory=list)
    unread_formats: list[Path] = field(default_factory=list)  # HEIC, JPEG 2000, ...: named, not read
    unreadable: list[str] = field(default_factory=list)  # one message per file, naming it
    size_mismatches: list[str] = field(default_factory=list)
    size_mismatch_fixes: list[str] = field(default_factory=list)  # one per mismatch: EXIF orientation explains some
    exif_turned: list[str] = field(default_factory=list)  # images with an EXIF orientation other than upright
    exif_turned_masks: list[str] = field(default_factory=list)  # masks with one
    empty_masks: list[str] = field(default_factory=list)
    ignored_masks: list[str] = field(default_factory=list)  # every pixel of --ignore-index: nothing to learn or score
    blurred_masks: list[str] = field(default_factory=list)  # JPEG or lossy WebP masks with more than two values
    blurred_top: int = 0  # the largest value (or colour channel) in them, before --binarize
    blurred_formats: list[str] = field(default_factory=list)  # "JPEG", "lossy WebP"
    blurred_levels: Counter = field(default_factory=Counter)  # pixels per gray level of those that are not colour
    blurred_colour: bool = False  # some blurred masks have colours, which no threshold sorts into classes
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # per usable pair's name: (width, height)
    channels: dict[str, int] = field(default_factory=dict)  # per usable pair's name: its image's bands (1, 3, 4)
    fourth_bands: list[str] = field(default_factory=list)  # images whose fourth band is not one value throughout
    unread_fourth_bands: list[str] = field(default_factory=list)  # TIFFs of 4 bands whose fourth Pillow drops
    encodings: Counter = field(default_factory=Counter)
    palette: list[int] | None = None
    palette_conflicts: list[str] = field(default_factory=list)  # an index shown as another colour than elsewhere
    mixed_binary: dict[int, list[str]] = field(default_factory=dict)  # {1: 0/1 masks, 255: 0/255 ones, ...}
    class_interior: list[int] = field(default_factory=list)  # per mask value: pixels inside a region of it
    ignored_pixels: int = 0  # of ignore_value, in all usable masks
    counts_by_mask: dict[str, Counter] = field(default_factory=dict)  # per usable mask's name: pixels per value

    @property
    def image_sizes(self) -> Counter:
        """(width, height) -> number of usable images of that size."""
        return Counter(self.sizes.values())

    @property
    def image_channels(self) -> Counter:
        """bands (1, 3, 4) -> number of usable images with that many."""
        return Counter(self.channels.values())

    def bands_error(self, channels: int, fix: str) -> str | None:
        """Why a model of 4 channels cannot read these images (some lack a fourth band); None when it can, and
        for models of 1 or 3 channels, which read any image. fix: the other way out (the model's channels may
        come from --load or --resume, where --channels cannot change them)."""
        lacking = [name for name, bands in self.channels.items() if bands != 4]
        if channels != 4 or not lacking:
            return None
        others = [name for name in lacking if name not in self.unread_fourth_bands]
        tiffs = (f"Pillow does not read the bands past three of {counted(len(self.unread_fourth_bands), 'TIFF image')} "
                 f"{_names(self.unread_fourth_bands)}: {TIFF_BANDS_FIX.replace('HxWxC', 'HxWx4')}, or as RGBA PNGs"
                 if self.unread_fourth_bands else "")
        fewer = (f"{len(others)} of the {len(self.channels)} images hold{'s' if len(others) == 1 else ''} fewer bands "
                 f"{_names(others)}: give every image its fourth band (RGBA PNG or TIFF, HxWx4 .npy), or {fix}"
                 if others else "")
        return "the model reads 4 channels, but " + "; and ".join(part for part in (tiffs, fewer) if part)

    @property
    def too_small(self) -> list[str]:
        """Images that no --scale lets the U-Net take (four halvings need MIN_SIDE px a side)."""
        return [name for name, (width, height) in self.sizes.items() if min(width, height) < MIN_SIDE]

    @property
    def problems(self) -> bool:
        """What train.py stops on (or skips files for) without --classes."""
        return self.problems_whatever_the_classes or bool(self.mixed_binary or self.stray_values)

    @property
    def problems_whatever_the_classes(self) -> bool:
        """What train.py stops on (or skips files for) even with --classes, which says that rare mask values and
        binary masks of two encodings are classes."""
        return bool(self.unreadable or self.size_mismatches or self.unresolved_lossy_masks or self.palette_conflicts
                    or self.too_small or self.one_value or self.unwritable_values)

    @property
    def instance_labels(self) -> bool:
        """Label masks of many values, read as classes: usually one value per object, each in one image."""
        return (self.binarize is None and len(self.mask_values) > INSTANCE_LABEL_HINT
                and not is_colour(self.mask_values))

    @property
    def one_value(self) -> bool:
        """Every mask holds one and the same value, as read (after --binarize, --ignore-index): all background, or
        all one object; the loss would teach one answer everywhere."""
        return len(self.mask_values) == 1

    @property
    def unwritable_values(self) -> list[int]:
        return unwritable_values(self.mask_values)

    def unwritable_values_error(self) -> str:
        """The one line train.py stops with: a model trained on them could not have its masks written."""
        value = self.unwritable_values[0]
        return (f"the masks hold the label {value}, which no mask file predict.py writes can hold (labels are 0 to "
                f"65535): if {value} marks pixels left unlabelled, pass --ignore-index {value}; otherwise relabel "
                "the masks from 0")

    def one_value_error(self) -> str:
        """The one line train.py stops with while one_value."""
        flags = [(flag, value) for flag, value in (("--binarize", self.binarize), ("--ignore-index", self.ignore_value))
                 if value is not None]
        given = " with " + " and ".join(f"{flag} {value}" for flag, value in flags) if flags else ""
        return (f"every mask in {self.masks} holds the one value {_short_value(self.mask_values[0])}{given}: there is "
                "nothing to tell apart; check the mask folder" + "".join(f", {flag}" for flag, _ in flags))

    def palette_conflict_error(self) -> str:
        return (f"palette masks number their colours differently: {self.palette_conflicts[0]}, so one index would "
                "be two classes; save the masks with one shared palette, or as RGB PNGs (each colour a class)")

    def mixed_binary_error(self) -> str:
        kinds = [f"{len(names)} with values 0/{value} (e.g. {names[0]})" for value, names in self.mixed_binary.items()]
        count = NUMBER_WORDS[len(kinds)]
        return (f"the masks mix {count} binary encodings, {and_joined(kinds)}, so the objects would be {count} "
                "classes: pass --binarize 0 (any nonzero value is the object)")

    def mixed_binary_classes_fix(self) -> str:
        """train.py's other way out: the object values are classes indeed."""
        count = len(self.mixed_binary)
        return (f"--classes {count + 1} if {and_joined([str(value) for value in self.mixed_binary])} are "
                f"{NUMBER_WORDS[count]} classes")

    @property
    def unresolved_lossy_masks(self) -> bool:
        """JPEG or lossy WebP masks whose compression made up values, and no --binarize T (T > 0) to sort them
        into two."""
        return bool(self.blurred_masks) and not (self.binarize or 0) > 0

    def size_mismatch_fix(self) -> str:
        """The fix of every mismatch where they share one (all explained by an EXIF orientation), else the plain one."""
        fixes = set(self.size_mismatch_fixes)
        if len(fixes) != 1:
            return SIZE_MISMATCH_FIX
        fix = fixes.pop()
        return FIXES_OF_ALL.get(fix, fix)

    def lossy_mask_fix(self) -> str:
        """Save as PNG, or a threshold halfway up the values found (0/255 masks: 127) where the masks look binary;
        no threshold for masks too faint (0/1 saved as JPEG) to tell the ringing from the objects, colour masks, or
        masks with many pixels far from both ends (a class in between, which a threshold would merge into one)."""
        top = self.blurred_top
        middle = sum(count for level, count in self.blurred_levels.items() if top / 8 < level < top * 7 / 8)
        if top < 16 or self.blurred_colour or middle >= STRAY_TOTAL * self.blurred_levels.total() > 0:
            return "save the masks as PNG (lossless)"
        return (f"save the masks as PNG (lossless), or pass --binarize {top // 2} (values above {top // 2} are "
                "foreground) if they show foreground on a dark background")

    def lossy_mask_error(self) -> str:
        """The one line train.py stops with while unresolved_lossy_masks."""
        return (f"{len(self.blurred_masks)} masks are {self.lossy_formats} files whose lossy compression blurred the "
                f"edges into in-between values, e.g. {self.blurred_masks[0]}: {self.lossy_mask_fix()}")

    @property
    def lossy_formats(self) -> str:
        return " and ".join(sorted(set(self.blurred_formats))) or "JPEG"

    @property
    def stray_values(self) -> list[MaskValue]:
        """Values that look made up rather than classes: bilinear-resized 0/255 masks hold ~150 values, a colour
        mask with a little noise dozens; each covers a sliver of the pixels, in thin bands or alone. Real rare
        classes are few beside the common ones, and instance labels (one value per object) fill regions of their
        own, however small and sparse (cells: 40 objects on 0.3% of the pixels) or many."""
        fractions = self.class_fractions
        rare = [i for i, fraction in enumerate(fractions) if fraction < STRAY_FRACTION]
        common = len(self.mask_values) - len(rare)
        if len(rare) < max(3, 2 * common):
            return []
        many = sum(fractions[i] for i in rare) >= STRAY_TOTAL
        if not self.class_interior:
            return [] if many else [self.mask_values[i] for i in rare]
        inside = sum(self.class_interior[i] for i in rare) / max(1, sum(self.class_pixels[i] for i in rare))
        if inside >= (STRAY_BANDS_INTERIOR if many else STRAY_INTERIOR):
            return []
        return [self.mask_values[i] for i in rare]

    def stray_values_fix(self) -> str:
        stray = self.stray_values
        common = [value for value in self.mask_values if value not in stray]
        fix = "re-save the masks with nearest-neighbour resizing and a lossless format (PNG)"
        if len(common) == 2 and not is_colour(self.mask_values) and self.binarize is None:
            middle = (int(common[0]) + int(common[1])) // 2
            fix += f", or pass --binarize {middle} (values above {middle} are foreground)"
        return fix + f"; if they are classes, pass --classes {len(self.mask_values)}"

    def stray_values_error(self) -> str:
        """The one line train.py stops with when stray_values and --classes is not given."""
        stray = self.stray_values
        share = sum(f for v, f in zip(self.mask_values, self.class_fractions) if v in stray)
        return (f"{len(stray)} of the {len(self.mask_values)} mask values {short_values(self.mask_values)} cover "
                f"{share:.2%} of the pixels together, each under {STRAY_FRACTION:.1%}: they look made up by resizing "
                f"with interpolation, lossy saving or noise, not classes: {self.stray_values_fix()}")

    def class_pixels_of(self, pairs: Sequence[Pair]) -> list[int]:
        """class_pixels over these pairs only: a training split's, so that held-out images set no class weight."""
        index = {_hashable(value): i for i, value in enumerate(self.mask_values)}
        totals = [0] * len(self.mask_values)
        for pair in pairs:
            for value, count in self.counts_by_mask.get(pair.mask.name, {}).items():
                totals[index[value]] += count
        return totals

    @property
    def looks_like_void(self) -> bool:
        """255 beside labels far below it (0-20), in thin lines or specks (few of its pixels inside a region of it,
        as along the others' edges): VOC's and Cityscapes' unlabelled pixels, trained as a class unless
        --ignore-index says otherwise."""
        values = self.mask_values
        if self.ignore_value is not None or self.binarize is not None or VOID_LABEL not in values or len(values) < 3:
            return False
        if any(isinstance(value, (list, tuple)) or value > VOID_APART for value in values if value != VOID_LABEL):
            return False
        index = values.index(VOID_LABEL)
        pixels = self.class_pixels[index]
        return bool(pixels) and self.class_interior[index] < VOID_INTERIOR * pixels

    @property
    def class_fractions(self) -> list[float]:
        total = sum(self.class_pixels) or 1
        return [count / total for count in self.class_pixels]

    def suggestions(self, channels: int | None = None) -> list[str]:
        """The fixes and hints for what the check found; channels: train.py's --channels, for what it already does."""
        hints = []
        if self.unreadable:
            hints.append("replace or remove the unreadable files (training skips them)")
        if self.size_mismatches:
            hints.append(self.size_mismatch_fix())
        elif self.exif_turned:
            hints.append("if the masks were drawn on the images as viewers show them (turned by EXIF), "
                         f"{UPRIGHT_FIX}")
        elif self.exif_turned_masks:
            hints.append("if the masks fit the images only as viewers show the masks (turned by EXIF), save the "
                         "masks upright first, e.g. with PIL.ImageOps.exif_transpose")
        if self.too_small:
            hints.append(f"leave out or enlarge the images under {MIN_SIDE} px a side (train.py stops on them)")
        if self.palette_conflicts:
            hints.append("save the palette masks with one shared palette, or as RGB PNGs")
        if self.mixed_binary:
            kinds = and_joined([f"0/{value}" for value in self.mixed_binary])
            hints.append(f"pass --binarize 0: {kinds} masks then all read as background/object")
        if self.unresolved_lossy_masks:
            hints.append(self.lossy_mask_fix())
        elif self.stray_values:
            hints.append(f"{len(self.stray_values)} mask values each cover under {STRAY_FRACTION:.1%} of the pixels "
                         f"(resized or noisy masks?): {self.stray_values_fix()}")
        elif self.instance_labels:
            hints.append(f"{len(self.mask_values)} distinct mask values {INSTANCE_LABELS_FIX}")
        if self.looks_like_void:
            others = [value for value in self.mask_values if value != VOID_LABEL]
            hints.append(f"mask value {VOID_LABEL} sits apart from the others ({_short_value(min(others))}-"
                         f"{_short_value(max(others))}) and forms thin lines or specks, as the 'void' label of VOC and "
                         f"Cityscapes does: if it marks unlabelled pixels, pass --ignore-index {VOID_LABEL} (without "
                         "it, it trains as a class)")
        if self.ignore_value is not None and not self.ignored_pixels:
            hints.append(f"--ignore-index {self.ignore_value}: no mask holds that value, so nothing is left out; "
                         "check the value (VOC-style borders are 255)")
        rare = [_short_value(v) for v, f in zip(self.mask_values, self.class_fractions) if 0 < f < RARE_CLASS_FRACTION]
        if rare and len(self.mask_values) <= INSTANCE_LABEL_HINT:  # named by value, as the class pixels line does
            hints.append(f"{'the classes of mask values' if len(rare) > 1 else 'the class of mask value'} "
                         f"{', '.join(rare)} cover{'' if len(rare) > 1 else 's'} less than "
                         f"{RARE_CLASS_FRACTION:.0%} of the pixels: consider --class-weights auto")
        if 1 in self.image_channels and len(self.image_channels) > 1:
            hints.append("grayscale and colour images are mixed: --channels 1 converts the colour ones to grayscale"
                         if channels == 1 else "grayscale and colour images are mixed: grayscale ones are repeated "
                         "to 3 channels (--channels 1 converts all to grayscale instead)")
        if self.fourth_bands and channels != 4:
            hints.append(f"{len(self.fourth_bands)} images hold a fourth band that varies (transparency, or a band "
                         f"such as near-infrared) {_names(self.fourth_bands)}: a model of "
                         f"{'1 channel' if channels == 1 else '3 channels'} reads the first three bands only; "
                         "--channels 4 reads all four")
        if self.one_value:
            hints.append(self.one_value_error())
        elif self.pairs and len(self.empty_masks) > len(self.pairs) / 2:
            hints.append("most masks are empty (background only): check the mask encoding or the folder")
        if self.unwritable_values:
            hints.append(self.unwritable_values_error())
        return hints

    def report(self, channels: int | None = None) -> str:
        lines = [f"data check: {len(self.pairs)} usable pairs in {self.imgs} + {self.masks} "
                 f"(mask suffix {self.mask_suffix!r})"]
        image_sizes = self.image_sizes
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in image_sizes.most_common(3))
        more = f" and {len(image_sizes) - 3} more sizes" if len(image_sizes) > 3 else ""
        bands = ", ".join(f"{_channel_name(c)} ({n})" for c, n in sorted(self.image_channels.items()))
        lines.append(f"  images: {sizes}{more}; {bands}")
        encodings = ", ".join(f"{name} ({n})" for name, n in self.encodings.most_common())
        extra = "" if self.binarize is None else \
            " binarized (" + ("any nonzero" if self.binarize == 0 else f"above {self.binarize}") + " = foreground)"
        if self.ignore_value is not None:
            extra += f", value {self.ignore_value} ignored" + ("" if self.ignored_pixels else " (found in no mask)")
        lines.append(f"  masks: {encodings}{extra}; {counted(len(self.mask_values), 'class', 'classes')}")
        shown = [f"{_short_value(v)}: {f:.1%}" if f == 0 or f >= 0.0005 else f"{_short_value(v)}: <0.1%"
                 for v, f in zip(self.mask_values, self.class_fractions)][:12]  # present, if rare: not 0.0%
        lines.append(f"  class pixels: {', '.join(shown)}{', ...' if len(self.mask_values) > 12 else ''}")
        if self.empty_masks:
            lines.append(f"  empty masks (background only): {len(self.empty_masks)} {_names(self.empty_masks)}")
        if self.ignored_masks:
            lines.append(f"  masks of --ignore-index {self.ignore_value} only (nothing to learn or score): "
                         f"{len(self.ignored_masks)} {_names(self.ignored_masks)}")
        if self.exif_turned:
            lines.append(f"  EXIF orientation: {len(self.exif_turned)} images are stored turned or mirrored and "
                         f"shown upright by viewers {_names(self.exif_turned)}; they are read as stored")
        if self.exif_turned_masks:
            lines.append(f"  EXIF orientation: {len(self.exif_turned_masks)} masks are stored turned or mirrored and "
                         f"shown upright by viewers {_names(self.exif_turned_masks)}; they are read as stored")
        if self.blurred_masks:
            lines.append(f"  {self.lossy_formats} masks with in-between values (lossy compression blurs edges): "
                         f"{len(self.blurred_masks)} {_names(self.blurred_masks)}")
        lonely = ((self.lonely_images, "image", "a mask"), (self.lonely_masks, "mask", "an image"))
        for names, kind, other in lonely:
            if names:
                lines.append(f"  unpaired (not used): {counted(len(names), kind)} without "
                             f"{other} {_names(names)}")
        if self.unread_formats:
            lines.append(f"  not read: {unread_format_note(self.unread_formats)}")
        lines += [f"  unreadable: {reason}" for reason in self.unreadable[:5]]
        if len(self.unreadable) > 5:
            lines.append(f"  unreadable: {len(self.unreadable) - 5} more files")
        for message in self.palette_conflicts[:5]:
            lines.append(f"  palette conflict: {message}")
        if self.mixed_binary:
            lines.append("  mixed binary encodings: " + ", ".join(f"{len(names)} masks hold 0/{value} {_names(names)}"
                                                                 for value, names in self.mixed_binary.items()))
        if self.too_small:
            lines.append(f"  too small for the U-Net at any --scale (under {MIN_SIDE} px a side): "
                         f"{len(self.too_small)} {_names(self.too_small)}")
        for message in self.size_mismatches[:5]:
            lines.append(f"  size mismatch: {message}")
        if len(self.size_mismatches) > 5:
            lines.append(f"  size mismatch: {len(self.size_mismatches) - 5} more pairs")
        lines += [f"  suggestion: {hint}" for hint in self.suggestions(channels)]
        return "\n".join(lines)


def and_joined(items: list[str]) -> str:
    """"a, b and c"."""
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def _channel_name(channels: int) -> str:
    return {1: "grayscale", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels} channels")


def _short_value(value: MaskValue) -> str:
    return "(" + ",".join(map(str, value)) + ")" if isinstance(value, list) else str(value)


def _names(names: list[str]) -> str:
    return "(" + ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") + ")"


def check_dataset(
    imgs: Path,
    masks: Path,
    mask_suffix: str | None = None,
    binarize: int | None = None,
    ignore_value: int | None = None,
    workers: int | None = None,
) -> DataCheck:
    """Pair, decode (cached) and summarise a data set; raises UserError only when nothing usable is left."""
    pairing = pair_files(Path(imgs), Path(masks), mask_suffix)
    binarize = binarize_threshold(binarize)
    cache_file = Path(masks) / CACHE_NAME  # images' entries too: the image folder is left as it was
    cache = _read_cache(cache_file)  # once: it holds an entry per file, 7.5 MB for 20,000 pairs
    records = []
    for kind, paths in (("image", [p.image for p in pairing.pairs]), ("mask", [p.mask for p in pairing.pairs])):
        kind_records, changed = _inspect_with_cache(paths, kind, workers, cache, Path(masks))
        if changed:  # after each kind: a Ctrl-C during the masks keeps the images' scans
            _write_cache(cache_file, cache)
        records.append(kind_records)
    image_records, mask_records = records
    check = DataCheck(Path(imgs), Path(masks), pairing.mask_suffix, [], [], [], binarize, ignore_value,
                      pairing.lonely_images, pairing.lonely_masks, pairing.unread)
    usable: list[tuple[Pair, dict]] = []
    for pair, image, mask in zip(pairing.pairs, image_records, mask_records):
        if "error" in image or "error" in mask:
            check.unreadable += [record["error"] for record in (image, mask) if "error" in record]
            continue
        orientation, mask_orientation = image.get("orientation", 1), mask.get("orientation", 1)
        if orientation != 1:
            check.exif_turned.append(pair.image.name)
        if mask_orientation != 1:
            check.exif_turned_masks.append(pair.mask.name)
        if (image["width"], image["height"]) != (mask["width"], mask["height"]):
            message, fix = size_mismatch(pair.image, (image["width"], image["height"]), pair.mask,
                                         (mask["width"], mask["height"]), orientation, mask_orientation)
            check.size_mismatch_fixes.append(fix)
            check.size_mismatches.append(message)
            continue
        usable.append((pair, mask))
        check.sizes[pair.name] = (image["width"], image["height"])
        check.channels[pair.name] = image["channels"]
        if image.get("fourth_band_varies"):
            check.fourth_bands.append(pair.image.name)
        if unread_bands(image.get("mode")):
            check.unread_fourth_bands.append(pair.name)
        check.encodings[mask["encoding"]] += 1
        if mask.get("lossy") and len(mask["values"]) > 2:
            check.blurred_masks.append(pair.mask.name)
            check.blurred_formats.append(mask["lossy"])
            check.blurred_top = max(check.blurred_top, int(np.max(mask["values"])))
            # gray levels: of a label mask, or of an RGB file whose colours are all gray but for the compression's
            # tinge (WebP has no gray mode)
            levels = [value[0] if isinstance(value, list) else value for value in mask["values"]]
            if any(isinstance(value, list) and max(value) - min(value) > GRAY_TINGE for value in mask["values"]):
                check.blurred_colour = True
            else:  # judged against the largest value of all (0/100 masks beside 0/200 ones: 100 is in between)
                check.blurred_levels.update(dict(zip(levels, mask["counts"])))
    check.pairs = [pair for pair, _ in usable]
    check.palette = _merged_palette([mask for _, mask in usable])
    if not usable:
        first = check.unreadable[0] if check.unreadable else f"{check.size_mismatches[0]}: {check.size_mismatch_fix()}"
        raise UserError(f"no usable image/mask pair in {imgs} + {masks}: {first}")
    colour_mask = next((pair.mask for pair, mask in usable if mask["encoding"] == "colour"), None)
    if ignore_value is not None and colour_mask is not None:
        raise UserError(f"--ignore-index {ignore_value} names a label value, but {colour_mask} is an RGB colour "
                        "mask, whose classes are colours: leave --ignore-index out")
    if binarize is None:  # binarized, an index is a class by its value alone, whatever its colour
        check.palette_conflicts = _palette_conflicts([(pair.mask.name, mask) for pair, mask in usable], ignore_value)
    if binarize is None and ignore_value not in BINARY_OBJECT_VALUES:
        check.mixed_binary = _mixed_binary([(pair.mask.name, mask) for pair, mask in usable])
    per_file = {pair.mask.name: _effective_counts(mask, binarize, ignore_value) for pair, mask in usable}
    check.ignored_pixels = sum(count for _, mask in usable for value, count in zip(mask["values"], mask["counts"])
                               if ignore_value is not None and value == ignore_value)
    interior = [_effective_counts(mask, binarize, ignore_value, "interior") for _, mask in usable]
    check.counts_by_mask = per_file
    check.mask_values = merge_values(
        {name: [list(v) if isinstance(v, tuple) else v for v in counts] for name, counts in per_file.items()},
        Path(masks))
    index = {_hashable(v): i for i, v in enumerate(check.mask_values)}
    check.class_pixels = [0] * len(check.mask_values)
    for name, counts in per_file.items():
        for value, count in counts.items():
            check.class_pixels[index[value]] += count
        if not counts:  # not "background only": no pixel is left to count (a scale review)
            check.ignored_masks.append(name)
        elif set(counts) <= {_hashable(check.mask_values[0])} and not check.one_value:  # one value: one_value_error
            check.empty_masks.append(name)
    check.class_interior = [0] * len(check.mask_values)
    for counts in interior:
        for value, count in counts.items():
            check.class_interior[index[value]] += count
    return check


def _merged_palette(masks: list[dict]) -> list[int] | None:
    """One palette for all the palette masks: each index in the colour of the files that use it (they agree, or
    _palette_conflicts refuses them), the rest as in the first file. A file's palette may list only the colours it
    uses (a mask of classes 0 and 1: two entries), so no one file's is taken for all."""
    palettes = [mask for mask in masks if mask.get("palette")]
    if not palettes:
        return None
    merged = list(palettes[0]["palette"])
    for mask in palettes:
        for index in mask["values"] if mask["encoding"] == "palette" else []:
            colour = mask["palette"][3 * index: 3 * index + 3]
            if len(colour) == 3:
                merged += [0] * max(0, 3 * index + 3 - len(merged))
                merged[3 * index: 3 * index + 3] = colour
    return merged


def _palette_conflicts(masks: list[tuple[str, dict]], ignore_value: int | None = None) -> list[str]:
    """Palette masks are read as their indices: an index shown as one colour in one file and another colour in
    another (Pillow numbers a GIF's palette per file) would make two classes one. The ignored index is no class:
    its colour may differ (VOC's void border recoloured in one file)."""
    first_seen: dict[int, tuple[tuple[int, ...], str]] = {}
    conflicts = []
    for name, mask in masks:
        palette = mask.get("palette") or []
        for index in mask["values"] if mask["encoding"] == "palette" else []:
            colour = tuple(palette[3 * index: 3 * index + 3])
            if len(colour) < 3 or index == ignore_value:
                continue  # an index beyond the palette: shown black, nothing to compare
            seen = first_seen.setdefault(index, (colour, name))
            if seen[0] != colour:
                conflicts.append(f"{name} shows index {index} as {colour}, {seen[1]} as {seen[0]}")
    return conflicts


def _mixed_binary(masks: list[tuple[str, dict]]) -> dict[int, list[str]]:
    """Binary masks whose object is 1 in some files, 255 (8-bit full scale) or 65535 (16-bit) in others, and no file
    holding two of these: one object class saved two ways, not two classes. {object value: its files}, empty when
    that is not the case (0/1 beside 0/2 may well be two classes, each in images of its own)."""
    files: dict[int, list[str]] = {}
    for name, mask in masks:
        if mask["encoding"] == "colour":
            return {}
        objects = set(mask["values"]) - {0}
        if not objects <= set(BINARY_OBJECT_VALUES) or len(objects) > 1:
            return {}
        for value in objects:
            files.setdefault(value, []).append(name)
    return dict(sorted(files.items())) if len(files) > 1 else {}


def _hashable(value: MaskValue) -> int | tuple[int, ...]:
    return tuple(value) if isinstance(value, list) else value


def _effective_counts(mask: dict, binarize_above: int | None, ignore_value: int | None,
                      counted: str = "counts") -> Counter:
    """Pixel count per value of one mask after --binarize and --ignore-index (colours as tuples); counted =
    "interior": of its interior pixels only (interior before binarizing: a lower bound after it)."""
    counts: Counter = Counter()
    for value, count in zip(mask["values"], mask[counted]):
        key = _hashable(value)
        if ignore_value is not None and key == ignore_value:
            continue
        if binarize_above is not None:
            key = int(binarize(np.array(value), binarize_above, isinstance(value, list)))
        counts[key] += count
    return counts


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Check an image/mask data set before training.")
    parser.add_argument("--imgs", type=Path, default=Path("data/imgs"), help="image folder (default: %(default)s)")
    parser.add_argument("--masks", type=Path, default=Path("data/masks"), help="mask folder (default: %(default)s)")
    parser.add_argument("--mask-suffix", default=None, help="mask name = image name + suffix; detected when omitted")
    add_binarize_argument(parser)
    parser.add_argument("--ignore-index", type=int, default=None, metavar="VALUE",
                        help="mask value excluded from training and scores (e.g. 255 borders)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes; 0 or 1 decode in this process (default: all cores, max 8)")
    parser.add_argument("--classes", type=int, default=None, metavar="N",
                        help="train.py's --classes N: mask values that look made up, or binary masks of two "
                             "encodings, are then classes, as train.py takes them")
    add_image_limit_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    """Prints the report; exit code 1 when train.py with the same flags would stop or skip files, else 0."""
    check_workers_flag(args.workers)
    check_binarize_flag(args.binarize)
    check_classes_flag(args.classes)
    with image_pixel_limit(args.max_image_pixels):
        check = check_dataset(args.imgs, args.masks, args.mask_suffix, args.binarize, args.ignore_index,
                              args.workers)
    print(check.report())
    if args.classes is None:
        return 1 if check.problems else 0
    check_classes(check.mask_values, args.classes)
    return 1 if check.problems_whatever_the_classes else 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
