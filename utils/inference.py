"""One forward path from uint8 images to logits, shared by validation, evaluate.py and predict.py.

Whole images when they fit in memory, overlapping tiles when they do not (utils/tiling.py), test-time
augmentation on top of either. Logits stay the currency: with TTA the averaged probabilities are turned back
into logits (log-probabilities), so thresholding, argmax and resizing work the same on every path.
"""

import argparse
import contextlib
import copy
import dataclasses
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from unet import CLASSIC_BASE_CHANNELS, MIN_SIDE

from .checkpoint import check_scale_flag, inference_scale
from .data_loading import (
    check_model_input_size,
    check_workers_flag,
    image_in_memory,
    image_size,
    image_to_tensor,
    in_memory_name,
    model_input,
    scaled_size,
)
from .device import PRECISIONS, Precision, choose_precision, return_freed_memory
from .errors import UserError, check_flag
from .progress import progress_bar
from .tiling import sliding_window, tile_starts

TTA_CHOICES = ("none", "flip", "d4")
# Peak live tensors of one eval-mode forward pass per input pixel, measured on the CPU with
# bench/inference_memory.py: 1904 B in fp32, 952 B under bf16 autocast; the margin covers cuDNN workspaces.
INFERENCE_BYTES_PER_PIXEL = {"fp32": 2500, "half": 1300}
# Memory of a forward pass that does not scale with the width (the input, the logits, the class map), as a share
# of the classic model's: per pixel of a 1024x1024 image through predict_logits, 192 B at 1 base channel
# against 1,928 at 64 in fp32, 96 against 1,019 in bf16 (2-core CPU, peak RSS, 2026-11-29).
WIDTH_INDEPENDENT_MEMORY = 0.1
UNKNOWN_RAM = 4 * 2**30  # where the system does not say: a small laptop's, so that memory budgets stay modest
CPU_MEMORY_CAP = 2 * 2**30  # --tile auto on a CPU: a few GiB for the whole process, even for huge images
MAX_TILE_BATCH = 16
# A CPU gains nothing from batching tiles of this many pixels or more, and a lot below it: a 960x640 image in
# 64-pixel tiles took 18.8 s one tile at a time, 8.3 s sixteen at a time; 256-pixel tiles 8.8 s either way
# (2-core EPYC, fp32 random weights, 2026-11-27; bench/README.md, "Tiled inference").
CPU_TILE_BATCH_PIXELS = 256 * 256
MIN_TILE = 64
TILE_MULTIPLE = MIN_SIDE  # the U-Net halves the size four times: tiles of a multiple of 16 pad nowhere


@dataclass(frozen=True)
class InferenceOptions:
    """How to run the model on an image: tile = "auto" (whole image if it fits, else tiles), "none" or a size."""

    tile: int | str = "auto"
    overlap: float = 0.25
    tta: str = "none"
    tile_batch: int | None = None  # None: plan_tiles decides (what fits; on a CPU, 256x256 pixels' worth)
    max_memory: float | None = None  # GiB for "auto"; None: what the device has free
    progress: bool = False  # a bar over the tile batches of an image that needs many (the CLIs: minutes on a CPU)


WHOLE_IMAGE = InferenceOptions(tile="none")
TILE_PROGRESS_MIN_BATCHES = 16  # fewer tile batches take seconds: no bar


def parse_tile(text: str) -> int | str:
    """--tile: auto, none, or a tile side in pixels (a multiple of 16, at least 64)."""
    if text in ("auto", "none"):
        return text
    try:
        size = int(text)
    except ValueError:
        raise UserError(f"--tile must be auto, none or a size in pixels, got {text!r}") from None
    if not tile_size_ok(size):
        raise UserError(f"--tile {size}: use a multiple of {TILE_MULTIPLE} of at least {MIN_TILE} (e.g. 512)")
    return size


def tile_size_ok(tile: object) -> bool:
    """auto, none, or a whole number of pixels the U-Net halves four times, of at least MIN_TILE."""
    return tile in ("auto", "none") or (_number(tile, whole=True) and tile >= MIN_TILE and tile % TILE_MULTIPLE == 0)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """--tile, --overlap, --tile-batch, --max-memory and --tta, the same in predict.py and evaluate.py."""
    parser.add_argument("--tile", type=parse_tile, default="auto", metavar="auto|none|N",
                        help="predict in overlapping N x N tiles blended without seams; auto = the whole image when "
                             "it fits in memory, else the largest tiles that do; none = always whole "
                             "(default: %(default)s)")
    parser.add_argument("--overlap", type=float, default=0.25,
                        help="overlap of neighbouring tiles, a fraction of the tile from 0 to 0.9 (default: "
                             "%(default)s)")
    parser.add_argument("--tile-batch", type=int, default=None, metavar="N",
                        help="tiles per forward pass (default: as many as fit in memory on a GPU, up to 16; on a "
                             "CPU as many as make 256x256 pixels, 1 for larger tiles)")
    parser.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                        help="memory the forward pass may use, for --tile auto (default: 80%% of the GPU's free "
                             "memory; on a CPU half the available RAM, at most 2 GiB)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="none",
                        help="test-time augmentation: average the probabilities over a horizontal flip (flip) or "
                             "all 8 flips and quarter turns (d4); costs 2x or 8x the time (default: %(default)s)")


# Images per CPU forward pass left out of --batch-size: enough to fill 2**18 pixels (a 512x512 image), as
# measured with bench/cpu_batch_size.py: 32x32 images ran at 36.6/s one at a time and 232/s 64 at a time,
# 128x128 at 10.9/s and 16.9/s (16), 256x256 at 3.8/s and 4.3/s (4); a CPU's cost per call dominates small images.
CPU_BATCH_PIXELS = 2**18
MAX_CPU_BATCH = 64
SIZES_LOOKED_AT = 256  # image headers read to choose it: a folder of 100,000 tiles is not read twice


def prediction_workers(requested: int | None, device: torch.device, count: int) -> int:
    """predict.py's and evaluate.py's loader workers for count images: --workers as given (no more than the
    images), else decoding keeps up with a GPU given several cores; on a CPU one worker overlaps it with the model
    (more would take the model's cores); none for one image."""
    if requested is not None:
        return min(requested, count)
    if count < 2:
        return 0
    cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1)) if device.type == "cuda" else int(cores > 1)


def default_prediction_batch(device: torch.device, images: Sequence[Path], scale: float) -> int:
    """predict.py's and evaluate.py's --batch-size when left out: 16 on a GPU (within --max-memory); on a CPU
    as many images of the largest size among SIZES_LOOKED_AT of them, spread over the list, as fill CPU_BATCH_PIXELS
    (a power of two; a folder of tiles with a few large photos batches by the photos); 1 when none reads."""
    if device.type == "cuda":
        return 16
    count, looked_at = len(images), SIZES_LOOKED_AT
    spread = range(count) if count <= looked_at else \
        sorted({round(i * (count - 1) / (looked_at - 1)) for i in range(looked_at)})
    largest = 0
    for path in (images[index] for index in spread):  # the first and the last among them
        try:
            width, height = scaled_size(*image_size(path), scale)
        except UserError:  # said when its turn comes
            continue
        largest = max(largest, width * height)
    batch = 1
    while 0 < largest and batch < MAX_CPU_BATCH and 2 * batch * largest <= CPU_BATCH_PIXELS:
        batch *= 2
    return batch


DEFAULT_MASK_THRESHOLD = 0.5


def add_mask_threshold_argument(parser: argparse.ArgumentParser) -> None:
    """--mask-threshold, the same in predict.py and evaluate.py."""
    parser.add_argument("--mask-threshold", "-t", type=float,
                        help="probability threshold for one-class (sigmoid) models; models of 2 or more classes "
                             f"take each pixel's most probable class (default {DEFAULT_MASK_THRESHOLD})")


def settle_mask_threshold(typed: float | None, n_classes: int) -> tuple[float, str | None]:
    """The threshold to apply, and a note when one was typed for a softmax model, which has none to apply (said,
    not silently dropped, even when it is the default value)."""
    if typed is None or n_classes == 1:
        return (DEFAULT_MASK_THRESHOLD if typed is None else typed), None
    return typed, (f"note: --mask-threshold {typed:g} is left unused: it decides one-class (sigmoid) models, and "
                   f"this model of {n_classes} classes gives each pixel its most probable class")


def check_prediction_flags(args: argparse.Namespace) -> None:
    """--batch-size, --workers, --scale and --mask-threshold: defined by predict.py and evaluate.py alike."""
    check_flag("--batch-size", args.batch_size, args.batch_size is None or args.batch_size >= 1,
               "a whole number of at least 1")
    check_workers_flag(args.workers)
    check_scale_flag(args.scale)
    check_flag("--mask-threshold", args.mask_threshold, args.mask_threshold is None or 0 < args.mask_threshold < 1,
               "a probability between 0 and 1")


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    options = InferenceOptions(args.tile, args.overlap, args.tta, args.tile_batch, args.max_memory, progress=True)
    check_options(options)
    return options


MAX_OVERLAP = 0.9  # tiles 10x denser than side by side on each axis: ~100 predictions of each pixel (x8 with d4)


def _number(value: object, whole: bool = False) -> bool:
    """A number as Python or numpy holds it, and not a bool (True is no tile size or overlap)."""
    return isinstance(value, numbers.Integral if whole else numbers.Real) and not isinstance(value, bool)


def check_options(options: InferenceOptions, python: bool = False) -> None:
    """The options' ranges, named as flags for the CLIs, or as fields (options.tta) for predict_image's callers."""
    def name(field: str) -> str:
        return f"options.{field}" if python else f"--{field.replace('_', '-')}"

    tile, overlap, tile_batch, max_memory = options.tile, options.overlap, options.tile_batch, options.max_memory
    check_flag(name("tile"), repr(tile), tile_size_ok(tile),
               f"auto, none or a size in pixels, a multiple of {TILE_MULTIPLE} of at least {MIN_TILE}")
    check_flag(name("overlap"), repr(overlap), _number(overlap) and 0 <= overlap <= MAX_OVERLAP,
               f"a fraction of the tile from 0 to {MAX_OVERLAP} (usually 0.25-0.5): above it each pixel would be "
               "predicted hundreds of times, for minutes per image")
    check_flag(name("tta"), repr(options.tta), options.tta in TTA_CHOICES, f"one of {', '.join(TTA_CHOICES)}")
    check_flag(name("tile_batch"), repr(tile_batch), tile_batch is None or (
        _number(tile_batch, whole=True) and tile_batch >= 1), "a whole number of at least 1")
    check_flag(name("max_memory"), repr(max_memory), max_memory is None or (
        _number(max_memory) and 0 < max_memory < math.inf), "a positive number of GiB")


def _plain_numbers(options: InferenceOptions) -> InferenceOptions:
    """numpy numbers (np.int64(512) from a sweep) as Python's, which the tiling code tests for: checked, a numpy
    tile size was taken, and then ran the whole image untiled."""
    def plain(value: object) -> object:
        if _number(value, whole=True):
            return int(value)
        return float(value) if _number(value) else value

    return dataclasses.replace(options, tile=plain(options.tile), overlap=plain(options.overlap),
                               tile_batch=plain(options.tile_batch), max_memory=plain(options.max_memory))


def _check_predict_image_arguments(scale: object, threshold: object, options: object, precision: object) -> None:
    """predict_image's arguments, named as in Python: a typo must not run something else without a word."""
    check_flag("scale", repr(scale), scale is None or (_number(scale) and 0 < scale < math.inf),
               "None (the model's own) or a number above 0")
    check_flag("threshold", repr(threshold), _number(threshold) and 0 < threshold < 1,
               "a probability between 0 and 1")
    if not isinstance(options, InferenceOptions):
        raise UserError(f"options must be an InferenceOptions (utils.inference), got {options!r}")
    check_options(options, python=True)
    check_flag("precision", repr(precision), precision is None or isinstance(precision, Precision) or
               precision in PRECISIONS, f"None, one of {', '.join(PRECISIONS)} or a utils.device.Precision")


def memory_share(base_channels: int) -> float:
    """The memory a model of this width needs per pixel, as a share of the classic model's: the feature maps
    scale with the width, the input and the outputs do not. Training's budget (train.default_batch_size) too."""
    return WIDTH_INDEPENDENT_MEMORY + (1 - WIDTH_INDEPENDENT_MEMORY) * base_channels / CLASSIC_BASE_CHANNELS


def bytes_per_pixel(precision: Precision, base_channels: int = CLASSIC_BASE_CHANNELS) -> int:
    """The figure above for a model of this width (memory_share)."""
    classic = INFERENCE_BYTES_PER_PIXEL["fp32" if precision.dtype is None else "half"]
    return math.ceil(classic * memory_share(base_channels))


def available_ram() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory (macOS), else UNKNOWN_RAM (Windows)."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no os.sysconf on Windows
        return UNKNOWN_RAM


def memory_budget(device: torch.device, max_memory: float | None = None) -> int:
    """Bytes the forward pass may use: --max-memory, else 80% of the GPU's free memory (what PyTorch caches
    counts as free), else on a CPU half the available RAM, at most CPU_MEMORY_CAP."""
    if max_memory is not None:
        return int(max_memory * 2**30)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(0.8 * (free + cached))
    return min(available_ram() // 2, CPU_MEMORY_CAP)


def plan_tiles(pixels_budget: int, device: torch.device, tile_batch: int | None = None,
               side: int | None = None) -> tuple[int, int]:
    """(tile side, tiles per batch): the given side (--tile N) or the largest square tile (a multiple of 16) that
    fits, then as many as fit; on a CPU only as many as make CPU_TILE_BATCH_PIXELS (one, for large tiles)."""
    side = side or max(MIN_TILE, math.isqrt(max(pixels_budget, 1)) // TILE_MULTIPLE * TILE_MULTIPLE)
    if tile_batch is not None:
        return side, tile_batch
    fits = pixels_budget // (side * side)
    if device.type != "cuda":
        return side, max(1, min(fits, CPU_TILE_BATCH_PIXELS // (side * side)))
    return side, max(1, min(MAX_TILE_BATCH, fits))


def fuse_batchnorm(model: nn.Module, in_place: bool = False) -> nn.Module:
    """An eval-only model with each Conv2d -> BatchNorm2d pair folded into one convolution (with a bias): a copy,
    or with in_place the model itself (the scripts, which have no use for the original: the copy cost 0.5 s and
    210 MB at the classic width).

    Same function (up to rounding), one pass less over every activation: ~5% faster prediction on a CPU. The
    result must not be trained or saved.
    """
    fused = (model if in_place else copy.deepcopy(model)).eval()
    for module in fused.modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                    setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                    setattr(module, norm_name, nn.Identity())
    return fused


def is_out_of_memory(error: BaseException) -> bool:
    message = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in message or "can't allocate memory" in message


def model_logits(model: nn.Module, images: torch.Tensor, device: torch.device, precision: Precision) -> torch.Tensor:
    """uint8 (B, C, H, W) -> fp32 logits at the same size: normalised on the device, channels_last, autocast."""
    inputs = model_input(images, device)
    with precision.autocast():
        return model(inputs).float()


def _d4(tta: str) -> list[tuple[int, bool]]:
    """(quarter turns, horizontal flip) pairs: the identity; with flip its mirror; with d4 all 8 symmetries."""
    if tta == "none":
        return [(0, False)]
    if tta == "flip":
        return [(0, False), (0, True)]
    return [(turns, flip) for turns in range(4) for flip in (False, True)]


def _transform(images: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    images = torch.rot90(images, turns, dims=(-2, -1)) if turns else images
    return images.flip(-1) if flip else images


def _untransform(logits: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    logits = logits.flip(-1) if flip else logits
    return torch.rot90(logits, -turns, dims=(-2, -1)) if turns else logits


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for one-channel (binary) models, softmax over classes otherwise."""
    return torch.sigmoid(logits) if logits.size(1) == 1 else torch.softmax(logits, dim=1)


def probabilities_to_logits(probs: torch.Tensor) -> torch.Tensor:
    """The inverse of probabilities(), clamped so that certain pixels stay finite."""
    probs = probs.clamp(1e-7, 1 - 1e-7)
    if probs.size(1) == 1:
        return torch.log(probs) - torch.log1p(-probs)
    return torch.log(probs)


class _Runner:
    """Runs one batch of same-size images whole or in tiles, falling back to tiles when memory runs out."""

    def __init__(self, model: nn.Module, device: torch.device, precision: Precision, options: InferenceOptions,
                 notify: Callable[[str], None] | None):
        self.model, self.device, self.precision = model, device, precision
        self.options = _plain_numbers(options)  # predict_logits' and predict_image's callers may pass numpy numbers
        width = _through_wrappers(model, "base_channels", CLASSIC_BASE_CHANNELS)
        self.bytes_per_pixel = bytes_per_pixel(precision, width)
        self.notify = notify or (lambda message: None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return model_logits(self.model, images, self.device, self.precision)

    def tile_forward(self, images: torch.Tensor) -> torch.Tensor:
        """Tiles bound the memory of a large image: their activations go back to the OS (on a CPU) instead of
        staying in the heap, where they would leave holes between the image's long-lived buffers."""
        logits = self.forward(images)
        return_freed_memory(self.device)
        return logits

    def tiled(self, images: torch.Tensor, tile: int, tile_batch: int) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        height, width = images.shape[-2:]
        overlap = self.options.overlap
        tiles = len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))
        batches = math.ceil(tiles / tile_batch) * len(images)
        with progress_bar(total=batches, desc=f"tiles of {width}x{height}", unit="batch", leave=False,
                          disable=not self.options.progress or batches < TILE_PROGRESS_MIN_BATCHES) as bar:
            def forward(crops: torch.Tensor) -> torch.Tensor:
                logits = self.tile_forward(crops)
                bar.update()
                return logits

            return torch.stack([sliding_window(forward, image, tile, overlap, tile_batch) for image in images])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        options = self.options
        height, width = images.shape[-2:]
        if isinstance(options.tile, int):
            budget = memory_budget(self.device, options.max_memory) // self.bytes_per_pixel
            return self.tiled(images, *plan_tiles(budget, self.device, options.tile_batch, side=options.tile))
        if options.tile == "auto":
            budget = memory_budget(self.device, options.max_memory) // self.bytes_per_pixel
            if height * width > budget:
                tile, tile_batch = plan_tiles(budget, self.device, options.tile_batch)
                self.notify(f"note: {width}x{height} is predicted in tiles of {tile}: whole, it does not fit in the "
                            "memory the forward pass may use")  # no figures that vary: said once per size
                return self.tiled(images, tile, tile_batch)
            per_chunk = max(1, budget // (height * width))
        else:
            budget, per_chunk = None, len(images)
        try:
            return torch.cat([self.forward(chunk) for chunk in images.split(per_chunk)])
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
        return self.after_out_of_memory(images, budget)

    def after_out_of_memory(self, images: torch.Tensor, budget: int | None) -> torch.Tensor:
        """Whole-image inference ran out of memory: tiles, halving their area until they fit."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        height, width = images.shape[-2:]
        pixels = min(budget or height * width, height * width) // 2
        while True:
            tile, tile_batch = plan_tiles(pixels, self.device, self.options.tile_batch)
            self.notify(f"note: out of memory predicting {width}x{height} whole: using tiles of {tile} "
                        f"(set --tile to choose them)")
            try:
                return self.tiled(images, tile, tile_batch)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_out_of_memory(error):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if tile <= MIN_TILE:
                    raise UserError(f"out of memory even with tiles of {MIN_TILE} pixels on {self.device}: "
                                    "free memory or use --device cpu") from None
                pixels = tile * tile // 4


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block, then each put back as it was (a model may keep some in eval)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    precision: Precision,
    output_size: tuple[int, int] | None = None,
    options: InferenceOptions = WHOLE_IMAGE,
    notify: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> fp32 logits, bilinearly resized to output_size = (height, width), torch's order
    (load_scaled_image gives the original size in PIL's (width, height): reverse it).

    options chooses whole-image or tiled inference and test-time augmentation; the default is the plain
    whole-image forward pass (validation's, except under --crop). notify receives a line when memory forces tiles.
    The model runs in eval mode, and is put back in the mode it was in: in training mode, BatchNorm would use each
    batch's statistics (a different prediction) and overwrite its running ones.
    """
    run = _Runner(model, device, precision, options, notify)
    symmetries = _d4(options.tta)
    with eval_mode(model):
        if len(symmetries) == 1:
            logits = run(images)
        else:
            probs = None
            for turns, flip in symmetries:
                view = _untransform(probabilities(run(_transform(images, turns, flip))), turns, flip)
                probs = view if probs is None else probs.add_(view)
            logits = probabilities_to_logits(probs / len(symmetries))
    if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
        logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
    return logits


def predict_image(model: nn.Module, image: Image.Image | np.ndarray | torch.Tensor, scale: float | None = None,
                  threshold: float = DEFAULT_MASK_THRESHOLD, options: InferenceOptions = WHOLE_IMAGE,
                  precision: Precision | str | None = None) -> torch.Tensor:
    """The class map (H, W) at the image's own size of one image a program holds (a notebook's): a PIL image, an
    HxW or HxWxC array, or a CxHxW tensor, read and resized as predict.py reads files.

    Runs on the model's device. scale: the model's own (model.scale, from its checkpoint) unless given, else 0.5;
    precision: the device's default, as in predict.py, unless given ("fp32", "bf16", "fp16" or a Precision).
    model.mask_values[i] is the mask value of class i.
    """
    parameter = next(model.parameters())
    if parameter.dtype != torch.float32:  # the precision is autocast's, around a float32 model
        raise ValueError(f"predict_image runs float32 models, not {parameter.dtype}: call model.float() first "
                         "(precision= chooses bf16 or fp16 autocast)")
    _check_predict_image_arguments(scale, threshold, options, precision)
    device = parameter.device
    if isinstance(precision, str):
        precision = choose_precision(device, precision=precision)
    scale = inference_scale({"scale": _through_wrappers(model, "scale", None)}, scale)
    pixels = image_in_memory(image, _through_wrappers(model, "n_channels", 3))
    height, width = pixels.shape[:2]
    source = in_memory_name(image)
    check_model_input_size(width, height, scale, source)
    scaled = image_to_tensor(pixels, scaled_size(width, height, scale, source))
    logits = predict_logits(model, scaled[None], device, precision or choose_precision(device), (height, width),
                            options)
    return logits_to_classes(logits, threshold)[0].cpu()


def _through_wrappers(model: nn.Module, name: str, default: object) -> object:
    """An attribute of the U-Net inside DataParallel/DDP (.module) or torch.compile (._orig_mod) wrappers: on
    DataParallel, model.scale is missing, and an image would be read at 0.5 instead of the model's own scale."""
    while not hasattr(model, name):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return default
        model = inner
    return getattr(model, name)


def notify_once() -> Callable[[str], None]:
    """A notify callback that writes each distinct note once (one line per image size, not per image), on stderr
    and on a line of its own beside a progress bar."""
    seen: set[str] = set()

    def notify(message: str) -> None:
        if message not in seen:
            seen.add(message)
            tqdm.write(message, file=sys.stderr)

    return notify


def logits_to_classes(logits: torch.Tensor, threshold: float = DEFAULT_MASK_THRESHOLD) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, H, W) class indices: sigmoid > threshold for one channel, else argmax."""
    if logits.size(1) == 1:
        return (torch.sigmoid(logits[:, 0]) > threshold).long()
    if logits.device.type != "cpu":
        return logits.argmax(dim=1)
    # On a CPU, argmax across the strided class dimension is ~10x slower than one pass per class
    # (160-225 ms against ~15 ms for two classes at 1918x1280). Same result: ties and NaN go to the first one.
    best = logits[:, 0]
    classes = torch.zeros(best.shape, dtype=torch.long)
    for index in range(1, logits.size(1)):
        candidate = logits[:, index]
        better = torch.le(candidate, best).logical_not_().logical_and_(best == best)  # > or NaN, unless best is NaN
        classes.masked_fill_(better, index)
        if index + 1 < logits.size(1):
            best = torch.maximum(best, candidate)  # NaN sticks, as in argmax
    return classes
