"""Train a U-Net on a folder of images and a folder of masks.

    python train.py --amp                         # data/imgs + data/masks, Carvana naming detected
    python train.py --imgs X --masks Y -c 3 -e 20 # three classes, twenty epochs
    python train.py --resume auto                 # continue checkpoints/last.pth
    torchrun --nproc_per_node=4 train.py          # DistributedDataParallel, one process per GPU

Read top to bottom: arguments, device, precision and processes, data, model and optimizer, resume, the epoch loop.
"""

import argparse
import hashlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from unet import CLASSIC_BASE_CHANNELS, LONE_IMAGE_MIN_SIDE, MAX_BASE_CHANNELS, UNet
from utils.atomic_files import check_writable_folder
from utils.augmentation import AUGMENT_PRESETS, train_augmentation
from utils.batch_cache import BatchCache
from utils.batchnorm import calibration_keys, recalibrate_batchnorm
from utils.check_data import INSTANCE_LABELS_FIX, DataCheck, check_dataset
from utils.checkpoint import (
    CheckpointWriter,
    check_training_state,
    load_checkpoint,
    model_from_checkpoint,
    optimizer_state_for,
    remove_unfinished_saves,
    restore_rng_state,
    rng_state,
    saved_score,
    unwrap_model,
)
from utils.data_loading import (
    Pair,
    SegmentationDataset,
    add_image_limit_argument,
    check_model_input_size,
    check_workers_flag,
    image_pixel_limit,
    make_loader,
    model_input,
    parse_crop,
    require_folder,
    scaled_size,
    stop_loader_workers,
)
from utils.device import (
    COMPILE_CHOICES,
    COMPILE_MIN_TRAINING_IMAGES,
    Precision,
    add_device_arguments,
    choose_device,
    choose_precision,
    compile_model,
    float32_default,
    freed_memory_kept,
    memory_format,
    should_compile,
    sum_dtype,
)
from utils.dice_score import class_weights_from_pixels, segmentation_loss
from utils.distributed import (
    World,
    all_reduce_sum,
    barrier,
    buffers_from_rank_0,
    check_same_everywhere,
    close_world,
    init_world,
    smallest_everywhere,
)
from utils.errors import UserError, as_parsed, check_flag, counted, exit_code_of, run_cli
from utils.inference import (
    WHOLE_IMAGE,
    InferenceOptions,
    is_out_of_memory,
    logits_to_classes,
    memory_share,
    notify_once,
)
from utils.mask_encoding import (
    MaskValue,
    add_binarize_argument,
    binarize_threshold,
    check_binarize_flag,
    check_classes,
    check_classes_flag,
    complete_mask_values,
    short_values,
    unwritable_values,
)
from utils.nan_guard import NonFiniteGuard
from utils.progress import progress_bar
from utils.run_folder import (
    check_later_epochs_kept,
    check_run_folder,
    resume_path,
    set_aside_earlier_run,
    settle_earlier_run,
)
from utils.run_lock import RunLock
from utils.run_log import WANDB_MODES, RunLog, check_wandb_environment, default_wandb_mode
from utils.sampling import EpochBatches, EpochOrder, RepeatedItems, SeededItems, same_size_batches
from utils.scoring import evaluate, set_image_means
from utils.signals import GracefulStop, sigterm_as_exit

DEFAULT_AUGMENT = "light"  # chosen by the held-out Dice measured in the README
# --epochs auto: the reference's 5, or more where 5 epochs make fewer optimizer steps than this. Sets of 16-20 small
# images trained 5 epochs of 4-5 steps to a held-out Dice of 0.00-0.18 (16 base channels); 500 steps reached 0.94
# and 0.96 at the classic width (bench/README.md, "Epochs for small sets").
DEFAULT_EPOCHS = 5
AUTO_EPOCHS_MIN_STEPS = 500
# At the end of an epoch last.pth is refreshed only if the last save is at least this old (a run's first epoch,
# a best one, --keep-epochs, the last epoch and one after a failed save always save): a small set's epochs of a
# second or two would otherwise write a ~370 MB file each, 125 of them in a 500-step run of 16 images. A kill
# then loses less than this.
EPOCH_SAVE_GAP_S = 60
# Share of --crop windows centred on an object: nnU-Net's 1/3; measured here (README): +0.034 held-out Dice on
# small objects, no change on large ones.
DEFAULT_CROP_FOREGROUND = 0.33
MAX_CROPS_PER_IMAGE = 10_000  # a 20000x20000 scan holds ~6,100 windows of 256x256
# Training memory per input pixel and image (saved activations + backward transients), measured with
# saved-tensor hooks on the CPU: 6.5 KB fp32 and 3.4 KB bf16 saved; activation checkpointing keeps ~4%.
BYTES_PER_PIXEL = {"fp32": 8500, "half": 4500, "checkpointed": 1200}
MAX_AUTO_BATCH = 16
# Batches of 4 on a CPU, larger for tiny images only. Batching pays in images/s up to ~2**17 pixels a batch
# (bench/cpu_batch_size.py, bf16: 32x32 images trained at 20.8/s 4 at a time and 43.9/s 16 at a time, 64x64 at
# 12.9/s and 19.0/s), but fewer steps cost held-out Dice in equal wall-clock time on 64x64 tiles (-0.06 and
# -0.08, two seeds) while 32x32 tiles gained (+0.08): bench/README.md, "Batch size by image size".
CPU_TRAINING_BATCH_PIXELS = 2**14
DATA_FOLDERS = (("imgs", Path("data/imgs")), ("masks", Path("data/masks")))  # when --imgs/--masks are left out


def default_workers(device: torch.device, world: World) -> int:
    """Decoding processes per training process.

    A GPU eats batches faster than one core decodes them: all cores but one (shared between the processes
    on the node), at most 16. A CPU trains ~1 image/s per core while one worker decodes ~15/s, so a worker
    per 8 cores; the workers run at low priority so they never take the cores from the training threads.
    """
    cores = max(1, (os.cpu_count() or 2) // world.local_size)
    if device.type == "cuda":
        return max(1, min(16, cores - 1))
    return max(1, cores // 8)


def default_batch_size(device: torch.device, precision: Precision, pixels: int, checkpointing: bool,
                       base_channels: int = CLASSIC_BASE_CHANNELS) -> int:
    """CPU: 4, or for small images a power of two up to 16 that fills CPU_TRAINING_BATCH_PIXELS. GPU: the largest
    power of two up to 16 whose activations fit in 70% of the free memory, by the per-pixel figures above (for
    the classic width; the feature maps, most of the memory, are proportional to it)."""
    if device.type != "cuda":
        batch = 4
        while batch < MAX_AUTO_BATCH and 2 * batch * pixels <= CPU_TRAINING_BATCH_PIXELS:
            batch *= 2
        return batch
    per_pixel = BYTES_PER_PIXEL["checkpointed" if checkpointing else "fp32" if precision.dtype is None else "half"]
    per_pixel = per_pixel * memory_share(base_channels)
    free, _ = torch.cuda.mem_get_info(device)
    batch = MAX_AUTO_BATCH
    while batch > 1 and batch * pixels * per_pixel > 0.7 * free:
        batch //= 2
    return batch


class TypedFlagsParser(argparse.ArgumentParser):
    """Also records which flags were typed, as args.typed (their dests): a resumed run overrides a typed flag
    with a note, also one typed with its default value (--scale 0.5 against a run at 1.0), and takes the run's
    value silently for a flag left out."""

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's own signature
        parsed, extras = super().parse_known_args(args, namespace)
        typed_only = get_args_parser()
        for action in typed_only._actions:
            action.default = argparse.SUPPRESS  # left out of the namespace unless typed
        typed, _ = argparse.ArgumentParser.parse_known_args(typed_only, args, argparse.Namespace())
        parsed.typed = tuple(sorted(vars(typed)))
        return parsed, extras


def get_args_parser() -> argparse.ArgumentParser:
    parser = TypedFlagsParser(description="Train a U-Net on images and target masks.")
    data = parser.add_argument_group("data")
    data.add_argument("--imgs", type=Path, default=None,
                      help=f"folder of input images (default: {DATA_FOLDERS[0][1]}; with --resume, the run's own)")
    data.add_argument("--masks", type=Path, default=None,
                      help=f"folder of masks (default: {DATA_FOLDERS[1][1]}; with --resume, the run's own)")
    data.add_argument("--mask-suffix", default=None,
                      help="mask name = image name + suffix (Carvana: _mask); detected when omitted (with "
                           "--resume and the run's own folders, the run's)")
    data.add_argument("--scale", "-s", type=float, default=0.5,
                      help="downscaling factor of the images (default: %(default)s)")
    data.add_argument("--validation", "-v", type=float, default=10.0,
                      help="percent of the data (0 to below 100) held out for validation (default: %(default)s)")
    add_binarize_argument(data)
    data.add_argument("--ignore-index", type=int, default=None, metavar="VALUE",
                      help="mask value left out of the loss and the scores (e.g. 255 borders in VOC-style masks)")
    data.add_argument("--augment", choices=AUGMENT_PRESETS, default=DEFAULT_AUGMENT,
                      help="augmentation of the training images: light and strong also shuffle the colour channels, "
                           "geometry only flips and zooms (for data whose colours tell the classes apart) "
                           "(default: %(default)s; see README)")
    data.add_argument("--crop", type=parse_crop, default=None, metavar="N|WxH",
                      help="train on one random N x N (or W x H) window of each image per epoch, cut after --scale: "
                           "full resolution at the memory of the window (images smaller than it are padded, the "
                           "padding left out of the loss). Validation scores whole images, in tiles where they do "
                           "not fit in memory (default: whole images)")
    data.add_argument("--crop-foreground", type=float, default=DEFAULT_CROP_FOREGROUND, metavar="P",
                      help="with --crop, the share of windows centred on a pixel of an object (a random class other "
                           "than the background, then a random pixel of it) instead of anywhere, so that small or "
                           "rare objects are seen (default: %(default)s; see README)")
    data.add_argument("--crops-per-image", type=int, default=1, metavar="K",
                      help="with --crop, K windows of each image per epoch, for data sets of a few large images "
                           "(each window decodes its image again; default: %(default)s)")
    data.add_argument("--workers", type=int, default=None,
                      help="data loading processes per training process (default: all cores but one, at most "
                           "16, with a CUDA GPU; one per 8 cores otherwise)")
    add_image_limit_argument(data)
    model = parser.add_argument_group("model")
    model.add_argument("--classes", "-c", type=int, default=None,
                       help="number of classes: 1 = binary with sigmoid/BCE, 2+ = softmax/cross-entropy "
                            "(default: one per mask value found, at least 2)")
    model.add_argument("--channels", type=int, default=None, choices=(1, 3, 4),
                       help="image channels the model reads: 1 grayscale, 3 RGB, 4 RGB + a fourth band (RGBA "
                            "files, e.g. near-infrared) (default: 3, or those of the --load weights)")
    model.add_argument("--bilinear", action="store_true", help="bilinear upsampling instead of transposed conv")
    model.add_argument("--base-channels", type=int, default=None, metavar="N",
                       help="feature maps of the first block, doubled at each of the four levels down; compute "
                            "and parameters grow with its square: 64 is the classic U-Net (31M parameters), 32 has "
                            f"7.8M, 16 has 1.9M; 1 to {MAX_BASE_CHANNELS} (default: 64, or that of the --load weights)")
    model.add_argument("--load", "-f", default=None, metavar="FILE",
                       help="start from the weights of this checkpoint (ours or a reference .pth)")
    model.add_argument("--checkpointing", action="store_true",
                       help="activation checkpointing: less memory, about 30%% more compute")
    model.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                       help="torch.compile the model; auto = on with CUDA for runs of "
                            f"{COMPILE_MIN_TRAINING_IMAGES} training images or "
                            "more (epochs x images), off on CPUs (default: %(default)s)")
    model.add_argument("--batchnorm-images", type=int, default=0, metavar="N",
                       help="at the end of each epoch, before validation and saving, recompute BatchNorm's "
                            "statistics for the current weights on N training images (whole batches; e.g. 16-32): "
                            "for short runs, whose running averages trail the weights; see README "
                            "(default: %(default)s, the running averages)")
    model.add_argument("--sync-batchnorm", action="store_true",
                       help="under torchrun, BatchNorm statistics over the global batch (CUDA only)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", "-e", type=parse_epochs, default="auto", metavar="N|auto",
                       help=f"number of epochs; auto = {DEFAULT_EPOCHS}, or as many as make "
                            f"{AUTO_EPOCHS_MIN_STEPS:,} optimizer steps where {DEFAULT_EPOCHS} would make fewer (small "
                            "data sets) (default: %(default)s)")
    optim.add_argument("--batch-size", "-b", type=int, default=None,
                       help="images per step and process (default: on a CUDA GPU the largest power of two up to "
                            "16 that fits its free memory; elsewhere 4, 16 for images of up to 1,024 pixels after "
                            "--scale (32x32) and 8 up to 2,048)")
    optim.add_argument("--learning-rate", "-l", type=float, default=1e-4,
                       help="peak learning rate of AdamW, decayed by a cosine (default: %(default)s)")
    optim.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: %(default)s)")
    optim.add_argument("--class-weights", default=None, metavar="auto|W1,W2,...",
                       help="weight the cross-entropy per class: auto = median-frequency balancing of the "
                            "training images' pixels, or one weight per class (two for --classes 1: background, "
                            "foreground)")
    optim.add_argument("--grad-clip", type=float, default=1.0,
                       help="clip the gradient norm to this value; 0 = no clipping (default: %(default)s)")
    optim.add_argument("--max-bad-steps", type=int, default=20, metavar="K",
                       help="steps with a non-finite loss or gradient are skipped; stop (saving the last good "
                            "state) after K in a row (default: %(default)s)")
    optim.add_argument("--seed", type=int, default=0,
                       help="seed for the split, data order and weights (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"),
                     help="where last.pth, best.pth, metrics.csv and training_curves.png go (default: %(default)s)")
    run.add_argument("--resume", default=None, metavar="FILE|auto",
                     help="continue a run from a checkpoint (auto = CHECKPOINT_DIR/last.pth if present)")
    run.add_argument("--overwrite", action="store_true",
                     help="start a new run even where --checkpoint-dir holds the checkpoints of another, replacing "
                          "its last.pth, best.pth and metrics.csv (default: refuse, so that a forgotten --resume "
                          "loses nothing)")
    run.add_argument("--save-every", default=None, metavar="N|Nm",
                     help="also refresh last.pth every N steps, or every N minutes with Nm (e.g. 500 or 15m), "
                          "so that a killed run loses at most that much; 0 = at the ends of epochs only, at most "
                          "once a minute where they are shorter (default; 0 also turns off a resumed run's own)")
    run.add_argument("--keep-epochs", action=argparse.BooleanOptionalAction, default=False,
                     help="also keep every epoch's checkpoint as epoch_N.pth (as the reference did); a resumed run "
                          "keeps its own setting unless given")
    run.add_argument("--wandb", choices=WANDB_MODES, default=None,
                     help="wandb mode (default: $WANDB_MODE if set, else online if you have a wandb key (WANDB_API_KEY "
                          "or wandb login), else offline: never a login prompt)")
    run.add_argument("--log-every", type=int, default=10,
                     help="steps between loss readouts, each a host sync (default: %(default)s)")
    add_device_arguments(parser.add_argument_group("device and precision"))
    return parser


def parse_epochs(text: str) -> int | str:
    """--epochs: a whole number, or auto (settled by auto_epochs once the steps per epoch are known)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--epochs {text}: give a whole number of at least 1, or auto") from None


def auto_epochs(steps_per_epoch: int) -> int:
    """--epochs auto: enough epochs for AUTO_EPOCHS_MIN_STEPS steps, never fewer than the usual DEFAULT_EPOCHS."""
    return max(DEFAULT_EPOCHS, math.ceil(AUTO_EPOCHS_MIN_STEPS / max(steps_per_epoch, 1)))


def described_width(width: int) -> str:
    return counted(width, "base channel")


def check_args(args: argparse.Namespace) -> None:
    at_least_1 = "a whole number of at least 1"
    for flag, value, ok, rule in (
        ("--epochs", args.epochs, args.epochs == "auto" or args.epochs >= 1, f"auto or {at_least_1}"),
        ("--batch-size", args.batch_size, args.batch_size is None or args.batch_size >= 1, at_least_1),
        ("--learning-rate", args.learning_rate, 0 < args.learning_rate < math.inf, "above 0, e.g. 1e-4"),
        ("--weight-decay", args.weight_decay, 0 <= args.weight_decay < math.inf, "0 (none) or more, e.g. 1e-4"),
        ("--scale", args.scale, 0 < args.scale <= 1, "above 0 and at most 1"),
        ("--validation", args.validation, 0 <= args.validation < 100, "a percent from 0 to below 100"),
        ("--base-channels", args.base_channels,
         args.base_channels is None or 1 <= args.base_channels <= MAX_BASE_CHANNELS,
         f"a whole number from 1 to {MAX_BASE_CHANNELS}"),
        ("--log-every", args.log_every, args.log_every >= 1, at_least_1),
        ("--max-bad-steps", args.max_bad_steps, args.max_bad_steps >= 1, at_least_1),
        ("--seed", args.seed, 0 <= args.seed < 2**32, f"a whole number from 0 to {2**32 - 1}"),
        ("--batchnorm-images", args.batchnorm_images, args.batchnorm_images >= 0, "0 (off) or more"),
        ("--crops-per-image", args.crops_per_image, 1 <= args.crops_per_image <= MAX_CROPS_PER_IMAGE,
         f"a whole number from 1 to {MAX_CROPS_PER_IMAGE}"),
        ("--crop-foreground", args.crop_foreground, 0 <= args.crop_foreground <= 1, "a share from 0 to 1"),
        ("--grad-clip", args.grad_clip, args.grad_clip >= 0, "0 (no clipping) or more"),
    ):
        check_flag(flag, value, ok, rule)
    check_workers_flag(args.workers)
    check_binarize_flag(args.binarize)
    check_classes_flag(args.classes)
    parse_save_every(args.save_every)
    if (args.wandb or default_wandb_mode()) != "disabled":
        check_wandb_environment()
    for flag, value, default in (("--crops-per-image", args.crops_per_image, 1),
                                 ("--crop-foreground", args.crop_foreground, DEFAULT_CROP_FOREGROUND)):
        if value != default and args.crop is None:
            raise UserError(f"{flag} {value} needs --crop (e.g. --crop 512): without it every image is seen whole")
    for role, default in DATA_FOLDERS:  # a typo is said first, before anything about a run
        folder = getattr(args, role) or (default if args.resume is None else None)  # else the run's: known later
        if folder is not None:
            require_folder(folder, role)


def parse_save_every(text: str | None) -> tuple[int | None, float | None]:
    """--save-every: (steps, None), (None, minutes) or (None, None): none given, or 0 (which turns a resumed run's
    own off)."""
    if text is None:
        return None, None
    try:
        value = float(text[:-1]) if text.endswith("m") else int(text)
    except ValueError:
        value = -1
    if text == "0" or (text.endswith("m") and value == 0):  # 0, 0m, 0.0m
        return None, None
    if not 0 < value < math.inf:  # nan and inf too: a save that never comes
        raise UserError(f"--save-every {text!r}: give a number of steps (500) or of minutes (15m)")
    return (None, float(value)) if text.endswith("m") else (int(value), None)


def split_pairs(pairs: list[Pair], validation_percent: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded random hold-out; tiny sets still get one validation image when any is asked for."""
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(len(pairs) * validation_percent / 100)
    if validation_percent > 0 and n_val == 0:
        n_val = 1 if len(pairs) > 1 else 0
        if n_val == 0:
            print("warning: one image only: training without validation", file=sys.stderr)
    val = [pairs[i] for i in order[:n_val]]
    train = [pairs[i] for i in order[n_val:]]
    return train, val


def resumed_split(pairs: list[Pair], resumed: dict, resume_file: Path, validation_percent: float, seed: int
                  ) -> tuple[list[Pair], list[Pair], list[str]]:
    """A resumed run validates on the images it validated on: images added since it started go to training,
    so no image it trained on is scored as held out. Returns train, val and notes on what changed."""
    train, val = split_pairs(pairs, validation_percent, seed)
    kept_names, trained = resumed.get("validation_images"), resumed.get("training_images")
    if kept_names is None:  # saved before checkpoints kept the split: the seeded split of the same files
        return train, val, []
    kept = set(kept_names)
    kept_val = [pair for pair in val + train if pair.name in kept]  # in the seeded order: unchanged data, same lists
    kept_train = [pair for pair in train + val if pair.name not in kept]
    if len(kept_train) == trained and [pair.name for pair in kept_val] == kept_names:
        return kept_train, kept_val, []
    notes = [f"note: the data changed since {resume_file}: {len(kept_train)} training images (were {trained}); "
             f"validation stays on the run's own images ({len(kept_val)} of {len(kept)} still there), so images "
             "added since train and none it trained on is scored as held out"]
    if kept and not kept_val:
        notes.append(f"warning: none of the run's {len(kept)} validation images is there: the epochs train without "
                     "validation and best.pth stays as it is, until they are back (the run remembers them)")
    return kept_train, kept_val, notes


def check_scaled_sizes(pairs: list[Pair], sizes: dict[str, tuple[int, int]], scale: float) -> None:
    """Refuse a --scale that leaves an image too small for the U-Net, before any worker trips on it; the smallest
    image is named, so that one too small at any scale can be found and left out."""
    smallest = min(pairs, key=lambda pair: min(sizes[pair.name]))
    width, height = sizes[smallest.name]
    check_model_input_size(width, height, scale, f"{smallest.image} (the smallest of the {len(pairs)} images)")


def out_of_memory_advice(args: argparse.Namespace, device: torch.device, precision: Precision,
                         saved: str | None) -> str:
    """The one line for a training step that did not fit: what to change, and what was kept (saved: where)."""
    # mixed precision where it is not on: --amp under auto, which --precision fp32 overrides; never on MPS
    mixed = None if precision.name != "fp32" or device.type == "mps" else \
        "--amp" if args.precision == "auto" else "--precision auto --amp (instead of --precision fp32)"
    fixes = ["a smaller --batch-size", "--checkpointing" if not args.checkpointing else None, mixed,
             "a smaller --crop" if args.crop else "--crop 512 (windows at full resolution)", "a smaller --scale"]
    kept = (f"{saved} is kept (another batch size needs a new run: --resume keeps the run's)" if saved
            else "nothing had been saved yet")
    return (f"out of memory on {device} training batches of {args.batch_size} at --scale {args.scale:g} "
            f"({precision.name}): try {', '.join(fix for fix in fixes if fix)}; {kept}")


def parse_class_weights(text: str | None, n_classes: int, class_pixels: list[int]) -> torch.Tensor | None:
    """--class-weights: None, "auto" (from the data check's pixel counts) or one number per class."""
    if text is None:
        return None
    n_weights = max(n_classes, 2)  # one-channel binary output still weighs background and foreground
    if text == "auto":
        weights = class_weights_from_pixels(class_pixels + [0] * (n_weights - len(class_pixels)))
        print(f"class weights (auto): {', '.join(f'{w:.3g}' for w in weights)}")
    else:
        try:
            weights = [float(w) for w in text.split(",")]
        except ValueError:
            raise UserError(f"--class-weights {text!r} is not 'auto' or numbers like 1,5") from None
        if len(weights) != n_weights or not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
            each = "background, foreground" if n_classes == 1 else "one per class"
            raise UserError(f"--class-weights needs {n_weights} non-negative numbers ({each}), at least one "
                            f"above 0, got {text!r}")
    return torch.tensor(weights, dtype=torch.float32)


def pixels_per_class(mask_values: list[MaskValue], found: list[MaskValue], pixels: list[int]) -> list[int]:
    """The data check's pixel counts (per value found) in the order of the run's classes, which a resumed or loaded
    run may number otherwise (0 for a class the masks no longer hold)."""
    return [next((count for value, count in zip(found, pixels) if value == known), 0) for known in mask_values]


def run_data_folders(args: argparse.Namespace, resumed: dict | None, resume_file: Path | None) -> list[str]:
    """A resume without --imgs or --masks reads the folders its run read, not data/: its validation images and
    its position in the epoch are those of the run's files. A relative folder saved from another directory is
    found by the absolute path saved beside it. Returns a note on the folders taken from the run."""
    saved_args = resumed.get("args", {}) if resumed is not None else {}
    absolute = resumed.get("data_folders") if resumed is not None else None
    absolute = absolute if isinstance(absolute, dict) else {}  # saved since 2026-11-28 (13th session)
    taken = []
    for role, default in DATA_FOLDERS:
        if getattr(args, role) is not None:
            continue
        if not isinstance(saved_args.get(role), str):  # no --resume, or a checkpoint without its run's arguments
            setattr(args, role, default)
            require_folder(default, role)
            continue
        saved = Path(saved_args[role])
        # the very folder the run read first; then as typed, for a project moved as a whole
        candidates = ([Path(absolute[role])] if isinstance(absolute.get(role), str) else []) + [saved]
        found = next((folder for folder in candidates if folder.is_dir()), None)
        if found is None:
            raise UserError(f"{resume_file} was trained on the {role} folder {saved}, which is not there "
                            f"(from {Path.cwd()}): pass --{role} DIR with the run's data")
        setattr(args, role, saved if saved.is_dir() and saved.resolve() == found.resolve() else found)
        taken.append(f"{role} from {getattr(args, role)}")
    if len(taken) == len(DATA_FOLDERS) and args.mask_suffix is None and isinstance(saved_args.get("mask_suffix"), str):
        args.mask_suffix = saved_args["mask_suffix"]  # the run's files, paired as it paired them
    if not taken or all(getattr(args, role).resolve() == default.resolve() for role, default in DATA_FOLDERS):
        return []
    return [f"note: {resume_file} reads {' and '.join(taken)}, as its run did (pass --imgs/--masks to read others)"]


# What a resumed run keeps of its own whatever is typed, besides its architecture and scale (keep_run_settings).
RUN_SETTINGS = ("binarize", "ignore_index", "class_weights", "batch_size", "validation", "crop", "crops_per_image",
                "crop_foreground", "augment", "seed", "grad_clip", "batchnorm_images", "learning_rate",
                "weight_decay")
# Settings a run saved before they existed ran without, where today's default is something else: found by a
# review of old runs (a first-day run resumed with the augmentation it never had, without a word)
BEFORE_THEY_EXISTED = {"augment": "none", "crop_foreground": 0.0}  # --crop's windows were anywhere before baee070
ARCHITECTURE_FLAGS = {"classes": "n_classes", "channels": "n_channels", "bilinear": "bilinear",
                      "base_channels": "base_channels"}  # flag -> its model_args key


def keep_run_settings(args: argparse.Namespace, resumed: dict, resume_file: Path) -> list[str]:
    """A resumed run keeps its architecture, reads its data as it did (the saved position in the epoch depends
    on the batch size) and goes on with its optimizer's settings (they are in its saved state); a flag given
    otherwise is overridden, and each such flag gets a line saying so. --epochs, --max-bad-steps, --precision
    fp32, --save-every and --keep-epochs are the run's unless given (so --resume auto alone goes on as the run
    did)."""
    architecture = resumed["model_args"]
    saved_args = resumed.get("args", {})
    older = {name: value for name, value in BEFORE_THEY_EXISTED.items() if saved_args and name not in saved_args}
    kept = {**{name: architecture[key] for name, key in ARCHITECTURE_FLAGS.items()},
            "scale": resumed.get("scale", args.scale),
            **{name: saved_args.get(name, older.get(name, getattr(args, name))) for name in RUN_SETTINGS}}
    kept["binarize"] = binarize_threshold(kept["binarize"])  # older checkpoints stored True/False
    kept["crop"] = tuple(kept["crop"]) if kept["crop"] is not None else None
    parser = get_args_parser()
    for name in kept:
        if name in saved_args and not _fits_flag(parser, name, kept[name]):
            raise UserError(f"{resume_file}: its args['{name}'] is {kept[name]!r}, not a value of "
                            f"--{name.replace('_', '-')}: the file was edited or damaged; start a new run")
    typed = getattr(args, "typed", None)  # None: a Namespace made otherwise; then a flag at its default is untyped
    lines = [f"note: {resume_file} was written by a version without --{name.replace('_', '-')}: it continues "
             f"as it trained, with --{name.replace('_', '-')} {shown(value)}" for name, value in older.items()
             if (name not in typed if typed is not None else getattr(args, name) == parser.get_default(name))
             and (name != "crop_foreground" or kept["crop"] is not None)]  # said where it matters
    for name, value in kept.items():
        given = getattr(args, name)
        if given != value and (name in typed if typed is not None else given != parser.get_default(name)):
            flag = "--" + name.replace("_", "-")
            run_has = f"without {flag}" if value is None or value is False else \
                f"with {flag}" if value is True else f"with {flag} {shown(value)}"
            typed_text = flag if given is True else f"{flag} {shown(given)}"
            lines.append(f"note: {resume_file} continues {run_has}; {typed_text} is ignored (start a new run to change "
                         "it)")
        setattr(args, name, value)
    # --epochs (raised to train longer), --max-bad-steps, --save-every and --keep-epochs may change; left out,
    # the run goes on with its own (each checked: a hand-edited value is left out, not an error about a flag)
    for name, said, valid in (("epochs", "{flag} {value} (give {flag} to train longer or shorter)", _is_int),
                              ("max_bad_steps", "{flag} {value} (give {flag} to change it)", _is_int),
                              # full precision chosen for the run; the others follow the machine (auto)
                              ("precision", "{flag} {value} (give {flag} auto or --amp to change it)",
                               lambda value: value == "fp32"),
                              ("save_every", "{flag} {value} (give {flag} to change it, 0 to stop)", _save_every),
                              ("keep_epochs", "{flag} (give --no-keep-epochs to stop keeping each epoch)",
                               lambda value: type(value) is bool)):
        untyped = name not in typed if typed is not None else getattr(args, name) == parser.get_default(name)
        if name == "precision" and args.amp:  # --amp typed now asks for mixed precision: the run's fp32 gives way
            continue
        saved = saved_args.get(name)
        if untyped and valid(saved) and saved != getattr(args, name):
            setattr(args, name, saved)
            shown_flag = said.format(flag="--" + name.replace("_", "-"), value=saved)
            lines.append(f"note: {resume_file} goes on with its own {shown_flag}")
    return lines


def check_resumed_settings(args: argparse.Namespace, resumed: dict, resume_file: Path) -> None:
    """check_args again once the run's settings are in: one out of range is the file's (edited, damaged), one at
    odds with them is the typed flag's (--crops-per-image 2 for a run without --crop)."""
    try:
        check_args(args)
    except UserError as error:
        flag = str(error).split(" ", 1)[0]
        name = flag.removeprefix("--").replace("-", "_")
        from_run = (name in ARCHITECTURE_FLAGS or name == "scale"
                    or name in RUN_SETTINGS and name in resumed.get("args", {}))
        if name in (getattr(args, "typed", None) or ()) and not from_run:
            raise UserError(f"{error}: {resume_file} goes on with its own settings (the notes above), so leave "
                            f"{flag} out, or start a new run") from None
        raise UserError(f"{resume_file} holds a setting out of range ({error}): the file was edited or damaged; "
                        "start a new run") from None


def _is_int(value: object) -> bool:
    return type(value) is int


def _fits_flag(parser: argparse.ArgumentParser, name: str, value: object) -> bool:
    """Whether a setting read from a checkpoint is of the kind its flag gives (check_args then checks the range):
    a hand-edited 'abc' or 1e9 must be one line, not a traceback in the optimizer."""
    action = next(action for action in parser._actions if action.dest == name)
    if value is None:
        return action.default is None
    if action.choices is not None:
        return value in action.choices
    if action.type is int:
        return type(value) is int
    if action.type is float:
        return type(value) in (int, float)
    if action.type is parse_crop:
        try:
            return isinstance(value, tuple) and len(value) == 2 and parse_crop(f"{value[0]}x{value[1]}") == value
        except UserError:
            return False
    return True  # --binarize, --ignore-index, --class-weights: checked where the checkpoint is read


def _save_every(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_save_every(value)
    except UserError:
        return False
    return True


NOTHING_LEARNT_DICE = 0.1  # a best validation Dice below this: the model finds next to nothing yet
FLAT_EPOCHS = 3  # validated epochs of one Dice (to 4 decimals) that say the model ignores its input,
FLAT_BELOW = 0.5  # where that Dice is low: one class everywhere scores low (a converged model may hold still)


def best_said(best_file: Path) -> str:
    """best.pth's epoch and Dice, for the run's last line (found by a review: a run ended without saying what it
    had reached, even after Ctrl-C)."""
    score = saved_score(best_file) if best_file.exists() else None
    if score is None:
        return ""
    dice, epoch = score
    return f"; best.pth: {f'epoch {epoch}, ' if epoch is not None else ''}validation Dice {dice:.4f}"


def learning_warning(dices: list[float], best: float, args: argparse.Namespace, steps: int,
                     from_start: bool = True) -> str | None:
    """A warning when the run's validation says the model has not learnt (found by a review: 16-image sets
    trained 5 epochs of 4 steps at the defaults to Dice 0.08, and multi-class ones predicted one class
    everywhere, Dice 0.0242 every epoch, each ending with best.pth saved and not a word): what was seen, then the
    flags that would change it. A resumed run's Dice may hold still at the end of its schedule (a code review): only
    a run from its start, which never scored higher, is told that it looks stuck."""
    shown = [round(dice, 4) for dice in dices]
    if from_start and len(shown) >= FLAT_EPOCHS and len(set(shown)) == 1 and best <= dices[0] + 1e-4 \
            and shown[0] < FLAT_BELOW:
        seen = (f"the validation Dice was {shown[0]:.4f} in each of {len(shown)} epochs: the model predicts the "
                "same whatever the image (one class everywhere?)")
    elif 0 <= best < NOTHING_LEARNT_DICE:
        seen = f"the best validation Dice is {best:.4f}: the model finds next to nothing yet"
    else:
        return None
    tries = [f"more epochs (-e {4 * args.epochs}, or --resume auto -e {4 * args.epochs} to go on)"
             if steps < 1000 else "more epochs (-e)"]
    if args.learning_rate < 1e-3:
        tries.append("a higher --learning-rate (1e-3)")
    tries.append("--batchnorm-images 16" if not args.batchnorm_images else "a smaller --batch-size")
    return f"warning: {seen}; it made {counted(steps, 'step')} in all: try " + ", ".join(tries[:-1]) + \
        f" or {tries[-1]}"


def keep_better_best(best_file: Path, resume_file: Path, best_dice: float, say: Callable[..., None]) -> float:
    """A run taken back to an earlier point of its folder (--resume epoch_N.pth --overwrite) must not replace a
    better best.pth of the later epochs it drops: best.pth is replaced only when this run scores higher."""
    if not best_file.exists() or os.path.samefile(best_file, resume_file):
        return best_dice
    score = saved_score(best_file)
    if score is None or not score[0] > best_dice:  # an unreadable best.pth is replaced as before
        return best_dice
    dice, epoch = score
    say(f"note: {best_file} (validation Dice {dice:.4f}, epoch {epoch}) is kept until this run scores higher",
        file=sys.stderr)
    return dice


def loaded_mask_values(found: list[MaskValue], trained: list[MaskValue], load: str,
                       say: Callable[..., None]) -> list[MaskValue]:
    """The class list for fine-tuning --load weights: theirs where the masks hold only values they were trained on,
    so that each class keeps its meaning (0/2 masks stay classes 0 and 2 of a 0/1/2 model, not 0 and 1); else the
    masks' own, a new task, said in a note."""
    if all(value in trained for value in found):
        if found != trained:
            say(f"note: the masks hold values {found} of the {trained} {load} was trained on: each keeps its class",
                file=sys.stderr)
        return trained
    say(f"note: {load} was trained on mask values {trained}, these masks hold {found}: its classes now stand for "
        "these values, in this order", file=sys.stderr)
    return found


def validation_batch_size(batch_size: int, crop: tuple[int, int] | None, largest_pixels: int) -> int:
    """The training batch size; with --crop, as many whole images as hold the pixels of a batch of windows (at
    least one), so that the validation batches fit in the memory the training batches do."""
    if crop is None:
        return batch_size
    return max(1, min(batch_size, batch_size * crop[0] * crop[1] // largest_pixels))


def shown(value: object) -> str:
    """A setting as it is typed: --crop (512, 384) as 512x384."""
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def stretch_schedule(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, total_steps: int) -> None:
    """End the cosine at total_steps from here on. CosineAnnealingLR derives each rate from the one before, so
    changing T_max alone would go on from the old curve's rate (at the floor, for a finished run): the current
    rate is set to the new curve's first."""
    scheduler.T_max = max(total_steps, 1)
    progress = min(scheduler.last_epoch / scheduler.T_max, 1.0)
    rates = [scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * progress)) / 2
             for base in scheduler.base_lrs]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() reports until the next step


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    grad_clip: float,
    class_weights: torch.Tensor | None = None,
    loss_weight: float = 1.0,
    guard: NonFiniteGuard | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward, clipped (and for fp16 scaled) optimizer step: the loss and the logits, on the
    device (reading them is left to the caller: a host sync). With a guard, a step whose loss or gradients are
    not finite changes nothing (utils/nan_guard.py)."""
    if guard is not None:
        guard.before_forward()
    with precision.autocast():
        logits = model(images)
    loss = segmentation_loss(logits, masks, class_weights) * loss_weight
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if grad_clip > 0:
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:  # no clipping (0 would scale every gradient to zero); the norm still tells the guard a step is finite
        grad_norm = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if guard is None or guard.before_step(grad_norm):
        scaler.step(optimizer)
    scaler.update()
    if guard is not None:
        guard.after_step()
    return loss.detach(), logits.detach()


class EpochControl:
    """What the epoch loop needs besides the model: where to start, when to save, whether to stop."""

    def __init__(self, args: argparse.Namespace, world: World, guard: NonFiniteGuard, stop: GracefulStop,
                 save_progress: Callable[[int, int], None]):
        self.args, self.world, self.guard, self.stop, self.save_progress = args, world, guard, stop, save_progress
        self.save_steps, self.save_minutes = parse_save_every(args.save_every)
        self.last_save = time.monotonic()
        self.reported_skips = 0
        self.epoch_loss: torch.Tensor | None = None  # the loss sum of the epoch's batches so far, on the device

    def epoch_loss_so_far(self) -> float | None:
        """For a save inside an epoch (a host sync, at saves only): what a resume adds to the loss of the rest of
        the epoch (its batches: the position's), so that its train_loss covers the whole epoch. Under torchrun,
        rank 0's, standing in for all."""
        return None if self.epoch_loss is None else float(self.epoch_loss)

    def save_due(self, step: int) -> bool:
        if self.save_steps is not None:
            return step % self.save_steps == 0
        return self.save_minutes is not None and time.monotonic() - self.last_save >= 60 * self.save_minutes

    def epoch_save_due(self) -> bool:
        return time.monotonic() - self.last_save >= EPOCH_SAVE_GAP_S

    def stop_requested(self, step: int, device: torch.device, epoch_ends: bool) -> bool:
        """Every process stops after the same step: under torchrun the flags are summed (a host sync) after every
        step on CPUs, where a step takes seconds, every --log-every steps on GPUs, and at the end of each epoch,
        so that the stop comes well within torchrun's 30 s between its signal and its SIGKILL."""
        if not self.world.distributed:
            return self.stop.requested is not None
        if step % self.args.log_every and device.type == "cuda" and not epoch_ends:
            return False
        flag = torch.tensor(float(self.stop.requested is not None), device=device)
        return bool(all_reduce_sum(flag, self.world) > 0)

    def check_finite(self, step: int, epoch: int, batches_done: int, warn: bool) -> None:
        """Read the guard's counts (a host sync); too many bad steps in a row stop. warn: also say how many were
        skipped so far (every --log-every steps and at the end of each epoch)."""
        skipped, in_a_row = self.guard.counts()
        if warn and skipped > self.reported_skips:
            tqdm.write(f"warning: {skipped} steps skipped so far for a non-finite loss or gradient", file=sys.stderr)
            self.reported_skips = skipped
        if in_a_row >= self.args.max_bad_steps:
            self.save_progress(step, batches_done)  # the skipped steps changed nothing: the last finite state
            last = self.args.checkpoint_dir / "last.pth"
            raise UserError(f"stopped at epoch {epoch}, step {step}: {in_a_row} steps in a row had a non-finite loss "
                            f"or gradient; the last finite state is in {last}. Start a new run with a lower "
                            f"--learning-rate (from scratch, or from those weights: --load {last} --checkpoint-dir "
                            "ANOTHER; a resumed run keeps its own rate), check the data for NaN/Inf, or try "
                            "--precision fp32")


def train_one_epoch(
    model: nn.Module,
    stream: Iterator[dict],
    plan: EpochBatches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    precision: Precision,
    args: argparse.Namespace,
    step: int,
    epoch: int,
    run_log: RunLog | None,
    world: World,
    control: EpochControl,
    skip: int = 0,
    class_weights: torch.Tensor | None = None,
    carried_loss: float | None = None,
) -> dict:
    """One pass over this process's share of the training data, from batch `skip` on (a resumed epoch): the
    epoch's batches (plan.batches_in(epoch)) taken from the loader's stream of all epochs. carried_loss: the
    loss sum of the epoch's first `skip` batches, saved with the position (epoch_loss_so_far).

    Returns the mean loss over all processes (None if no batch was left), the global step, a sample for the
    logs, counts and timings (images, files skipped, seconds, seconds spent waiting for the loader: a starved
    GPU shows here) and whether a stop signal ended the epoch early (last.pth then holds the position).
    """
    model.train()
    loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per step
    batches = images_seen = skipped = 0
    counted_before = 0  # the batches before the resume whose losses loss_sum holds
    if carried_loss is not None:
        loss_sum += carried_loss
        counted_before = skip
    control.epoch_loss = loss_sum  # summed in place: the save reads the sum so far
    data_wait = 0.0
    last_batch = sample = None
    stopped = False
    started = time.perf_counter()
    total = plan.order.items_per_epoch * world.size
    done_before = plan.items_skipped_in(epoch) * world.size
    with progress_bar(total=total, initial=done_before, desc=f"epoch {epoch}/{args.epochs}", unit="img",
                      disable=not world.is_main) as progress:
        for index in range(plan.batches_in(epoch)):
            waited = time.perf_counter()
            batch = next(stream)
            data_wait += time.perf_counter() - waited
            for reason in batch["skipped"]:  # a file that broke after the data check: report, don't crash
                tqdm.write(f"warning: skipped {reason}", file=sys.stderr)
            skipped += len(batch["skipped"])
            loss_weight = 1.0
            if "image" not in batch:
                if not world.distributed:
                    progress.update(len(batch["skipped"]))
                    continue
                if last_batch is None:  # nothing yet to stand in for it (a process alone skips the batch)
                    raise UserError(f"rank {world.rank} could not read any file of its first batch under torchrun "
                                    f"({'; '.join(batch['skipped'])}): replace or remove that file and run again")
                batch, loss_weight = last_batch, 0.0  # every rank must step together: a step that adds nothing
            last_batch = batch
            images = model_input(batch["image"], device)
            masks = batch["mask"].to(device, non_blocking=True).long()  # int8 from the loader: 1/8 of the bytes
            loss, logits = train_step(model, images, masks, optimizer, scaler, precision, args.grad_clip,
                                      class_weights, loss_weight, control.guard)
            scheduler.step()

            loss_sum += loss
            batches += 1
            step += 1
            images_seen += images.shape[0] if loss_weight else 0
            sample = (images, masks, logits)
            progress.update((images.shape[0] + len(batch["skipped"])) * world.size)
            epoch_ends = index == plan.batches_in(epoch) - 1
            log_due = step % args.log_every == 0
            if log_due or epoch_ends or device.type != "cuda":  # a host sync: every step where it costs nothing
                control.check_finite(step, epoch, skip + batches, warn=log_due or epoch_ends)
            if log_due:
                # every process steps together, so all reach this: the losses of the whole global batch
                logged = all_reduce_sum(torch.stack([loss_sum / (counted_before + batches),
                                                     loss.detach().float()]), world) / world.size
                if run_log is not None:
                    mean_loss, step_loss = logged.tolist()  # the one host sync, every --log-every steps
                    progress.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)  # shown at the bar's next redraw
                    run_log.log_step(step, epoch, step_loss, scheduler.get_last_lr()[0])
            stopped = control.stop_requested(step, device, epoch_ends=epoch_ends)
            if stopped or control.save_due(step):
                control.save_progress(step, skip + batches)
            if stopped:
                break
    if batches == 0 and skip == 0:
        raise UserError(f"every training file failed to load this epoch ({skipped} skipped, named above): check "
                        f"that {args.imgs} and {args.masks} still hold them")
    wide = sum_dtype(device)
    counts = torch.tensor([counted_before + batches, skipped], dtype=wide, device=device)
    totals = all_reduce_sum(torch.cat([loss_sum.to(wide).reshape(1), counts]), world)
    if sample is not None:
        images, masks, logits = sample
        sample = {"image": images[0].cpu(), "true": masks[0].cpu(), "pred": logits_to_classes(logits[:1])[0].cpu()}
    return {"loss": (totals[0] / totals[1]).item() if totals[1] > 0 else None, "step": step, "sample": sample,
            "skipped": int(totals[2].item()), "images": images_seen, "seconds": time.perf_counter() - started,
            "data_wait": data_wait, "stopped": stopped}


def reduce_scores(scores: dict, world: World, device: torch.device) -> dict:
    """Validation means over the images of every process (each scored its own shard), and the files skipped. The
    classes in the means are those some process saw, so that the score does not depend on the shards."""
    count, skipped, unscored = scores["images"], len(scores["skipped"]), scores["unscored"]
    if not world.distributed:
        return {"dice": scores["dice"], "iou": scores["iou"], "images": count, "skipped": skipped,
                "unscored": len(unscored), "unscored_example": unscored[:1]}
    seen = all_reduce_sum(torch.tensor(scores["seen_per_class"], dtype=torch.float64, device=device), world)
    set_image_means(scores["rows"], (seen > 0).tolist())
    sums = torch.tensor([sum(row["dice"] for row in scores["rows"]), sum(row["iou"] for row in scores["rows"]),
                         count, skipped, len(unscored)], dtype=torch.float64, device=device)
    all_reduce_sum(sums, world)
    return {"dice": (sums[0] / sums[2].clamp(min=1)).item(), "iou": (sums[1] / sums[2].clamp(min=1)).item(),
            "images": int(sums[2].item()), "skipped": int(sums[3].item()), "unscored": int(sums[4].item()),
            "unscored_example": unscored[:1]}  # rank 0's, where it has one


def main(args: argparse.Namespace) -> dict:
    args = as_parsed(args, get_args_parser())
    check_args(args)
    args.wandb = args.wandb or default_wandb_mode()  # settled once: the mode used is the one recorded
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    # the pixel limit, the default dtype and the allocator setting are the run's only: a notebook that calls main()
    # gets its own back (the seeds above, cudnn.benchmark and --compile auto's fallback to eager stay set, as in any
    # training script)
    with image_pixel_limit(args.max_image_pixels), float32_default():
        device = choose_device(args.device)
        world = init_world(device)
        try:
            with freed_memory_kept(device), RunLock(args.checkpoint_dir) if world.is_main else nullcontext():
                return train(args, device, world)  # one run per checkpoint folder (the lock)
        finally:
            close_world(world)


def prepare_checkpoint_dir(args: argparse.Namespace, world: World, say: Callable[..., None]) -> None:
    """Rank 0 checks the folder and tidies what a killed run left; the others wait for it."""
    if world.is_main:
        check_writable_folder(args.checkpoint_dir, "--checkpoint-dir")  # fail now, not after an epoch
        settle_earlier_run(args.checkpoint_dir, say)  # an --overwrite run killed before it settled it
        for name, size in remove_unfinished_saves(args.checkpoint_dir):
            say(f"removed {args.checkpoint_dir / name} ({size / 2**20:.0f} MiB): the unfinished save of a run killed "
                "while writing it; the checkpoints themselves are intact", file=sys.stderr)
    # The others look at the folder only once rank 0 holds its lock: a folder in use by another run (or unusable)
    # then stops them with "another process stopped first", not with advice about the run they see in it.
    barrier(world)


def open_resumed_run(args: argparse.Namespace, world: World, say: Callable[..., None]
                     ) -> tuple[Path | None, dict | None, bool]:
    """The checkpoint to resume (or None), checked, with the run's own settings put into args (each flag they
    override said); and whether this run replaces another in the folder (a forgotten --resume is refused)."""
    resume_file = resume_path(args.resume, args.checkpoint_dir)
    resumed = load_checkpoint(resume_file, flag="--resume") if resume_file else None  # a missing file: said first
    replaces_a_run = check_run_folder(args.checkpoint_dir, resume_file, args.overwrite)
    if resume_file is None and args.resume == "auto":
        say(f"no {args.checkpoint_dir / 'last.pth'} yet: starting a new run")
    if resume_file is not None and replaces_a_run:  # (--checkpoint-dir's default, ./checkpoints, when not given)
        say(f"note: {resume_file} goes on in --checkpoint-dir {args.checkpoint_dir}; its own "
            f"folder is left as it is (pass --checkpoint-dir {resume_file.parent} to go on there)", file=sys.stderr)
    for line in run_data_folders(args, resumed, resume_file):
        say(line, file=sys.stderr)
    if resumed is not None:
        check_training_state(resumed, resume_file)
        for line in keep_run_settings(args, resumed, resume_file):
            say(line, file=sys.stderr)
        check_resumed_settings(args, resumed, resume_file)
        if args.keep_epochs and not replaces_a_run:  # in its own folder (elsewhere the folder's files are set aside)
            check_later_epochs_kept(args.checkpoint_dir, resume_file, resumed["epoch"])
        if args.load:
            say(f"note: {resume_file} continues with its own weights; --load {args.load} is ignored",
                file=sys.stderr)
    resume_point = (str(resume_file), resumed["epoch"], resumed["step"], resumed.get("epoch_batches", 0)) \
        if resumed is not None else None
    check_same_everywhere(world, resume_point,
                          f"resumes {resume_file} at epoch {resumed['epoch']}, step {resumed['step']}"
                          if resumed is not None else "finds no checkpoint to resume",
                          "every node needs the same --checkpoint-dir: put it on a file system they all share")
    return resume_file, resumed, replaces_a_run


def start_weights(args: argparse.Namespace, resumed: dict | None) -> dict | None:
    """--load's checkpoint (a resume has weights of its own). Its architecture decides how images are read, so its
    channels and width fill args (a flag at odds with it is refused); otherwise the defaults do."""
    weights = load_checkpoint(args.load, flag="--load") if args.load and resumed is None else None
    if weights is not None:
        for name, held in (("channels", lambda n: f"{n}-channel images"), ("base_channels", described_width)):
            stored, given = weights["model_args"][ARCHITECTURE_FLAGS[name]], getattr(args, name)
            flag = "--" + name.replace("_", "-")
            if given not in (None, stored):
                raise UserError(f"{flag} is {given} but {args.load} holds a model of {held(stored)}: leave out "
                                f"{flag}, or start without --load")
            setattr(args, name, stored)
        args.classes = args.classes or weights["model_args"]["n_classes"]
    args.channels = args.channels or 3
    args.base_channels = args.base_channels or CLASSIC_BASE_CHANNELS
    return weights


def checked_data(args: argparse.Namespace, world: World, workers: int, classes_given: bool, resumed: dict | None,
                 weights: dict | None, say: Callable[..., None]) -> DataCheck:
    """The files paired and checked (decoded once and cached; rank 0 first, so that the others read its cache),
    the report printed; anything training cannot use is refused here, before a model is built."""
    if not world.is_main:
        barrier(world)
    data = check_dataset(args.imgs, args.masks, args.mask_suffix, args.binarize, args.ignore_index,
                         workers=max(workers, 1))
    if world.is_main:
        barrier(world)
    say(data.report(args.channels))
    if data.unresolved_lossy_masks:
        raise UserError(data.lossy_mask_error())
    if data.size_mismatches:
        raise UserError(f"{len(data.size_mismatches)} image/mask pairs differ in size, e.g. "
                        f"{data.size_mismatches[0]}: {data.size_mismatch_fix()}")
    if data.palette_conflicts:
        raise UserError(data.palette_conflict_error())
    if data.mixed_binary and not classes_given:  # --classes 3 says that 1 and 255 are two classes
        raise UserError(f"{data.mixed_binary_error()}, or {data.mixed_binary_classes_fix()}")
    if data.stray_values and not classes_given and resumed is None:  # --classes N says that they are classes
        raise UserError(data.stray_values_error())
    check_scaled_sizes(data.pairs, data.sizes, args.scale)
    other_way = ("start a new run in another --checkpoint-dir" if resumed is not None  # the channels are the model's
                 else f"start without --load {args.load}" if weights is not None else "train with --channels 3")
    if error := data.bands_error(args.channels, other_way):
        raise UserError(error)
    if data.one_value:
        raise UserError(data.one_value_error())
    if data.unwritable_values:
        raise UserError(data.unwritable_values_error())
    return data


def settled_mask_values(args: argparse.Namespace, found: list[MaskValue], weights: dict | None, resumed: dict | None,
                        resume_file: Path | None, say: Callable[..., None]) -> list[MaskValue]:
    """The mask value of each class, in the order of the model's outputs, and args.classes settled: a resumed run
    keeps its own, --load keeps the loaded model's order, classes the masks never show get values of their own."""
    mask_values = found
    loaded_classes = weights["model_args"]["n_classes"] if weights is not None else None
    left_out = (weights.get("args") or {}).get("ignore_index") if weights is not None else None
    if left_out is not None and args.ignore_index is None and left_out in mask_values:
        say(f"note: {args.load} left mask value {left_out} out of training (--ignore-index {left_out}), and these "
            f"masks hold it: add --ignore-index {left_out} to leave it out again; without it, it is a class",
            file=sys.stderr)
    if loaded_classes is not None and len(mask_values) > max(loaded_classes, 2):  # more than its outputs can tell
        outputs = f"{loaded_classes} classes" if loaded_classes > 1 else "1 class (foreground or not)"
        raise UserError(f"the masks hold {len(mask_values)} distinct values {short_values(mask_values)} but "
                        f"{args.load} predicts {outputs}, and --load keeps its output layer: train a new model (leave "
                        f"out --load), or use masks of at most {max(loaded_classes, 2)} values")
    if resumed is not None and resumed.get("mask_values") is not None:
        known = resumed["mask_values"]
        if any(value not in known for value in mask_values):
            raise UserError(f"the masks now hold values {mask_values} but {resume_file} was trained on {known}: "
                            "resume with the same data or start a new run")
        mask_values = known
    elif (weights is not None and weights.get("mask_values") is not None
          and args.classes == weights["model_args"]["n_classes"]):  # the same output layer, not a new one
        mask_values = loaded_mask_values(mask_values, weights["mask_values"], args.load, say)
    if args.classes is None:
        args.classes = max(len(mask_values), 2)
    check_classes(mask_values, args.classes)
    if len(mask_values) < max(args.classes, 2):  # classes the masks never show: the model still needs their values
        count = len(mask_values)
        mask_values = complete_mask_values(mask_values, args.classes, avoid=args.ignore_index)
        if unwritable_values(mask_values):  # --ignore-index took one of the 65536 labels
            raise UserError(f"--classes {args.classes} leaves a class without a label a mask file can hold (0 to "
                            f"65535, but for --ignore-index {args.ignore_index}): use --classes {args.classes - 1}")
        extra = mask_values[count:]
        which = (f"class {count} never appears in them; predict.py writes it as {extra[0]}" if len(extra) == 1 else
                 f"classes {count} to {len(mask_values) - 1} never appear in them; predict.py writes them as {extra}")
        say(f"note: --classes {args.classes} but the masks hold {count} values: {which}", file=sys.stderr)
    return mask_values


def held_out_only_warning(data: DataCheck, train_pixels: list[int], val_pixels: list[int], training_images: int,
                          resumed: bool) -> str | None:
    """Mask values that only validation images show: the model cannot learn them, and their scores will say so."""
    held_out_only = [value for value, trained, held_out in zip(data.mask_values, train_pixels, val_pixels)
                     if held_out and not trained]
    if not held_out_only:
        return None
    if data.instance_labels:
        fix = f": they {INSTANCE_LABELS_FIX}"
    elif not resumed:
        fix = ": another --seed splits the images otherwise"
    else:
        fix = ""
    many = len(held_out_only) > 1
    listed = ", ".join(shown(value) for value in held_out_only[:5]) + (", ..." if len(held_out_only) > 5 else "")
    return (f"warning: mask value{'s' if many else ''} {listed} appear{'' if many else 's'} only in validation "
            f"images, in none of the {training_images} training images, so the model cannot learn "
            f"{'them' if many else 'it'}{fix}")


def cannot_train_alone(size: tuple[int, int]) -> bool:
    """Under 32 px on both sides the deepest map is 1x1: BatchNorm cannot train on a batch of one such image."""
    return max(size) < LONE_IMAGE_MIN_SIDE


def calibration_loader(train_set: Dataset, train_sizes: list[tuple[int, int]], args: argparse.Namespace,
                       device: torch.device, workers: int) -> BatchCache | None:
    """The same few training images, augmented the same way, for each epoch's BatchNorm statistics
    (--batchnorm-images; kept in memory after the first pass, as the validation batches are)."""
    items = calibration_keys(len(train_set), args.batchnorm_images, args.batch_size, args.seed)
    sizes = [train_sizes[index] for index, _ in items]
    batches = [batch for batch in same_size_batches(range(len(items)), sizes, args.batch_size)
               if len(batch) > 1 or not cannot_train_alone(sizes[batch[0]])]
    if not batches:
        return None
    return BatchCache(make_loader(Subset(SeededItems(train_set), items), args.batch_size, device,
                                  min(workers, len(items)), batches=batches, stops_gracefully=True))


def build_model(args: argparse.Namespace, weights: dict | None, world: World, device: torch.device) -> nn.Module:
    """--load's model (its output layer replaced when --classes differs) or a new one, on the device."""
    if weights is not None:
        model = model_from_checkpoint(weights, n_classes=args.classes, bilinear=args.bilinear or None)
        args.bilinear = model.bilinear
    else:
        model = UNet(args.channels, args.classes, args.bilinear, args.base_channels)
    model.use_checkpointing(args.checkpointing)
    if args.sync_batchnorm and world.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device, memory_format=memory_format(device))


def batches_to_skip(args: argparse.Namespace, resumed: dict, resume_file: Path, world: World, order: EpochOrder,
                    training_images: int, say: Callable[..., None]) -> int:
    """The batches of the resumed epoch trained before its save (--save-every, a signal); 0 when the epoch's
    order is not the one they were drawn from, and the epoch starts over (said)."""
    start_epoch = resumed["epoch"] + 1
    skip_batches = resumed.get("epoch_batches", 0)
    processes = resumed.get("processes", world.size)  # unknown before 2026-11-27 (9th session): as now
    if processes != world.size:  # each process's share of an epoch depends on their number
        starts_over = (f"; epoch {start_epoch} starts over instead of going on after batch {skip_batches}"
                       if skip_batches else "")
        say(f"note: {resume_file} was trained by {counted(processes, 'process', 'processes')}, now "
            f"{world.size}: the global batch is {args.batch_size * world.size} images (was "
            f"{args.batch_size * processes}; --batch-size is per process){starts_over}", file=sys.stderr)
        return 0
    if skip_batches and resumed.get("training_images", training_images) != training_images:
        say(f"note: the training set changed size, so epoch {start_epoch} starts over instead of going on "
            f"after batch {skip_batches}", file=sys.stderr)
        return 0  # the epoch's order is a shuffle of the old set: its first batches are not these
    if skip_batches and order.sizes is not None and not resumed.get("batched_by_size"):
        say(f"note: {resume_file} was saved before batches were formed by image size, so epoch {start_epoch} "
            f"starts over instead of going on after batch {skip_batches}", file=sys.stderr)
        return 0
    return skip_batches


def train(args: argparse.Namespace, device: torch.device, world: World) -> dict:
    choose_precision(device, args.amp, args.precision)  # a flag this device cannot follow: said first
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.sync_batchnorm and device.type != "cuda":
        raise UserError("--sync-batchnorm needs CUDA GPUs (PyTorch syncs BatchNorm on GPUs only): leave it out on CPUs")
    say = print if world.is_main else (lambda *_, **__: None)
    prepare_checkpoint_dir(args, world, say)
    resume_file, resumed, replaces_a_run = open_resumed_run(args, world, say)
    precision = choose_precision(device, args.amp, args.precision)  # a resumed fp32 run's, unless --amp now
    classes_given = args.classes is not None
    weights = start_weights(args, resumed)

    # Data: the files checked, the classes settled, the split, the loaders that give each process its share.
    workers = args.workers if args.workers is not None else default_workers(device, world)
    data = checked_data(args, world, workers, classes_given, resumed, weights, say)
    mask_values = settled_mask_values(args, data.mask_values, weights, resumed, resume_file, say)
    largest = scaled_size(*max(data.image_sizes, key=lambda size: size[0] * size[1]), args.scale)
    if args.batch_size is None:
        scaled_width, scaled_height = args.crop or largest
        args.batch_size = smallest_everywhere(  # GPUs with different free memory still step the same batches
            default_batch_size(device, precision, scaled_width * scaled_height, args.checkpointing,
                               args.base_channels), world, device)
    if resumed is not None:
        train_pairs, val_pairs, notes = resumed_split(data.pairs, resumed, resume_file, args.validation, args.seed)
        for line in notes:
            say(line, file=sys.stderr)
    else:
        train_pairs, val_pairs = split_pairs(data.pairs, args.validation, args.seed)
    # From the training split only: held-out images must not set the weights of the classes they show.
    train_pixels = data.class_pixels_of(train_pairs)
    if warning := held_out_only_warning(data, train_pixels, data.class_pixels_of(val_pairs), len(train_pairs),
                                        resumed is not None):
        say(warning, file=sys.stderr)
    class_weights = parse_class_weights(args.class_weights, args.classes,
                                        pixels_per_class(mask_values, data.mask_values, train_pixels))
    if class_weights is not None:
        class_weights = class_weights.to(device)
    # saved as the run's held-out images, also those missing now: one that comes back is validated again
    validation_names = (resumed or {}).get("validation_images") or [pair.name for pair in val_pairs]
    names = hashlib.sha256(os.fsencode("\n".join(pair.name for pair in train_pairs + val_pairs))).hexdigest()[:12]
    check_same_everywhere(world, (names, len(train_pairs), mask_values),
                          f"sees {len(train_pairs)} training and {len(val_pairs)} validation images (names digest "
                          f"{names}), mask values {short_values(mask_values)}",
                          f"every node needs the same files in {args.imgs} and {args.masks}")
    encoding = {"mask_values": mask_values, "scale": args.scale, "channels": args.channels,
                "binarize": args.binarize, "ignore_value": args.ignore_index}
    train_set: Dataset = SegmentationDataset(train_pairs, **encoding, transform=train_augmentation(args.augment),
                                             skip_unreadable=True, crop=args.crop,
                                             crop_foreground=args.crop_foreground)
    if args.crops_per_image > 1:
        train_set = RepeatedItems(train_set, args.crops_per_image)
    # Each process scores a shard; a file that breaks after the data check is left out with a warning.
    # masks at their own size: validation scores each image as evaluate.py and predict.py do (a Dice that
    # evaluate.py reproduces), not against masks shrunk by --scale
    val_set = SegmentationDataset(val_pairs[world.rank::world.size], **encoding, skip_unreadable=True,
                                  scale_masks=False)

    def sizes_of(pairs: list[Pair]) -> list[tuple[int, int]]:
        return [scaled_size(*data.sizes[pair.name], args.scale) for pair in pairs]  # as the model sees them

    train_sizes = [args.crop] * len(train_set) if args.crop else sizes_of(train_pairs)  # as the items come out
    # One global shuffle per epoch, dealt round-robin (the union of the processes' batches is the batch a
    # single process with world.size times the batch size would take), augmentation seeded per item; batches
    # of one image size each where the sizes allow (utils/sampling.py).
    tiny = [index for index, size in enumerate(train_sizes) if cannot_train_alone(size)]
    if tiny and (args.batch_size == 1 or len(train_set) <= world.size):  # one image per process at most
        (width, height), name = train_sizes[tiny[0]], train_pairs[tiny[0] % len(train_pairs)].image.name
        fix = "use --batch-size 2 or more" if args.batch_size == 1 else "add training images"
        larger = ", or a larger --scale" if args.scale < 1 and not args.crop else ""  # at most 1; windows: --crop
        held = "is" if len(tiny) == 1 else "are"
        raise UserError(f"{counted(len(tiny), 'training image')} {held} under {LONE_IMAGE_MIN_SIDE} px on both sides "
                        f"at --scale {args.scale:g} (e.g. {name}, {width}x{height}): the U-Net's deepest map of one is "
                        f"1x1, and BatchNorm cannot train on a batch of one such image: {fix}{larger}")
    order = EpochOrder(len(train_set), args.batch_size, args.seed, world, sizes=train_sizes, no_lone_images=bool(tiny))
    if args.epochs == "auto":
        args.epochs = auto_epochs(order.batches_per_epoch)
        if args.epochs > DEFAULT_EPOCHS:
            say(f"note: --epochs auto: {args.epochs} epochs of {counted(order.batches_per_epoch, 'step')}, "
                f"{args.epochs * order.batches_per_epoch:,} steps in all ({DEFAULT_EPOCHS} epochs would make "
                f"{DEFAULT_EPOCHS * order.batches_per_epoch}, too few to learn from; -e N sets another number)",
                file=sys.stderr)
    # On a CPU, validation and the BatchNorm calibration decode in this process: a worker forked at the end of the
    # first epoch shares the trainer's gigabytes of heap copy-on-write, and the next epoch paid ~20% for the page
    # copies (measured).
    side_workers = 0 if device.type == "cpu" else workers
    # With --crop, validation images are larger than the training windows: scored whole where they fit in memory
    # and in tiles where not (predict.py's default).
    val_options = InferenceOptions(tile="auto") if args.crop else WHOLE_IMAGE
    val_notes = notify_once() if world.is_main else lambda message: None  # each note once a run, not each epoch
    val_batch_size = validation_batch_size(args.batch_size, args.crop, largest[0] * largest[1])
    val_batches = same_size_batches(range(len(val_set)), sizes_of(val_pairs[world.rank::world.size]), val_batch_size)
    val_loader = BatchCache(make_loader(val_set, args.batch_size, device, min(side_workers, len(val_set)),
                                        batches=val_batches, stops_gracefully=True)) \
        if val_pairs else None  # decoded once if it fits
    calibration = calibration_loader(train_set, train_sizes, args, device, side_workers)

    # Model, optimizer, schedule (cosine decay over all steps), gradient scaler for fp16.
    model = build_model(args, weights, world, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=device.type in ("cuda", "cpu"))  # one kernel for all parameters
    total_steps = args.epochs * order.batches_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps,
                                                           eta_min=args.learning_rate / 100)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)

    start_epoch, step, best_dice, skip_batches = 1, 0, -1.0, 0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(optimizer_state_for(optimizer, resumed["optimizer"]))
        scheduler.load_state_dict(resumed["scheduler"])
        if resumed["scaler"]:  # empty when the run was saved without fp16 (CPU, bf16)
            scaler.load_state_dict(resumed["scaler"])
        restore_rng_state(resumed["rng"])
        start_epoch, step, best_dice = resumed["epoch"] + 1, resumed["step"], resumed["best_dice"]
        if "epoch_loss" not in resumed and args.scale != 1 and best_dice >= 0:  # found by a review of old runs
            say(f"note: {resume_file} was written before 2026-11-29 10:00 UTC (it has no 'epoch_loss' entry); "
                "versions before then may have scored validation against masks shrunk by --scale, and this one "
                f"scores at the masks' own size, so its best Dice {best_dice:.4f} may not compare with the new "
                "epochs' (best.pth is replaced only by a higher one); evaluate.py on its validation images gives "
                "today's figure", file=sys.stderr)
        if not replaces_a_run:  # going on in its own folder, maybe from an earlier point (epoch_N.pth, --overwrite)
            best_dice = keep_better_best(args.checkpoint_dir / "best.pth", resume_file, best_dice, say)
        skip_batches = batches_to_skip(args, resumed, resume_file, world, order, len(train_pairs), say)
        # The cosine ends with the last step still to train: --epochs may have been raised, the data may have grown.
        steps_left = max(0, (args.epochs - start_epoch + 1) * order.batches_per_epoch - skip_batches)
        if scheduler.last_epoch + steps_left != scheduler.T_max:
            stretch_schedule(scheduler, scheduler.last_epoch + steps_left)
        best = f", best validation Dice {best_dice:.4f}" if best_dice >= 0 else ""
        within = (" at its validation (its training was done)" if skip_batches == order.batches_per_epoch
                  else f" after its first {skip_batches} batches" if skip_batches else "")
        say(f"resuming {resume_file}: epoch {start_epoch}{within}, step {step}{best}")
        if start_epoch > args.epochs:  # nothing to train: no loader, no logs, no checkpoint written again
            done = start_epoch - 1
            say(f"{resume_file} has already trained {counted(done, 'epoch')} of --epochs "
                f"{args.epochs}: nothing left to do; raise --epochs (e.g. --epochs {done + 5}) to train longer")
            return {"step": step, "best_dice": best_dice, "val_dice": None, "history": []}
    # One loader iterator for all the epochs left: its workers decode the next epoch during validation.
    plan = EpochBatches(order, start_epoch, args.epochs, skip_batches)
    # the losses of the batches done before the save, so that the resumed epoch's train_loss covers them too
    carried_loss = resumed.get("epoch_loss") if resumed is not None and skip_batches else None
    if skip_batches and carried_loss is None:
        say(f"note: {resume_file} was saved without the loss of epoch {start_epoch}'s first {skip_batches} batches "
            "(before it was kept): that epoch's train_loss covers the batches after the resume only", file=sys.stderr)
    train_loader = make_loader(SeededItems(train_set), args.batch_size, device, min(workers, len(train_set)),
                               batches=plan, stops_gracefully=True)  # GracefulStop below
    training_model: nn.Module = model
    if world.distributed:
        training_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    compiled = should_compile(args.compile, device, len(plan) * args.batch_size * world.size,
                              COMPILE_MIN_TRAINING_IMAGES)
    if compiled:
        training_model = compile_model(training_model, args.compile)

    processes = f" x {world.size} processes" if world.distributed else ""
    say(f"{len(train_pairs)} training and {len(val_pairs)} validation images from {args.imgs}, scale {args.scale}, "
        f"mask values {short_values(mask_values)}, {counted(args.classes, 'class', 'classes')}"
        + (f", {described_width(args.base_channels)}" if args.base_channels != CLASSIC_BASE_CHANNELS else "")
        + f", {precision.name} on {device}{processes}, "
        f"batch {args.batch_size}" + (f" of {shown(args.crop)} crops" if args.crop else "")
        + (f" ({args.crops_per_image} per image and epoch)" if args.crops_per_image > 1 else "")
        + f", {counted(workers, 'loader worker')}" + (", compiled" if compiled else ""))
    if args.crop:
        smaller = sum(width < args.crop[0] or height < args.crop[1] for width, height in sizes_of(train_pairs))
        if args.batchnorm_images:
            say("note: --batchnorm-images recomputes BatchNorm's statistics on --crop windows, which scored far "
                "below the running averages on whole held-out images (README, crops around objects)", file=sys.stderr)
        if smaller:
            say(f"note: {smaller} of the {len(train_pairs)} training images are smaller than --crop "
                f"{shown(args.crop)} after --scale on at least one side: their windows are padded (ignored "
                "pixels, computed all the same)", file=sys.stderr)
    if order.sizes is not None and args.batch_size > 1:
        mixed = min(order.shared_batches, order.batches_per_epoch)  # a lone last batch joins another (tiny images)
        shared = (f" (up to {mixed} of the {order.batches_per_epoch} batches per epoch hold the images "
                  "left over, padded to the largest; the padding counts in no loss or score)"
                  if order.shared_batches else "")
        say(f"training images of {len(set(order.sizes))} sizes: batched by size{shared}")
    # only now: a run that failed to start moves nothing; one that fails before its first save puts them back,
    # also when stopped while wandb starts (up to a minute online), before the loop's own handling of signals
    earlier_wandb_run = resumed.get("wandb_run") if resumed is not None else None
    with sigterm_as_exit():
        set_aside = set_aside_earlier_run(args.checkpoint_dir, say) if replaces_a_run and args.overwrite and \
            world.is_main else None
        try:
            run_log = RunLog(args.checkpoint_dir, vars(args), args.wandb, start_epoch,
                             continues=earlier_wandb_run) if world.is_main else None
        except BaseException:
            if set_aside is not None:
                settle_earlier_run(args.checkpoint_dir, say)
            raise
    val_dice = result = None
    checkpoints = CheckpointWriter(background=device.type == "cuda")  # the GPU trains on while a file is written
    last_file = args.checkpoint_dir / "last.pth"
    failed_save: list[UserError] = []
    saved_steps: list[int] = []  # the step of each save this run made

    def save(epochs_done: int, step: int, epoch_batches: int, copies: list[Path],
             then: str = "training goes on") -> None:
        """last.pth (and copies) from rank 0; a failed write is reported, training goes on, the old file stays."""
        control.last_save = time.monotonic()  # also where the write fails: the next try comes as late
        if not world.is_main:
            return
        state = {
            "scale": args.scale, "args": vars(args), "optimizer": optimizer.state_dict(),
            "data_folders": {role: str(getattr(args, role).resolve()) for role, _ in DATA_FOLDERS},
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epochs_done,
            "epoch_batches": epoch_batches, "step": step, "best_dice": best_dice, "val_dice": val_dice,
            "rng": rng_state(), "mask_palette": data.palette,
            "training_images": len(train_pairs), "validation_images": validation_names,
            "batched_by_size": True,  # the epoch order of utils/sampling.py; older runs mixed sizes
            "processes": world.size,  # a position within an epoch holds for this many processes only
            "epoch_loss": control.epoch_loss_so_far() if epoch_batches else None,
            "wandb_run": run_log.wandb_id or earlier_wandb_run,  # a resume without wandb keeps the id for a later one
        }
        try:
            checkpoints.save(last_file, model, mask_values, copies, **state)
            failed_save.clear()
            saved_steps.append(step)
        except UserError as error:
            tqdm.write(f"warning: {error}; {then}, the previous last.pth is kept", file=sys.stderr)
            failed_save[:] = [error]

    told_unscored = False
    dices: list[float] = []  # this run's validation Dice, epoch by epoch (learning_warning)
    with GracefulStop(announce=world.is_main) as stop:  # under torchrun every rank gets the signal
        control = EpochControl(args, world, NonFiniteGuard(model, optimizer, device), stop,
                               lambda step, batches: save(epoch - 1, step, batches, []))
        stream = None
        try:
            stream = iter(train_loader)
            for epoch in range(start_epoch, args.epochs + 1):
                started = time.perf_counter()
                skip = plan.skipped_in(epoch)  # the epoch's order survives a resume
                result = train_one_epoch(training_model, stream, plan, optimizer, scheduler, scaler, device,
                                         precision, args, step, epoch, run_log, world, control, skip, class_weights,
                                         carried_loss if skip else None)
                step = result["step"]
                if result["stopped"]:
                    checkpoints.wait()
                    if failed_save:
                        raise failed_save[0]
                    say(f"stopped by {stop.requested} at epoch {epoch}, step {step}: {last_file} holds this point; "
                        "resume with the same command and --resume auto"
                        + (best_said(args.checkpoint_dir / "best.pth") if world.is_main else ""))
                    raise SystemExit(stop.exit_code)
                try:
                    if calibration is not None:  # the plain model: each process reads the same images
                        recalibrate_batchnorm(model, calibration, device, precision)
                    scores = None
                    if val_loader is not None:  # the plain model: no DDP collectives, shards may differ in size
                        buffers_from_rank_0(model, world)  # validated with the statistics the checkpoint saves
                        scores = reduce_scores(evaluate(model, val_loader, device, precision, progress=world.is_main,
                                                        options=val_options, notify=val_notes), world, device)
                except BaseException:  # out of memory, a failing disk, a second Ctrl-C: keep the epoch's training
                    save(epoch - 1, step, plan.order.batches_per_epoch, [],  # a resume validates it again
                         then="and the run stops on the error below")
                    raise
                val_dice = scores["dice"] if scores and scores["images"] else None
                if scores and scores["unscored"] and not told_unscored:  # said once: the same images every epoch
                    example = f" (e.g. {scores['unscored_example'][0]})" if scores["unscored_example"] else ""
                    what = ("so no validation Dice is computed, and no best.pth kept" if val_dice is None
                            else "left out of the validation Dice")
                    hold = "holds" if scores["unscored"] == 1 else "hold"
                    say(f"note: {counted(scores['unscored'], 'validation mask')} {hold} only pixels of --ignore-index "
                        f"{args.ignore_index}{example}: nothing in them to score, {what}", file=sys.stderr)
                    told_unscored = True
                if val_dice is not None:
                    dices.append(val_dice)
                is_best = val_dice is not None and val_dice > best_dice
                best_dice = max(best_dice, val_dice) if val_dice is not None else best_dice
                seconds = time.perf_counter() - started
                copies = [args.checkpoint_dir / "best.pth"] if is_best else []
                if args.keep_epochs:
                    copies.append(args.checkpoint_dir / f"epoch_{epoch}.pth")
                if copies or epoch == args.epochs or not saved_steps or failed_save or control.epoch_save_due():
                    save(epoch, step, 0, copies)
                if set_aside is not None and last_file.exists():  # this run has a last.pth: the earlier one goes
                    settle_earlier_run(args.checkpoint_dir, say)
                    set_aside = None
                if world.is_main:
                    images = result["images"] * world.size  # every process trains the same number of batches
                    row = {"epoch": epoch, "step": step, "train_loss": result["loss"],
                           "lr": scheduler.get_last_lr()[0], "val_dice": val_dice,
                           "val_iou": scores["iou"] if val_dice is not None else None,
                           "skipped": result["skipped"] + (scores["skipped"] if scores else 0),
                           **({"seconds": round(seconds, 2), "images_per_second": round(images / seconds, 3),
                               "data_wait": round(result["data_wait"] / max(result["seconds"], 1e-9), 3)}
                              if images else {})}  # resumed at its validation: no training here to time
                    run_log.log_epoch(row, unwrap_model(model), result["sample"])
                    loss_text = f"{result['loss']:.4f}" if result["loss"] is not None else "-"
                    speed = f", {row['images_per_second']:.3g} images/s" if images else ""
                    summary = (f"epoch {epoch}: train loss {loss_text}{speed}"
                               + (f", {row['skipped']} files skipped" if row["skipped"] else ""))
                    if val_dice is not None:
                        summary += f", validation Dice {val_dice:.4f}" + (" (best)" if is_best else "")
                    print(summary)
                barrier(world)  # no process runs ahead of rank 0's checkpoint
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(error):
                raise
            checkpoints.wait()
            saved = f"{last_file} (saved at step {saved_steps[-1]})" if saved_steps else resume_file
            raise UserError(out_of_memory_advice(args, device, precision, saved and str(saved))) from None
        finally:
            try:
                checkpoints.wait()  # also on Ctrl-C or an error: the last save completes
            finally:
                stop_loader_workers(stream)
                if run_log is not None:
                    run_log.close(exit_code_of(sys.exc_info()[1]))
                if set_aside is not None:
                    settle_earlier_run(args.checkpoint_dir, say)
    if failed_save:
        raise UserError(f"the last checkpoint could not be written: {failed_save[0]}")
    if world.distributed and result is not None:
        print(f"rank {world.rank}/{world.size}: {step} steps, {result['images']} images in the last epoch")
    say(f"checkpoints in {args.checkpoint_dir}: last.pth"
        + (", best.pth" if (args.checkpoint_dir / "best.pth").exists() else "")
        + (f", epoch_{start_epoch}.pth to epoch_{args.epochs}.pth" if args.keep_epochs and start_epoch < args.epochs
           else f", epoch_{args.epochs}.pth" if args.keep_epochs else "")
        + (best_said(args.checkpoint_dir / "best.pth") if world.is_main else ""))
    warning = learning_warning(dices, best_dice, args, step, from_start=resumed is None) if dices else None
    if warning:
        say(warning, file=sys.stderr)
    if stop.requested:  # during the last epoch's validation: no step came after it, and the run is complete
        say(f"{stop.requested} received during the last validation: the run completed and saved all it had")
        raise SystemExit(stop.exit_code)  # what the first signal exits with wherever it comes
    return {"step": step, "best_dice": best_dice, "val_dice": val_dice,
            "history": run_log.rows if run_log is not None else []}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
