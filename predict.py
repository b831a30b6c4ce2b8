"""Predict masks for images with a trained U-Net: one file, a list, or whole folders streamed in batches.

    python predict.py -i img.jpg -o out.png              # one image
    python predict.py -i a.jpg b.jpg --viz --no-save     # look, don't write
    python predict.py -m checkpoints/best.pth -i data/test/ -o predictions/ --overlay --csv
    python predict.py -i huge.tif --tile 1024 --tta flip # overlapping tiles, test-time augmentation

Folders stream through a DataLoader (decoding and resizing in worker processes), the model runs on batches,
and the masks are encoded and written by background threads.
"""

import argparse
import csv
import glob
import os
import re
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from utils.atomic_files import NAME_BYTES, NAME_MAX, check_output_file, make_folder, remove_abandoned_temporaries
from utils.checkpoint import inference_scale, load_model
from utils.data_loading import (
    IMAGE_SUFFIXES,
    UNREAD_IMAGE_SUFFIXES,
    UPRIGHT_FIX,
    ImageFiles,
    WorkerLoader,
    add_image_limit_argument,
    image_pixel_limit,
    image_size,
    is_hidden,
    is_image_file,
    unread_format_note,
    where,
    where_all,
)
from utils.device import (
    COMPILE_CHOICES,
    COMPILE_MIN_IMAGES,
    add_device_arguments,
    choose_device,
    choose_precision,
    compile_model,
    float32_default,
    freed_memory_kept,
    should_compile,
)
from utils.errors import UserError, as_parsed, check_flag, counted, run_cli
from utils.inference import (
    add_inference_arguments,
    add_mask_threshold_argument,
    check_prediction_flags,
    default_prediction_batch,
    fuse_batchnorm,
    inference_options,
    notify_once,
    predict_logits,
    prediction_workers,
    settle_mask_threshold,
)
from utils.mask_writer import CSV_HEADER, EXTRA_OUTPUT_TAGS, MaskEncoder, MaskWriter, OutputOptions, written_by_predict
from utils.progress import progress_bar
from utils.size_groups import regrouped

SKIPPED_LISTED = 20  # unreadable inputs named one by one (a scale review's folder had 5,000: 535 KB of lines)
MASK_FILE_SUFFIXES = (".png", ".gif", ".bmp", ".tif", ".tiff")  # lossless, so class values survive
DEFAULT_OUTPUT_TAG = "_OUT"  # without --output, the mask of x.jpg is x_OUT.png beside it
# What such a run writes beside its inputs (the mask, its overlay, viz and probabilities): a later run on the same
# folder must not take them for images to predict.
OWN_OUTPUT_STEM = re.compile(re.escape(DEFAULT_OUTPUT_TAG) + f"({'|'.join(map(re.escape, EXTRA_OUTPUT_TAGS))})?$")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Predict masks from input images.")
    parser.add_argument("--model", "-m", default="MODEL.pth", metavar="FILE",
                        help="checkpoint: ours or a reference state_dict (default MODEL.pth)")
    parser.add_argument("--input", "-i", metavar="INPUT", nargs="+", required=True,
                        help="image files, folders or glob patterns (quoted; DIR/**/*.png searches subfolders too)")
    parser.add_argument("--output", "-o", metavar="OUTPUT", nargs="+",
                        help="one file per input, or one folder: masks named like the inputs, as .png "
                             "(default: <name>_OUT.png beside each input)")
    parser.add_argument("--viz", "-v", action="store_true",
                        help="show image | mask | overlay side by side (saved as <mask>_viz.png without a display)")
    parser.add_argument("--no-save", "-n", action="store_true", help="do not write the masks")
    parser.add_argument("--overlay", action="store_true", help="also write a coloured overlay <mask>_overlay.png")
    parser.add_argument("--save-probs", action="store_true",
                        help="also write the class probabilities as <mask>_probs.npy, float16 (classes, H, W); a "
                             "one-class model's single channel is the foreground's (class 1's) probability")
    parser.add_argument("--csv", nargs="?", const="", default=None, metavar="FILE",
                        help="write each image's size and fraction of pixels per class to FILE (default: "
                             "predictions.csv in the output folder, or here)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave out inputs whose outputs (mask, and --save-probs/--overlay files) exist, e.g. to "
                             "finish a run that was stopped; with --csv their rows are counted from the masks")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files at the output names that predict.py did not write (a ground-truth mask, "
                             "an image, an output of an earlier version of this tool, a .bmp mask); without it they "
                             "are refused, and only predict.py's own earlier outputs are replaced")
    add_mask_threshold_argument(parser)
    parser.add_argument("--scale", "-s", type=float, default=None,
                        help="image downscaling before the model (default: the scale the model was trained at)")
    parser.add_argument("--classes", "-c", type=int, default=None,
                        help="number of classes; read from the checkpoint, only needed to double-check")
    parser.add_argument("--bilinear", action="store_true", default=None,
                        help="bilinear upsampling; read from the checkpoint, only needed to double-check")
    add_inference_arguments(parser)
    add_image_limit_argument(parser)
    speed = parser.add_argument_group("throughput")
    speed.add_argument("--batch-size", "-b", type=int, default=None,
                       help="images per forward pass (same-size images are batched; default: 16 on a CUDA GPU, "
                            "within --max-memory; elsewhere as many as fill 512x512 pixels, at most 64: 1 for "
                            "larger images, 64 for 32x32 tiles)")
    speed.add_argument("--workers", type=int, default=None,
                       help="image decoding processes (default: all cores but one, at most 8, on a CUDA GPU; 1 "
                            "otherwise; 0 for a single image)")
    speed.add_argument("--writers", type=int, default=None,
                       help="threads encoding and writing masks (default: 8 on a CUDA GPU, 1 otherwise)")
    speed.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                       help=f"torch.compile the model; auto = on with CUDA for {COMPILE_MIN_IMAGES} images or more "
                            "(compiling takes ~20 s the first time, seconds later), off on CPUs, where it was slower "
                            "(default: %(default)s)")
    add_device_arguments(parser)
    return parser


def literal_folders(pattern: str) -> str:
    """The pattern with its longest leading part that is an existing folder escaped: 'data [v2]/*.jpg' is the
    JPEGs of that folder, not of 'data v' (glob reads [v2] as one character of v or 2)."""
    parts = Path(pattern).parts
    for cut in range(len(parts) - 1, 0, -1):
        folder = Path(*parts[:cut])
        if any(mark in str(folder) for mark in "*?[") and folder.is_dir():
            return str(Path(glob.escape(str(folder)), *parts[cut:]))
    return pattern


def expand_inputs(inputs: list[str], keep_repeats: bool = False) -> tuple[list[Path], int]:
    """Files as given; folders and glob patterns expanded to the image files they hold, sorted, leaving out the
    files an earlier run without --output wrote there (x_OUT.png, ...). A file named twice is kept once, unless
    keep_repeats (an output file listed for each input). Returns the paths and how many were left out as
    outputs."""
    paths: list[Path] = []
    unread: list[Path] = []  # HEIC, JPEG 2000, ...: named in a note, not passed over in silence
    left_out = 0
    for item in inputs:
        if not item.strip():  # Path("") is the current folder
            raise UserError("an --input is an empty name: give a file, a folder or a pattern ('imgs/*.jpg')")
        path = Path(item)
        if path.is_dir():
            listed = sorted(child for child in path.iterdir() if not is_hidden(child))
        elif path.exists():
            paths.append(path)  # named explicitly: predicted whatever its name
            continue
        else:
            listed = sorted(Path(p) for p in glob.glob(literal_folders(item), recursive=True))  # DIR/**/*.jpg too
        found = [p for p in listed if is_image_file(p)]
        unread_here = [p for p in listed if p.suffix.lower() in UNREAD_IMAGE_SUFFIXES and p.is_file()]
        unread += unread_here
        verb = "holds" if path.is_dir() else "matches"
        also = f"; it {verb} {unread_format_note(unread_here)}" if unread_here else ""
        if not found and not path.is_dir():
            raise UserError(f"input {item} does not exist and matches no image file{also}")
        kept = [p for p in found if not OWN_OUTPUT_STEM.search(p.stem)]
        left_out += len(found) - len(kept)
        if not kept:
            outputs = f" other than the {len(found)} outputs of an earlier run (*{DEFAULT_OUTPUT_TAG}.png)" if found \
                else f" ({', '.join(IMAGE_SUFFIXES)}; subfolders are not searched: use '{path / '**' / '*'}')"
            raise UserError(f"input {'folder ' if path.is_dir() else ''}{item} holds no image files{outputs}{also}")
        paths.extend(kept)
    if unread:
        print(f"note: left out {unread_format_note(unread)}", file=sys.stderr)
    if keep_repeats:
        return paths, left_out
    unique, seen = [], set()  # a file named twice (a.png and '*.png', or through a link) is predicted once
    for path, resolved in zip(paths, where_all(paths)):
        if resolved not in seen:
            seen.add(resolved)
            unique.append(path)
    if len(unique) < len(paths):
        repeats = len(paths) - len(unique)
        print(f"note: {counted(repeats, 'input')} {'names' if repeats == 1 else 'name'} a file already among the "
              "inputs (twice, or through a link): each file is predicted once", file=sys.stderr)
    return unique, left_out


def output_paths(inputs: list[Path], outputs: list[str] | None) -> list[Path]:
    """One output per input: explicit files, a folder mirroring the input names (.png), or beside each input."""
    if outputs and not all(output.strip() for output in outputs):  # Path("") is the current folder
        raise UserError("an --output is an empty name: give a file (mask.png) or a folder (masks/)")
    if not outputs:
        targets = [path.with_name(f"{path.stem}{DEFAULT_OUTPUT_TAG}.png") for path in inputs]
        check_distinct(inputs, [[target] for target in targets])
        return targets
    named_folder = len(outputs) == 1 and (Path(outputs[0]).is_dir() or outputs[0].endswith(("/", os.sep)))
    if named_folder or (len(outputs) == 1 and len(inputs) > 1):
        folder = Path(outputs[0])
        if not named_folder and folder.suffix.lower() in IMAGE_SUFFIXES:
            raise UserError(f"{len(inputs)} inputs but one output file {folder}: give a folder or one file each")
        make_folder(folder, "--output")
        targets = [folder / f"{path.stem}.png" for path in inputs]
        check_distinct(inputs, [[target] for target in targets])
        return targets
    if len(outputs) != len(inputs):
        raise UserError(f"{len(inputs)} inputs but {len(outputs)} outputs: give one output per input or a folder")
    for output in outputs:
        suffix = Path(output).suffix.lower()
        if suffix in (".npy", ".pt"):
            raise UserError(f"output {output}: masks are written as image files ({', '.join(MASK_FILE_SUFFIXES)}): "
                            "end it in .png (--save-probs adds the probabilities as <mask>_probs.npy)")
        if suffix in IMAGE_SUFFIXES and suffix not in MASK_FILE_SUFFIXES:  # .jpg, .webp: lossy
            raise UserError(f"output {output}: masks are written as {', '.join(MASK_FILE_SUFFIXES)} files, which keep "
                            f"the class values exactly (a {suffix} mask would not): end it in .png")
        if suffix not in MASK_FILE_SUFFIXES:
            raise UserError(f"output {output} is not an image file name: end it in .png (or / for a folder)")
    targets = [Path(output) for output in outputs]
    check_distinct(inputs, [[target] for target in targets])
    for folder in {target.parent for target in targets}:  # a file in the way is said now, not after predicting
        make_folder(folder, "--output")
    return targets


def case_insensitive(folder: Path) -> bool:
    """Whether names that differ only in case name one file in folder (macOS's and Windows' disks, and some Linux
    folders): a probe file says, since the platform alone does not."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".case-probe-") as probe:
            name = Path(probe.name)
            return name.with_name(name.name.upper()).exists()
    except OSError:  # not there yet, or read-only: no output is written there before make_folder
        return sys.platform in ("darwin", "win32")


def _folder_identity(folder: Path) -> object:
    try:
        status = folder.stat()
        return status.st_dev, status.st_ino  # the same folder typed in two cases
    except OSError:
        return folder


def check_distinct(inputs: list[Path], outputs: list[list[Path]], masks: bool = True) -> None:
    """No output may overwrite an input image (its own, or one not read yet) or another output. outputs[i]: input
    i's files: its mask first (unless masks is False: --no-save), then its overlay, viz or probabilities files.
    Where the output folder does not tell case apart, Cat.png and cat.png are one file."""
    probed: dict[object, bool] = {}  # output folders only: nothing is written to probe an input's folder

    identities: dict[Path, object] = {}

    def key(resolved: Path, probe: bool) -> tuple:
        if resolved.parent not in identities:  # a stat per folder, not per file
            identities[resolved.parent] = _folder_identity(resolved.parent)
        folder = identities[resolved.parent]
        if probe and folder not in probed:
            probed[folder] = case_insensitive(resolved.parent)
        if not probed.get(folder):
            return folder, resolved.name
        return folder, unicodedata.normalize("NFC", resolved.name).casefold()  # macOS's: nor NFC from NFD

    resolved = iter(where_all(file for files in outputs for file in files))
    keyed = [[key(next(resolved), True) for _ in files] for files in outputs]
    sources = {key(source_file, False): source for source, source_file in zip(inputs, where_all(inputs))}
    seen: dict[tuple, tuple[Path, Path]] = {}
    for source, files, keys in zip(inputs, outputs, keyed):
        for index, (file, file_key) in enumerate(zip(files, keys)):
            what = "the mask" if index == 0 and masks else f"the output {file.name}"
            if file_key in sources:
                whose = "it" if sources[file_key] == source else f"the input {sources[file_key]}"
                raise UserError(f"{what} of {source} would overwrite {whose}: choose another --output")
            if file_key in seen:
                other, other_file = seen[file_key]
                if other_file.name != file.name and other_file.name.casefold() == file.name.casefold():
                    raise UserError(f"{other} and {source} would write {other_file.name} and {file.name}, one file "
                                    f"in {file.parent}, which does not tell case apart: predict them into "
                                    "different folders")
                fix = ("give them different names, or predict them into different folders"
                       if other.stem == source.stem else "predict them into different folders")
                raise UserError(f"{other} and {source} would both write {file}: {fix}")
            seen[file_key] = source, file


def check_not_replacing_others(written: list[list[Path]]) -> None:
    """No existing file at an output name is replaced unless predict.py wrote it (its mark, or a <name>_OUT name):
    `-o data/masks/` named for the image folder's twin would otherwise overwrite the ground truth."""
    existing = [file for files in written for file in files if file.exists() and not file.is_dir()]
    # by its name only where it is no link: a downloaded folder's x_OUT.png linking to a file elsewhere
    foreign = [file for file in existing if not (OWN_OUTPUT_STEM.search(file.stem) and not file.is_symlink())
               and not written_by_predict(file)]
    if foreign:
        others = f" (and {counted(len(foreign) - 1, 'other file')} at output names)" if len(foreign) > 1 else ""
        raise UserError(f"{foreign[0]} exists without the mark of predict.py's outputs{others}: a ground-truth "
                        "mask, an image, or an output of a version before 2026-11-29? Predict into another folder, "
                        "or add --overwrite to replace them (as for .bmp masks, which have no room for the mark)")


def check_name_lengths(inputs: list[Path], outputs: list[list[Path]]) -> None:
    """Every file to be written (outputs[i]: input i's) named within what file systems take, said before
    predicting rather than after the images before it (a long input name's _overlay.png)."""
    for source, files in zip(inputs, outputs):
        for file in files:
            if len(os.fsencode(file.name)) > NAME_MAX:
                raise UserError(f"the output {file.name} of {source} would be named {len(os.fsencode(file.name))} "
                                f"bytes long, more than file systems take ({NAME_MAX}): rename the input, or give "
                                "-o FILE.png")


def has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def collate_by_size(items: list[dict]) -> dict:
    """In the worker: stack the images of one size among the --batch-size files, wherever they stand (the main
    process joins them with those of the next batches: regrouped); each image keeps its index, so outputs and
    predictions.csv are unaffected; unreadable files ride along."""
    groups: dict[tuple, dict] = {}
    for item in items:
        if "error" in item:
            continue
        group = groups.setdefault((item["size"], tuple(item["image"].shape)),
                                  {"indices": [], "images": [], "size": item["size"]})
        group["indices"].append(item["index"])
        group["images"].append(item["image"])
    for group in groups.values():
        group["images"] = torch.stack(group["images"])
    return {"groups": list(groups.values()), "errors": [item["error"] for item in items if "error" in item],
            "turned": [item["index"] for item in items if item.get("orientation", 1) != 1]}


@dataclass
class LoopWaits:
    """Seconds the prediction loop spent waiting, by cause: tells whether more --workers or --writers would help."""

    decoding: float = 0.0
    device: float = 0.0
    writing: float = 0.0


def speed_summary(count: int, seconds: float, waits: LoopWaits, on_gpu: bool, workers: int, writers: int,
                  cores: int, first_batch: tuple[float, int] | None = None) -> str:
    """One line for the end of a folder run; names the flag to raise when decoding or writing holds the loop.

    first_batch: (seconds until the first batch was under way, its images). The start (workers' first
    decoding, compilation) is then told apart from the steady rate that a longer folder would approach.
    """
    seconds = max(seconds, 1e-9)
    shares = [f"{waits.decoding / seconds:.0%} for decoding (--workers {workers})"]
    if on_gpu:
        shares.append(f"{waits.device / seconds:.0%} for the GPU")
    shares.append(f"{waits.writing / seconds:.0%} for writing (--writers {writers})")
    rate = f"{count / seconds:.2f} images/s"
    if first_batch is not None and first_batch[1] >= 1 and count >= 2 * first_batch[1] and seconds > first_batch[0]:
        started, first_count = first_batch
        rate += f"; {(count - first_count) / (seconds - started):.2f} after the first batch, at {started:.1f} s"
    line = f"predicted {counted(count, 'image')} in {seconds:.1f} s ({rate}); waited " + ", ".join(shares)
    if count < 2:  # one image: the shares say nothing about how a folder would go
        return line
    if waits.decoding / seconds >= 0.25 and workers < cores - 1:
        line += f": decoding holds the loop back, try --workers {min(cores - 1, max(1, 2 * workers))}"
    elif waits.writing / seconds >= 0.25:
        line += f": writing holds the loop back, try --writers {2 * writers}"
    return line


def hand_over(ready: dict, writer: MaskWriter, inputs: list[Path], outputs: list[Path], waits: LoopWaits) -> None:
    """Wait for a batch's copies to land, then queue each image for writing."""
    started = time.perf_counter()
    if "done" in ready:
        ready["done"].synchronize()
    waits.device += time.perf_counter() - started
    encoded = ready["encoded"].numpy().astype(ready["stored_dtype"], copy=False)
    fractions = (ready["counts"].double() / ready["pixels"]).tolist()
    classes = ready["classes"].numpy() if "classes" in ready else None
    probs = ready["probs"].numpy() if "probs" in ready else None
    started = time.perf_counter()
    for k, index in enumerate(ready["indices"]):
        writer.submit(index, inputs[index], outputs[index], encoded[k], fractions[k],
                      None if classes is None else classes[k], None if probs is None else probs[k])
    waits.writing += time.perf_counter() - started  # submit blocks while too many masks wait for the writers


def already_predicted(inputs: list[Path], outputs: list[Path], writer: MaskWriter, with_csv: bool) -> list[int]:
    """--skip-existing: the inputs whose output files all exist. Outputs are only ever renamed into place whole
    (utils/atomic_files.py), so an existing file is a finished one, but it may be another image's: a mask whose
    size is not its input's (another run's image of that name, in an output folder both share) is predicted again.
    For predictions.csv each such mask is read back and counted; one that cannot be read as this model's mask is
    predicted again."""
    done = [index for index, target in enumerate(outputs) if all(path.exists() for path in writer.output_files(target))]
    fits = writer.pool.map(lambda index: same_size(inputs[index], outputs[index]), done)
    done = [index for index, ok in zip(done, fits) if ok]
    if with_csv:
        readable = writer.pool.map(lambda index: writer.record_existing(index, inputs[index], outputs[index]), done)
        done = [index for index, ok in zip(done, readable) if ok]
    return done


def same_size(image: Path, mask: Path) -> bool:
    """Whether a mask file is the size of its image (headers only); False where either cannot be read."""
    try:
        return image_size(image) == image_size(mask)
    except UserError:
        return False


def rows_replaced(csv_path: Path | None, images: list[Path], masks: list[Path]) -> int:
    """The rows of an existing predictions.csv that this run's file will not hold: all of them, or with
    --skip-existing (this run's images and masks, whose rows it writes again) those of other images. A row is
    matched by its mask (by its image after a --no-save run), as typed where the earlier run started."""
    if csv_path is None or not csv_path.exists():
        return 0
    with open(csv_path, newline="", encoding="utf-8", errors=NAME_BYTES) as file:  # as MaskWriter writes it
        rows = [(row.get("image") or "", row.get("mask") or "") for row in csv.DictReader(file)]
    image_places, mask_places = _places(images), _places(masks)
    return sum(not (_among(mask, mask_places) if mask else _among(image, image_places)) for image, mask in rows)


def _places(paths: list[Path]) -> dict[str, set[tuple[str, ...]]]:
    """Per file name, the absolute paths (as typed and through links, in parts) of these files."""
    places: dict[str, set[tuple[str, ...]]] = {}
    for path, resolved in zip(paths, where_all(paths)):
        places.setdefault(path.name, set()).update({resolved.parts, path.absolute().parts})
    return places


def _among(typed: str, places: dict[str, set[tuple[str, ...]]]) -> bool:
    """Whether a path typed where an earlier run started names one of these files: the same file from here, or
    (a relative path typed in another folder) one whose path ends in its folders and name."""
    path = Path(typed)
    if not typed or path.name not in places:
        return False
    if where(path).parts in places[path.name] or path.absolute().parts in places[path.name]:
        return True
    tail = tuple(part for part in Path(os.path.normpath(typed)).parts if part != "..")
    return not path.is_absolute() and any(parts[-len(tail):] == tail for parts in places[path.name])


def csv_location(requested: str | None, outputs: list[str] | None, targets: list[Path]) -> Path | None:
    """--csv FILE as given; bare --csv: predictions.csv beside the (first) mask when -o is given, else here."""
    if requested is None:
        return None
    if requested:
        return Path(requested)
    return (targets[0].parent if outputs else Path(".")) / "predictions.csv"


def main(args: argparse.Namespace) -> int:
    args = as_parsed(args, get_args_parser())
    device = choose_device(args.device)
    # the pixel limit, the default dtype and the allocator setting are the run's only: a notebook that calls main()
    # gets its own back (--compile auto's fallback to eager stays set)
    with image_pixel_limit(args.max_image_pixels), float32_default(), freed_memory_kept(device):
        return predict_inputs(args, device)


def inputs_to_predict(args: argparse.Namespace, inputs: list[Path], outputs: list[Path], writer: MaskWriter,
                      csv_path: Path | None) -> list[int]:
    """The indices of the inputs to predict, once every output is known to be writable and to replace nothing it
    should not (checked before any work); those --skip-existing finds done are left out."""
    for target in {target.suffix.lower(): target for target in outputs}.values():  # one of each format
        writer.check_format(target)
    written = [writer.output_files(target) for target in outputs]
    check_distinct(inputs, written, masks=not args.no_save)  # the overlays, ... too
    check_name_lengths(inputs, written)
    done = already_predicted(inputs, outputs, writer, csv_path is not None) if args.skip_existing else []
    todo = sorted(set(range(len(inputs))) - set(done))
    if not args.overwrite:  # the outputs to be written: --skip-existing leaves the others as they are
        check_not_replacing_others([written[index] for index in todo])
    lost = rows_replaced(csv_path, inputs if args.skip_existing else [], outputs if args.skip_existing else [])
    if lost:  # said once every check passed: only a run that goes on replaces it
        whose = "images not among this run's inputs" if args.skip_existing else "an earlier run"
        print(f"note: {csv_path} is replaced: it held {counted(lost, 'row')} of {whose}, and this one lists only "
              "its own inputs (another --csv name keeps both)", file=sys.stderr)
    if args.skip_existing:
        print(f"--skip-existing: {len(done)} of {len(inputs)} images already have their outputs; "
              f"{len(todo)} to predict")
    return todo


class PredictionRun(NamedTuple):
    failed: list[str]  # why each unreadable input was skipped
    turned: list[int]  # inputs with an EXIF orientation: viewers show them turned, the masks are not
    waits: LoopWaits
    first_batch: tuple[float, int] | None  # (seconds, images) when the first batch was under way


def predict_batches(loader: Iterable[dict], batch_size: int, total: int,
                    logits_of: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor], encode: MaskEncoder,
                    writer: MaskWriter, inputs: list[Path], outputs: list[Path]) -> PredictionRun:
    """The loop: the loader's image groups, regrouped into batches of one size, predicted and encoded on the
    device, handed to the writer threads one batch late (its results are copied to the host while the next batch
    computes); the writers are always closed, so that every mask begun is written whole."""
    failed: list[str] = []
    turned: list[int] = []
    waits = LoopWaits()
    waiting = None
    first_batch = None
    started = time.perf_counter()
    with progress_bar(total=total, desc="predict", unit="img", disable=total < 2) as bar:

        def decoded_groups() -> Iterator[dict]:
            batches = iter(loader)
            while True:
                asked = time.perf_counter()
                batch = next(batches, None)
                waits.decoding += time.perf_counter() - asked
                if batch is None:
                    return
                for error in batch["errors"][:max(0, SKIPPED_LISTED - len(failed))]:  # not thousands of lines
                    bar.write(f"warning: skipped {error}", file=sys.stderr)
                failed.extend(batch["errors"])
                turned.extend(batch["turned"])
                bar.update(len(batch["errors"]))
                yield from batch["groups"]

        try:
            for group in regrouped(decoded_groups(), batch_size):
                ready = encode(logits_of(group["images"], group["size"]), group["indices"])
                if waiting is not None:
                    hand_over(waiting, writer, inputs, outputs, waits)
                waiting = ready
                bar.update(len(group["indices"]))
                first_batch = first_batch or (time.perf_counter() - started, len(group["indices"]))
            if waiting is not None:
                hand_over(waiting, writer, inputs, outputs, waits)
        finally:
            closing = time.perf_counter()
            writer.close()
            waits.writing += time.perf_counter() - closing
    return PredictionRun(failed, turned, waits, first_batch)


def predict_inputs(args: argparse.Namespace, device: torch.device) -> int:
    """predict.py's run: every input predicted and written; 1 when some could not be read, else 0."""
    precision = choose_precision(device, args.amp, args.precision)
    options = inference_options(args)
    check_prediction_flags(args)
    check_flag("--writers", args.writers, args.writers is None or args.writers >= 1, "a whole number of at least 1")
    model, checkpoint = load_model(args.model, device, n_classes=args.classes, bilinear=args.bilinear)
    model = fuse_batchnorm(model, in_place=True)  # the unfused original is not needed
    threshold, note = settle_mask_threshold(args.mask_threshold, model.n_classes)
    if note:
        print(note, file=sys.stderr)
    scale = inference_scale(checkpoint, args.scale)
    inputs, left_out = expand_inputs(args.input, keep_repeats=len(args.output or []) > 1)
    if left_out:
        print(f"note: left out {counted(left_out, 'file')} named like the outputs of a run without --output "
              f"(<name>{DEFAULT_OUTPUT_TAG}.png and its _overlay/_viz/_probs files); name such a file explicitly "
              "to predict it", file=sys.stderr)
    outputs = output_paths(inputs, args.output)
    csv_path = csv_location(args.csv, args.output, outputs)
    if csv_path is not None:
        check_output_file(csv_path, "--csv", (".csv",), ours=lambda head: head.startswith(CSV_HEADER))
    if args.skip_existing and args.no_save:
        raise UserError("--skip-existing leaves out the inputs whose masks exist: it needs the masks written, "
                        "leave out --no-save")
    on_gpu = device.type == "cuda"
    viz = ("show" if has_display() else "save") if args.viz else None
    writers = args.writers or (8 if on_gpu else 1)
    writer = MaskWriter(model.mask_values, model.mask_palette, model.n_channels,
                        OutputOptions(not args.no_save, args.save_probs, args.overlay, viz), threads=writers,
                        ignore_value=model.ignore_value)
    todo = inputs_to_predict(args, inputs, outputs, writer, csv_path)
    abandoned = remove_abandoned_temporaries([*(path for target in outputs for path in writer.output_files(target)),
                                              *([csv_path] if csv_path is not None else [])])  # names checked
    if abandoned:
        print(f"note: removed {counted(len(abandoned), 'unfinished file')} left by a predict.py killed while writing "
              f"(e.g. {abandoned[0]})", file=sys.stderr)
    workers = prediction_workers(args.workers, device, len(todo))
    net = compile_model(model, args.compile) if should_compile(args.compile, device, len(todo)) else model
    batch_size = args.batch_size or default_prediction_batch(device, [inputs[index] for index in todo], scale)
    loader = WorkerLoader(ImageFiles(inputs, scale, model.n_channels, todo), batch_size=batch_size,
                          num_workers=workers, collate_fn=collate_by_size, pin_memory=on_gpu,
                          prefetch_factor=4 if workers else None)
    notify = notify_once()
    encode = MaskEncoder(writer.table, max(model.n_classes, 2), device, writer.needs_class_indices,
                         args.save_probs, threshold)
    started = time.perf_counter()
    run = predict_batches(loader, batch_size, len(todo), lambda images, size: predict_logits(
        net, images, device, precision, output_size=size, options=options, notify=notify), encode, writer,
        inputs, outputs)
    failed, turned = run.failed, run.turned
    if len(todo) > 1:
        print(speed_summary(len(todo) - len(failed), time.perf_counter() - started, run.waits, on_gpu, workers,
                            writers, os.cpu_count() or 1, run.first_batch))
    if csv_path is not None:
        writer.write_csv(csv_path)
        print(f"per-image class fractions written to {csv_path}")
    if turned:
        names = ", ".join(inputs[index].name for index in turned[:3]) + (", ..." if len(turned) > 3 else "")
        carry = "images carry" if len(turned) > 1 else "image carries"
        print(f"note: {len(turned)} {carry} an EXIF orientation ({names}): viewers show them turned or "
              f"mirrored, while their masks match the pixels as stored; for masks of the upright view, {UPRIGHT_FIX}",
              file=sys.stderr)
    if len(inputs) == 1 and todo and not failed and not args.no_save:
        print(f"mask of {inputs[0]} saved to {outputs[0]}")
    elif len(todo) > len(failed) and not args.no_save:  # found by a review: a folder's run did not say where
        folders = sorted({str(outputs[index].parent) for index in todo})
        saved_in = folders[0] if len(folders) == 1 else f"{len(folders)} folders ({folders[0]}, ...)"
        saved = len(todo) - len(failed)
        print(f"{'mask' if saved == 1 else 'masks'} of {counted(saved, 'image')} saved in {saved_in}")
    if failed:
        others = "; the others were predicted" if len(failed) < len(todo) else ""
        listed = "listed above" if len(failed) <= SKIPPED_LISTED else f"the first {SKIPPED_LISTED} listed above"
        print(f"error: {len(failed)} of {counted(len(todo), 'image')} could not be predicted ({listed} as "
              f"skipped){others}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
