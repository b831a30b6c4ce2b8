"""Training throughput, end to end: JPEG images and GIF masks read from disk, validation and checkpoints included.

    python bench/train_speed.py                                   # our defaults, Carvana size, scale 0.5
    python bench/train_speed.py --count 24 --scale 0.2 --batch-size 4 --precision fp32
    python bench/train_speed.py --count 24 --scale 0.2 --batch-size 4 --recipe reference   # the baseline
    python bench/train_speed.py --model-only --batch-size 16      # the ceiling: random tensors, no data

Writes (or reuses) a synthetic Carvana-format set (1918x1280 JPEG + GIF masks by default), then trains
--epochs epochs with the real train.main (or the reference recipe of bench/reference_recipe.py). The first
epoch is warm-up (worker start, cuDNN autotuning, compilation); the figures are the mean of the others:
training images per second of wall time (an epoch's training and validation and checkpoint saving), the share
of training time spent waiting for the loader, and the peak memory (CUDA allocator, or the process's peak
resident memory on a CPU). The last line is a Markdown table row for bench/README.md.
"""

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from bench.arguments import MIN_SIDE, at_least, base_channels, scale_factor  # noqa: E402
from bench.reference_recipe import train_reference  # noqa: E402
from unet import CLASSIC_BASE_CHANNELS, UNet  # noqa: E402
from utils.device import (  # noqa: E402
    COMPILE_CHOICES,
    choose_device,
    choose_precision,
    keep_freed_memory_on_cpu,
    memory_format,
    should_compile,
)
from utils.dice_score import segmentation_loss  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.synthetic_data import make_synthetic_carvana  # noqa: E402


def dataset(args: argparse.Namespace) -> tuple[Path, Path]:
    """--data as it is (a folder of the user's is never written to); else the synthetic set of --count pairs,
    written once."""
    folder = args.data or Path("data") / f"bench_carvana_{args.count}_{args.width}x{args.height}"
    imgs, masks = folder / "imgs", folder / "masks"
    if args.data is not None and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if not (imgs.is_dir() and masks.is_dir()):
            raise UserError(f"--data {folder} has no imgs/ and masks/ folders: give the folder that holds them, or "
                            "a new or empty one for synthetic pairs")
        return imgs, masks
    if not (imgs.is_dir() and len(list(imgs.iterdir())) == args.count):
        print(f"writing {args.count} synthetic {args.width}x{args.height} pairs to {folder}", flush=True)
        make_synthetic_carvana(folder, count=args.count, width=args.width, height=args.height)
    return imgs, masks


def peak_memory(device: torch.device) -> str:
    """CUDA: the peak of live tensors, and what the caching allocator held (what nvidia-smi shows, less context)."""
    if device.type == "cuda":
        return (f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB "
                f"(reserved {torch.cuda.max_memory_reserved(device) / 2**30:.2f})")
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS"  # KiB on Linux


def run_ours(args: argparse.Namespace, imgs: Path, masks: Path, run_dir: Path) -> list[dict]:
    flags = ["--imgs", str(imgs), "--masks", str(masks), "--scale", str(args.scale), "--epochs", str(args.epochs),
             "--checkpoint-dir", str(run_dir), "--wandb", "disabled", "--precision", args.precision,
             "--augment", args.augment, "--compile", args.compile, "--log-every", "50"]
    for flag, value in (("--batch-size", args.batch_size), ("--workers", args.workers), ("--device", args.device)):
        if value is not None:
            flags += [flag, str(value)]
    flags += ["--amp"] if args.amp else []
    flags += ["--checkpointing"] if args.checkpointing else []
    flags += ["--base-channels", str(args.base_channels)]
    flags += ["--crop", args.crop] if args.crop else []
    result = train.main(train.get_args_parser().parse_args(flags))
    return [{"images_per_second": float(row["images_per_second"]), "data_wait": float(row["data_wait"])}
            for row in result["history"]]


def run_reference(args: argparse.Namespace, imgs: Path, masks: Path, run_dir: Path) -> list[dict]:
    result = train_reference(imgs, masks, epochs=args.epochs, batch_size=args.batch_size or 1, scale=args.scale,
                             amp=args.amp, device=choose_device(args.device), checkpoint_dir=run_dir,
                             workers=args.workers)
    return [{"images_per_second": row["images_per_second"], "data_wait": row["data_wait_s"] / row["seconds"]}
            for row in result["epochs"]]


def model_only_step(args: argparse.Namespace) -> tuple[Callable[[], None], torch.device, int]:
    """Forward, loss, backward and AdamW step on random tensors already on the device: the compute ceiling.

    Returns the step, its device and its batch size; bench/step_profile.py profiles the same step.
    """
    device = choose_device(args.device)
    precision = choose_precision(device, args.amp, args.precision)
    keep_freed_memory_on_cpu(device)
    torch.backends.cudnn.benchmark = True
    batch = args.batch_size or 4
    height, width = int(args.height * args.scale), int(args.width * args.scale)
    model = UNet(3, 2, base_channels=args.base_channels).to(device, memory_format=memory_format(device))
    model.use_checkpointing(args.checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    compiled = should_compile(args.compile, device)
    step_model = torch.compile(model, mode=args.compile_mode) if compiled else model
    images = torch.rand(batch, 3, height, width, device=device).contiguous(memory_format=memory_format(device))
    masks = torch.randint(0, 2, (batch, height, width), device=device)

    def step() -> None:
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()  # reduce-overhead: a new step may reuse graph outputs
        with precision.autocast():
            loss = segmentation_loss(step_model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, device, batch


def seconds_per_step(step: Callable[[], None], device: torch.device, steps: int) -> float:
    """Mean wall time of `steps` steps, the GPU's queue drained before and after."""
    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - started) / steps


def run_model_only(args: argparse.Namespace) -> list[dict]:
    step, device, batch = model_only_step(args)
    return [{"images_per_second": batch / seconds_per_step(step, device, args.steps), "data_wait": 0.0}
            for _ in range(args.epochs)]


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The input size, batch, precision and compilation of a step: here and in bench/step_profile.py."""
    parser.add_argument("--width", type=at_least(MIN_SIDE), default=1918, help="image width (default: %(default)s)")
    parser.add_argument("--height", type=at_least(MIN_SIDE), default=1280, help="image height (default: %(default)s)")
    parser.add_argument("--scale", type=scale_factor, default=0.5, help="train.py --scale (default: %(default)s)")
    parser.add_argument("--batch-size", type=at_least(1), default=None, help="default: the recipe's own")
    parser.add_argument("--precision", default="auto", help="train.py --precision (ours; default: %(default)s)")
    parser.add_argument("--amp", action="store_true", help="train.py --amp, or the reference's --amp")
    parser.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                        help="train.py --compile (default: %(default)s)")
    parser.add_argument("--compile-mode", default=None,
                        help="--model-only: torch.compile's mode, e.g. max-autotune-no-cudagraphs or reduce-overhead "
                             "(default: torch's own), to see whether train.py should offer one")
    parser.add_argument("--checkpointing", action="store_true", help="train.py --checkpointing")
    parser.add_argument("--base-channels", type=base_channels, default=CLASSIC_BASE_CHANNELS,
                        help="train.py --base-channels, the model's width (ours and --model-only; default: "
                             "%(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if available)")


def check_args(args: argparse.Namespace) -> None:
    """What argparse cannot check alone (tests/test_gpu_check.py runs it on gpu_check.sh's commands)."""
    if args.epochs < 2:
        raise UserError("--epochs must be at least 2: the first epoch is warm-up")
    if args.recipe == "reference" and not args.model_only and args.base_channels != CLASSIC_BASE_CHANNELS:
        raise UserError("--base-channels is for our recipe: the reference's U-Net has 64")
    if args.compile_mode and not args.model_only:
        raise UserError("--compile-mode is for --model-only runs: train.py compiles with torch's default mode")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Training images/s, end to end or model only.")
    parser.add_argument("--recipe", choices=("ours", "reference"), default="ours",
                        help="our train.py, or the reference recipe re-created in bench/reference_recipe.py")
    parser.add_argument("--model-only", action="store_true", help="random tensors on the device, no data")
    parser.add_argument("--steps", type=at_least(1), default=6,
                        help="--model-only: steps per timed round (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=None,
                        help="data folder with imgs/ and masks/, used as it is; an empty or missing one gets --count "
                             "synthetic pairs (default: data/bench_carvana_...)")
    parser.add_argument("--count", type=at_least(1), default=320,
                        help="synthetic image/mask pairs (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs, the first one warm-up (default: %(default)s)")
    parser.add_argument("--workers", type=at_least(0), default=None, help="default: the recipe's own")
    parser.add_argument("--augment", default=train.DEFAULT_AUGMENT, help="train.py --augment (default: %(default)s)")
    parser.add_argument("--crop", default=None, help="train.py --crop (ours)")
    add_step_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> None:
    check_args(args)

    device = choose_device(args.device)
    with tempfile.TemporaryDirectory() as run_dir:
        if args.model_only:
            rows = run_model_only(args)
            recipe = "model only"
        else:
            imgs, masks = dataset(args)
            run = run_reference if args.recipe == "reference" else run_ours
            rows = run(args, imgs, masks, Path(run_dir))
            recipe = args.recipe
    timed = rows[1:]
    images_per_second = sum(row["images_per_second"] for row in timed) / len(timed)
    data_wait = sum(row["data_wait"] for row in timed) / len(timed)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    precision = "reference" if args.recipe == "reference" and not args.model_only else args.precision
    flags = "".join(f" --{name}" for name in ("amp", "checkpointing") if getattr(args, name))
    flags += f" --crop {args.crop}" if args.crop else ""
    mode = f" ({args.compile_mode})" if args.compile_mode else ""
    size = f"{int(args.width * args.scale)}x{int(args.height * args.scale)}" if args.data is None or args.model_only \
        else f"{args.data}"  # its own sizes
    settings = (f"{size} (scale {args.scale}), batch {args.batch_size or 'default'}, precision {precision}{flags}, "
                f"compile {args.compile}{mode}")
    per_epoch = ", ".join(f"{row['images_per_second']:.3f}" for row in rows)
    print(f"per epoch: {per_epoch} images/s (first = warm-up)")
    print(f"| {recipe} | {name} | {settings} | {images_per_second:.3f} | {data_wait:.1%} | "
          f"{peak_memory(device)} | torch {torch.__version__}, {time.strftime('%Y-%m-%d')} |")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
