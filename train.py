"""Train a U-Net on a folder of images and a folder of masks.

    python train.py --amp                         # data/imgs + data/masks, Carvana naming detected
    python train.py --imgs X --masks Y -c 3 -e 20 # three classes, twenty epochs
    python train.py --resume auto                 # continue checkpoints/last.pth

Read top to bottom: arguments, device and precision, data, model and optimizer, resume, the epoch loop.
"""

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from evaluate import evaluate
from unet import UNet
from utils.augmentation import AUGMENT_PRESETS, train_augmentation
from utils.check_data import check_dataset
from utils.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from utils.data_loading import Pair, SegmentationDataset, make_loader, normalize_images
from utils.device import Precision, add_device_arguments, choose_device, choose_precision, memory_format
from utils.dice_score import class_weights_from_pixels, segmentation_loss
from utils.errors import UserError, run_cli
from utils.inference import logits_to_classes
from utils.mask_encoding import MaskValue, check_classes
from utils.run_log import WANDB_MODES, RunLog, default_wandb_mode

DEFAULT_AUGMENT = "light"  # chosen by the held-out Dice measured in the README


def default_workers() -> int:
    """Half the cores for decoding, the rest for the training threads; at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a U-Net on images and target masks.")
    data = parser.add_argument_group("data")
    data.add_argument("--imgs", type=Path, default=Path("data/imgs"),
                      help="folder of input images (default: %(default)s)")
    data.add_argument("--masks", type=Path, default=Path("data/masks"), help="folder of masks (default: %(default)s)")
    data.add_argument("--mask-suffix", default=None,
                      help="mask name = image name + suffix (Carvana: _mask); detected when omitted")
    data.add_argument("--scale", "-s", type=float, default=0.5,
                      help="downscaling factor of the images (default: %(default)s)")
    data.add_argument("--validation", "-v", type=float, default=10.0,
                      help="percent of the data (0-100) held out for validation (default: %(default)s)")
    data.add_argument("--binarize", action="store_true",
                      help="any nonzero mask value is foreground (instance labels, 0/255 masks with noise)")
    data.add_argument("--ignore-index", type=int, default=None, metavar="VALUE",
                      help="mask value left out of the loss and the scores (e.g. 255 borders in VOC-style masks)")
    data.add_argument("--augment", choices=AUGMENT_PRESETS, default=DEFAULT_AUGMENT,
                      help="augmentation of the training images (default: %(default)s; see README)")
    data.add_argument("--workers", type=int, default=default_workers(),
                      help="data loading processes (default: half the cores, here %(default)s)")
    model = parser.add_argument_group("model")
    model.add_argument("--classes", "-c", type=int, default=None,
                       help="number of classes: 1 = binary with sigmoid/BCE, 2+ = softmax/cross-entropy "
                            "(default: one per mask value found, at least 2)")
    model.add_argument("--channels", type=int, default=3, choices=(1, 3),
                       help="image channels the model reads (default: %(default)s)")
    model.add_argument("--bilinear", action="store_true", help="bilinear upsampling instead of transposed conv")
    model.add_argument("--load", "-f", default=None, metavar="FILE",
                       help="start from the weights of this checkpoint (ours or a reference .pth)")
    model.add_argument("--checkpointing", action="store_true",
                       help="activation checkpointing: less memory, about 30%% more compute")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", "-e", type=int, default=5, help="number of epochs (default: %(default)s)")
    optim.add_argument("--batch-size", "-b", type=int, default=1, help="images per step (default: %(default)s)")
    optim.add_argument("--learning-rate", "-l", type=float, default=1e-4,
                       help="peak learning rate of AdamW, decayed by a cosine (default: %(default)s)")
    optim.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: %(default)s)")
    optim.add_argument("--class-weights", default=None, metavar="auto|W1,W2,...",
                       help="weight the cross-entropy per class: auto = median-frequency balancing from the "
                            "data check, or one weight per class")
    optim.add_argument("--grad-clip", type=float, default=1.0,
                       help="clip the gradient norm to this value (default: %(default)s)")
    optim.add_argument("--seed", type=int, default=0,
                       help="seed for the split, data order and weights (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"),
                     help="where last.pth, best.pth, metrics.csv and training_curves.png go (default: %(default)s)")
    run.add_argument("--resume", default=None, metavar="FILE|auto",
                     help="continue a run from a checkpoint (auto = CHECKPOINT_DIR/last.pth if present)")
    run.add_argument("--keep-epochs", action="store_true",
                     help="also keep every epoch's checkpoint as epoch_N.pth (as the reference did)")
    run.add_argument("--wandb", choices=WANDB_MODES, default=None,
                     help="wandb mode (default: online if WANDB_API_KEY is set, else offline)")
    run.add_argument("--log-every", type=int, default=10,
                     help="steps between loss readouts, each a host sync (default: %(default)s)")
    add_device_arguments(parser.add_argument_group("device and precision"))
    return parser


def check_args(args: argparse.Namespace) -> None:
    for flag, value, ok in (
        ("--epochs", args.epochs, args.epochs >= 1),
        ("--batch-size", args.batch_size, args.batch_size >= 1),
        ("--learning-rate", args.learning_rate, args.learning_rate > 0),
        ("--scale", args.scale, 0 < args.scale <= 1),
        ("--validation", args.validation, 0 <= args.validation < 100),
        ("--classes", args.classes, args.classes is None or args.classes >= 1),
        ("--workers", args.workers, args.workers >= 0),
        ("--log-every", args.log_every, args.log_every >= 1),
    ):
        if not ok:
            raise UserError(f"{flag} {value} is out of range: see python train.py --help")


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


MIN_SIDE = 16  # four 2x2 poolings: below this the deepest feature map vanishes


def check_scaled_sizes(image_sizes: dict[tuple[int, int], int], scale: float) -> None:
    """Refuse a --scale that leaves an image too small for the U-Net, before any worker trips on it."""
    width, height = min(image_sizes, key=lambda size: min(size))
    if min(int(scale * width), int(scale * height)) < MIN_SIDE:
        raise UserError(f"--scale {scale} shrinks {width}x{height} images to {int(scale * width)}x"
                        f"{int(scale * height)}, below the U-Net's minimum of {MIN_SIDE} px a side: use a larger scale")


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
        if len(weights) != n_weights or min(weights) < 0:
            raise UserError(f"--class-weights needs {n_weights} non-negative numbers, one per class, got {text!r}")
    return torch.tensor(weights, dtype=torch.float32)


def resume_path(resume: str | None, checkpoint_dir: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        path = checkpoint_dir / "last.pth"
        if not path.exists():
            print(f"no {path} yet: starting a new run")
            return None
        return path
    return Path(resume)


def check_writable(folder: Path) -> None:
    """Fail now, not after an epoch, when checkpoints cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to --checkpoint-dir {folder} ({error.strerror}): pick another folder") from None


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    precision: Precision,
    args: argparse.Namespace,
    step: int,
    epoch: int,
    run_log: RunLog,
    class_weights: torch.Tensor | None = None,
) -> tuple[float, int, dict, int]:
    """One pass over the training data: mean loss, the global step, a sample for the logs, files skipped."""
    model.train()
    loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per step
    batches = skipped = 0
    with tqdm(total=len(loader.dataset), desc=f"epoch {epoch}/{args.epochs}", unit="img") as progress:
        for batch in loader:
            for reason in batch["skipped"]:  # a file that broke after the data check: report, don't crash
                tqdm.write(f"warning: skipped {reason}", file=sys.stderr)
            skipped += len(batch["skipped"])
            progress.update(len(batch["skipped"]))
            if "image" not in batch:
                continue
            images = normalize_images(batch["image"].to(device, non_blocking=True))
            images = images.contiguous(memory_format=memory_format(device))
            masks = batch["mask"].to(device, non_blocking=True)
            with precision.autocast():
                logits = model(images)
            loss = segmentation_loss(logits, masks, class_weights)

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            loss_sum += loss.detach()
            batches += 1
            step += 1
            progress.update(images.shape[0])
            if step % args.log_every == 0:
                mean_loss = (loss_sum / batches).item()
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                run_log.log_step(step, epoch, loss.item(), scheduler.get_last_lr()[0])
    if batches == 0:
        raise UserError(f"every training file failed to load this epoch ({skipped} skipped): check the data")
    sample = {"image": images[0].cpu(), "true": masks[0].cpu(), "pred": logits_to_classes(logits.detach()[:1])[0].cpu()}
    return (loss_sum / batches).item(), step, sample, skipped


def main(args: argparse.Namespace) -> dict:
    check_args(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = choose_device(args.device)
    precision = choose_precision(device, args.amp, args.precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    check_writable(args.checkpoint_dir)

    resume_file = resume_path(args.resume, args.checkpoint_dir)
    resumed = load_checkpoint(resume_file) if resume_file else None
    if resumed is not None:
        if "optimizer" not in resumed:
            raise UserError(f"{resume_file} holds weights only, no training state: use --load to start from it")
        architecture = resumed["model_args"]  # the run's architecture wins over the flags
        args.classes, args.channels = architecture["n_classes"], architecture["n_channels"]
        args.bilinear = architecture["bilinear"]
        for name in ("binarize", "ignore_index", "class_weights"):  # the data is read as it was
            setattr(args, name, resumed.get("args", {}).get(name, getattr(args, name)))
        args.scale = resumed.get("scale", args.scale)

    weights = load_checkpoint(args.load) if args.load else None
    if weights is not None:  # start from these weights: their architecture decides how images are read
        args.channels = weights["model_args"]["n_channels"]
        args.classes = args.classes or weights["model_args"]["n_classes"]

    # Data: pair and check the files (decoded once, cached), settle the classes, split, wrap in loaders.
    data = check_dataset(args.imgs, args.masks, args.mask_suffix, args.binarize, args.ignore_index,
                         workers=max(args.workers, 1))
    print(data.report())
    if data.size_mismatches:
        raise UserError(f"{len(data.size_mismatches)} image/mask pairs differ in size, e.g. "
                        f"{data.size_mismatches[0]}: resize the masks to their images")
    check_scaled_sizes(data.image_sizes, args.scale)
    mask_values: list[MaskValue] = data.mask_values
    if resumed is not None and resumed.get("mask_values") is not None:
        known = resumed["mask_values"]
        if any(value not in known for value in mask_values):
            raise UserError(f"the masks now hold values {mask_values} but {resume_file} was trained on {known}: "
                            "resume with the same data or start a new run")
        mask_values = known
    if args.classes is None:
        args.classes = max(len(mask_values), 2)
    check_classes(mask_values, args.classes)
    class_weights = parse_class_weights(args.class_weights, args.classes, data.class_pixels)
    train_pairs, val_pairs = split_pairs(data.pairs, args.validation, args.seed)
    encoding = {"mask_values": mask_values, "scale": args.scale, "channels": args.channels,
                "binarize": args.binarize, "ignore_value": args.ignore_index}
    train_set = SegmentationDataset(train_pairs, **encoding, transform=train_augmentation(args.augment),
                                    skip_unreadable=True)
    val_set = SegmentationDataset(val_pairs, **encoding)
    shuffle_generator = torch.Generator()
    train_loader = make_loader(train_set, args.batch_size, device, min(args.workers, len(train_set)),
                               shuffle=True, generator=shuffle_generator)
    val_loader = make_loader(val_set, args.batch_size, device, min(args.workers, len(val_set))) if val_set else None

    # Model, optimizer, schedule (cosine decay over all steps), gradient scaler for fp16.
    if weights is not None:
        model = model_from_checkpoint(weights, n_classes=args.classes, bilinear=args.bilinear or None)
        args.bilinear = model.bilinear
    else:
        model = UNet(args.channels, args.classes, args.bilinear)
    model.use_checkpointing(args.checkpointing)
    model.to(device, memory_format=memory_format(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    total_steps = args.epochs * math.ceil(len(train_set) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps,
                                                           eta_min=args.learning_rate / 100)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)

    start_epoch, step, best_dice = 1, 0, -1.0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scheduler.T_max = total_steps  # --epochs may have been raised to train longer
        scaler.load_state_dict(resumed["scaler"])
        restore_rng_state(resumed["rng"])
        start_epoch, step, best_dice = resumed["epoch"] + 1, resumed["step"], resumed["best_dice"]
        best = f", best validation Dice {best_dice:.4f}" if best_dice >= 0 else ""
        print(f"resuming {resume_file}: epoch {start_epoch}, step {step}{best}")
        if start_epoch > args.epochs:
            print(f"{resume_file} has already trained {args.epochs} epochs: raise --epochs to train longer")

    print(f"{len(train_set)} training and {len(val_set)} validation images from {args.imgs}, scale {args.scale}, "
          f"mask values {mask_values}, {args.classes} classes, {precision.name} on {device}")
    run_log = RunLog(args.checkpoint_dir, vars(args), args.wandb or default_wandb_mode(), start_epoch)
    val_dice = None
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            started = time.perf_counter()
            shuffle_generator.manual_seed(args.seed * 1000 + epoch)  # the order of an epoch survives a resume
            train_loss, step, sample, skipped = train_one_epoch(model, train_loader, optimizer, scheduler, scaler,
                                                                device, precision, args, step, epoch, run_log,
                                                                class_weights)
            scores = evaluate(model, val_loader, device, precision) if val_loader else None
            val_dice = scores["dice"] if scores else None
            is_best = val_dice is not None and val_dice > best_dice
            best_dice = max(best_dice, val_dice) if val_dice is not None else best_dice
            state = {
                "scale": args.scale, "args": vars(args), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
                "best_dice": best_dice, "val_dice": val_dice, "rng": rng_state(), "mask_palette": data.palette,
            }
            save_checkpoint(args.checkpoint_dir / "last.pth", model, mask_values, **state)
            if is_best:
                save_checkpoint(args.checkpoint_dir / "best.pth", model, mask_values, **state)
            if args.keep_epochs:
                save_checkpoint(args.checkpoint_dir / f"epoch_{epoch}.pth", model, mask_values, **state)
            row = {"epoch": epoch, "step": step, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
                   "val_dice": val_dice, "val_iou": scores["iou"] if scores else None, "skipped": skipped,
                   "seconds": round(time.perf_counter() - started, 2)}
            run_log.log_epoch(row, model, sample)
            summary = f"epoch {epoch}: train loss {train_loss:.4f}" + (f", {skipped} files skipped" if skipped else "")
            if val_dice is not None:
                summary += f", validation Dice {val_dice:.4f}" + (" (best)" if is_best else "")
            print(summary)
    finally:
        run_log.close()
    print(f"checkpoints in {args.checkpoint_dir}: last.pth" + (", best.pth" if best_dice >= 0 else ""))
    return {"step": step, "best_dice": best_dice, "val_dice": val_dice}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
