"""Prediction outputs written in background threads, so that encoding PNGs never holds up the model.

The masks arrive already encoded (MaskEncoder applies utils.mask_encoding.encoding_table on the device) with their
class fractions counted, so the threads mostly compress: PNG (zlib) encoding releases the GIL in Pillow, and the
threads run in parallel with each other and with the model. At most `max_pending` results wait in memory; a
write that fails stops the run with one line naming the file, and every mask already written stays.
"""

import csv
import zlib
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from .atomic_files import NAME_BYTES, atomic_path
from .data_loading import read_image, read_mask
from .errors import UserError
from .inference import logits_to_classes, probabilities
from .mask_encoding import MaskValue, encode_mask, encoding_table, mask_image
from .plotting import class_colours, overlay_mask, side_by_side


@dataclass(frozen=True)
class OutputOptions:
    save_mask: bool = True
    save_probs: bool = False  # <mask stem>_probs.npy, float16 (classes, height, width)
    overlay: bool = False  # <mask stem>_overlay.png
    viz: str | None = None  # "show" or "save" (<mask stem>_viz.png)


def mask_save_options(target: Path) -> dict:
    """The format named by the target's extension (the file is written under a temporary name first), and for
    PNG, zlib's run-length strategy: masks are runs of a few values, written ~1.5x faster than with the default
    and ~8% smaller (bench/README.md), the pixels unchanged. GIFs keep their palette as it is: Pillow's default
    renumbers it to the colours used, so that index 2 of a mask became 0 and an all-object 0/255 mask became 0s."""
    suffix = target.suffix.lower()
    options = {"format": Image.registered_extensions()[suffix], **marked(suffix)}  # only MASK_FILE_SUFFIXES here
    if suffix == ".png":
        options["compress_type"] = zlib.Z_RLE
    elif suffix == ".gif":
        options["optimize"] = False
    return options


# Written into every mask, overlay and view predict.py saves (BMP has no room for it), so that a later run
# replaces its own outputs but not a file that only has the same name: a ground-truth mask, a photo.
OUTPUT_MARK = "predict.py (U-Net segmentation)"
TIFF_SOFTWARE_TAG = 305


def marked(suffix: str) -> dict:
    """Pillow's save options that carry OUTPUT_MARK in a file of this suffix."""
    if suffix == ".png":
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", OUTPUT_MARK)
        return {"pnginfo": info}
    if suffix == ".gif":
        return {"comment": OUTPUT_MARK}
    if suffix in (".tif", ".tiff"):
        return {"tiffinfo": {TIFF_SOFTWARE_TAG: OUTPUT_MARK}}
    return {}


def written_by_predict(path: Path) -> bool:
    """Whether an existing file at an output name is one predict.py wrote, and may be replaced: an image with
    OUTPUT_MARK, or probabilities as --save-probs writes them (float16, classes x H x W; .npy has no room)."""
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return array.dtype == np.float16 and array.ndim == 3
        with Image.open(path) as image:  # the header only: the mark comes before the pixels
            found = [image.info.get("Software"), image.info.get("comment")]
            found += [image.tag_v2.get(TIFF_SOFTWARE_TAG)] if hasattr(image, "tag_v2") else []
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
    return any(mark in (OUTPUT_MARK, OUTPUT_MARK.encode()) for mark in found)


EIGHT_BIT_FORMATS = (".bmp", ".gif")


# The extra outputs are named after the mask: <mask stem><tag><suffix>.
PROBS_TAG, OVERLAY_TAG, VIZ_TAG = "_probs", "_overlay", "_viz"
EXTRA_OUTPUT_TAGS = (PROBS_TAG, OVERLAY_TAG, VIZ_TAG)


def probs_path(target: Path) -> Path:
    return target.with_name(f"{target.stem}{PROBS_TAG}.npy")


CSV_HEADER = "image,mask,width,height"  # predictions.csv's first columns; the class fractions follow


def overlay_path(target: Path) -> Path:
    return target.with_name(f"{target.stem}{OVERLAY_TAG}.png")


def viz_path(target: Path) -> Path:
    return target.with_name(f"{target.stem}{VIZ_TAG}.png")


def class_counts(classes: torch.Tensor, n_classes: int, method: str | None = None) -> torch.Tensor:
    """(B, H, W) class indices -> (B, n_classes) pixel counts (int64), without a host sync.

    method (default: by device): "sums", one comparison and sum per class, on GPUs for up to 32 classes, where
    a scatter of millions of ones into a few counters makes the atomic adds wait for each other (2 counters per
    image for Carvana); "scatter" on CPUs (3.3-3.5 ms per 1918x1280 mask for any number of classes; the sums
    take 2.7 ms for 2 classes, 8-10 for 5, ~60 for 40: bench/mask_output_cost.py) and on GPUs beyond 32 classes.
    (torch.bincount would sync on a GPU: its output's length depends on the data.)
    """
    flat = classes.flatten(1)
    if method is None:
        method = "sums" if flat.device.type != "cpu" and n_classes <= 32 else "scatter"
    if method == "sums":
        return torch.stack([(flat == c).sum(1) for c in range(n_classes)], 1)
    counts = torch.zeros(len(flat), n_classes, dtype=torch.int64, device=flat.device)
    return counts.scatter_add_(1, flat, torch.ones((), dtype=torch.int64, device=flat.device).expand_as(flat))


class MaskEncoder:
    """Logits -> encoded masks, class fractions (and indices, probabilities) on the device, copied to pinned host
    memory without waiting: the GPU goes on with the next batch while the CPU hands these to the writer."""

    def __init__(self, table: np.ndarray | None, n_classes: int, device: torch.device, class_indices: bool,
                 probs: bool, threshold: float):
        """table: class index -> the value written (the writer's encoding_table); None without mask files
        (--no-save), where the class indices stand in: no refusal of labels that no mask image can hold when only
        probabilities, overlays or the CSV are written."""
        stored = table if table is not None else np.arange(n_classes, dtype=np.int32)
        self.stored_dtype = stored.dtype  # uint16 tables go to the device as int32: CUDA indexes no uint16
        self.table = torch.from_numpy(stored.astype(np.int32) if stored.dtype == np.uint16 else stored).to(device)
        self.n_classes, self.device = n_classes, device
        self.class_indices, self.probs, self.threshold = class_indices, probs, threshold

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return tensor.cpu()  # a no-op on the CPU; MPS copies synchronously
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)

    def __call__(self, logits: torch.Tensor, indices: list[int]) -> dict:
        classes = logits_to_classes(logits, self.threshold)
        result = {"indices": indices, "pixels": classes[0].numel(),
                  "counts": self._to_host(class_counts(classes, self.n_classes)),
                  "encoded": self._to_host(self.table[classes])}
        if self.class_indices:
            result["classes"] = self._to_host(classes.to(torch.uint8 if self.n_classes <= 256 else torch.int32))
        if self.probs:
            result["probs"] = self._to_host(probabilities(logits).half())
        if self.device.type == "cuda":
            result["done"] = torch.cuda.Event()
            result["done"].record()
        result["stored_dtype"] = self.stored_dtype
        return result


class MaskWriter:
    """Writes each prediction's mask (in the training masks' encoding) and the optional extra outputs."""

    def __init__(self, mask_values: Sequence[MaskValue], palette: Sequence[int] | None, channels: int,
                 options: OutputOptions, threads: int = 4, max_pending: int = 32, ignore_value: int | None = None):
        self.mask_values, self.palette, self.channels, self.options = mask_values, palette, channels, options
        self.n_classes = max(len(mask_values), 2)
        # what the masks hold, per class; none without mask files (labels beyond 16 bits still get the rest)
        self.table = encoding_table(mask_values, ignore_value) if options.save_mask else None
        self.ignore_value = ignore_value
        self.colours = class_colours(self.n_classes, mask_values)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mask-writer")
        self.pending: deque[Future] = deque()
        self.max_pending = max_pending
        self.rows: dict[int, dict] = {}

    @property
    def needs_class_indices(self) -> bool:
        """Overlays and side-by-side views colour the class indices, not the encoded mask."""
        return self.options.overlay or self.options.viz is not None

    def submit(self, index: int, source: Path, target: Path, encoded: np.ndarray, fractions: Sequence[float],
               class_indices: np.ndarray | None = None, probs: np.ndarray | None = None) -> None:
        """Queue one prediction: the encoded mask at the image's size and each class's share of its pixels.

        Blocks while too many are pending.
        """
        height, width = encoded.shape[:2]
        self.rows[index] = self._row(source, target, width, height, fractions)
        self.pending.append(self.pool.submit(self._write, source, target, encoded, class_indices, probs))
        while len(self.pending) > self.max_pending:
            self.pending.popleft().result()

    def _row(self, source: Path, target: Path, width: int, height: int, fractions: Sequence[float]) -> dict:
        return {"image": str(source), "mask": str(target) if self.options.save_mask else "", "width": width,
                "height": height, **{f"fraction_{c}": f"{f:.9f}" for c, f in enumerate(fractions)}}

    def check_format(self, target: Path) -> None:
        """Refuse, before any prediction, a mask file format that cannot hold the mask values (16-bit labels), or
        colours as colours (GIF)."""
        if not self.options.save_mask:
            return
        if target.suffix.lower() == ".gif" and self.table.ndim == 2:  # found by a review: unreadable as colours
            raise UserError(f"output {target}: the masks are RGB colours, which a GIF keeps as a palette that this "
                            "toolkit reads back as indices (evaluate.py's ground truth, --skip-existing): name the "
                            "outputs .png, .tif or .bmp")
        top = int(np.max(self.table))
        if target.suffix.lower() in EIGHT_BIT_FORMATS and top > 255:
            raise UserError(f"output {target}: the masks hold label values up to {top}, which {target.suffix} files "
                            "cannot store (8 bits): name the outputs .png or .tif")

    def output_files(self, target: Path) -> list[Path]:
        """The files written for the mask target: the mask and the extra outputs asked for."""
        files = [target] if self.options.save_mask else []
        files += [probs_path(target)] if self.options.save_probs else []
        files += [overlay_path(target)] if self.options.overlay else []
        return files + ([viz_path(target)] if self.options.viz == "save" else [])

    def record_existing(self, index: int, source: Path, target: Path) -> bool:
        """predictions.csv's row for a mask an earlier run wrote (predict.py --skip-existing), counted from the file;
        False when it cannot be read as a mask of this model (predict.py then predicts it again)."""
        try:
            classes = encode_mask(read_mask(target), self.table.tolist(), target)
        except UserError:
            return False
        fractions = np.bincount(classes.ravel(), minlength=self.n_classes) / classes.size
        self.rows[index] = self._row(source, target, classes.shape[1], classes.shape[0], fractions.tolist())
        return True

    def _write(self, source: Path, target: Path, encoded: np.ndarray, class_indices: np.ndarray | None,
               probs: np.ndarray | None) -> None:
        options = self.options
        try:
            if options.save_mask or options.save_probs or options.overlay or options.viz == "save":
                target.parent.mkdir(parents=True, exist_ok=True)
            if options.save_mask:
                image = mask_image(encoded, self.mask_values, self.palette, self.ignore_value)
                with atomic_path(target) as tmp:
                    image.save(tmp, **mask_save_options(target))
            if options.save_probs:
                with atomic_path(probs_path(target)) as tmp, open(tmp, "wb") as file:
                    np.save(file, probs)
            if class_indices is not None:
                self._pictures(source, target, class_indices)
        except OSError as error:
            raise UserError(f"cannot write the prediction of {source} to {target.parent} ({error.strerror or error}): "
                            "check that the folder is writable and the disk has space") from None

    def _pictures(self, source: Path, target: Path, class_indices: np.ndarray) -> None:
        image = read_image(source, min(self.channels, 3))  # a 4-band image is shown by its RGB bands
        overlay = overlay_mask(image, class_indices, self.colours)
        if self.options.overlay:
            with atomic_path(overlay_path(target)) as tmp:
                overlay.save(tmp, format="PNG", **marked(".png"))
        if self.options.viz:
            picture = Image.fromarray(np.squeeze(image, -1) if image.shape[-1] == 1 else image)
            view = side_by_side([picture, Image.fromarray(self.colours[class_indices]), overlay])
            if self.options.viz == "show":
                view.show(title=str(source))
            else:
                with atomic_path(viz_path(target)) as tmp:
                    view.save(tmp, format="PNG", **marked(".png"))
                tqdm.write(f"no display: visualisation of {source} saved to {viz_path(target)}")

    def close(self) -> None:
        """Wait for every queued write; the first failure is raised."""
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def write_csv(self, path: Path) -> None:
        """predictions.csv: per image, its size and the fraction of pixels of each class (in input order)."""
        fields = CSV_HEADER.split(",") + [f"fraction_{c}" for c in range(self.n_classes)]
        try:
            with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors=NAME_BYTES) as file:
                writer = csv.DictWriter(file, fieldnames=fields)
                writer.writeheader()
                writer.writerows(self.rows[index] for index in sorted(self.rows))
        except OSError as error:  # the folder was tried before predicting; a disk can fill up since
            fix = ("the masks are written: run again with --skip-existing and a --csv elsewhere to count them"
                   if self.options.save_mask else "no masks were written (--no-save) to count from: free disk "
                   "space or give --csv another file, and run again")
            raise UserError(f"cannot write --csv {path} ({error.strerror or error}); {fix}") from None
