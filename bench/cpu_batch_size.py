"""Images/s of the model's training step and forward pass on a CPU, by image size and batch size: the figures
behind the CPU defaults of train.py and predict.py (default_batch_size, predict's batch rule).

    python bench/cpu_batch_size.py                       # 32, 64, 128, 256 px squares; batches 1, 4, 16, 64
    python bench/cpu_batch_size.py --sides 32 256 --batches 4 16 --steps 3

The model alone on random tensors (no data loading): the classic U-Net (64 base channels unless
--base-channels), channels_last, under train.py's precision choice for this CPU (bf16 autocast where the CPU
computes bf16 natively), fused AdamW; a warm-up step, then the mean of --steps timed steps (at least 2 s).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import at_least, base_channels  # noqa: E402
from unet import CLASSIC_BASE_CHANNELS, UNet  # noqa: E402
from utils.device import PRECISIONS, Precision, choose_precision, keep_freed_memory_on_cpu, memory_format  # noqa: E402
from utils.dice_score import segmentation_loss  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def timed(step, steps: int, images: int) -> float:
    """Images/s of step() after one warm-up call: at least `steps` calls and 2 s."""
    step()
    calls, started = 0, time.perf_counter()
    while calls < steps or time.perf_counter() - started < 2:
        step()
        calls += 1
    return calls * images / (time.perf_counter() - started)


def measure(side: int, batch: int, precision: Precision, width: int, steps: int) -> tuple[float, float]:
    """(training, prediction) images/s of the model at side x side, batch images at a time."""
    device = torch.device("cpu")
    model = UNet(3, 2, base_channels=width).to(memory_format=memory_format(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = torch.randn(batch, 3, side, side).contiguous(memory_format=memory_format(device))
    masks = torch.randint(0, 2, (batch, side, side))

    def train_step() -> None:
        with precision.autocast():
            loss = segmentation_loss(model(images), masks)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def predict_step() -> None:
        with torch.inference_mode(), precision.autocast():
            model(images).argmax(1)

    model.train()
    training = timed(train_step, steps, batch)
    model.eval()
    return training, timed(predict_step, steps, batch)


def main(args: argparse.Namespace) -> None:
    device = torch.device("cpu")
    precision = choose_precision(device, precision=args.precision)
    keep_freed_memory_on_cpu(device)  # as train.py and predict.py run on CPUs
    torch.manual_seed(0)
    print(f"CPU, {torch.get_num_threads()} threads, precision {precision.name}, base channels {args.base_channels}, "
          f"torch {torch.__version__}")
    print("| side | batch | training images/s | prediction images/s |")
    print("|---|---|---|---|")
    for side in args.sides:
        for batch in args.batches:
            training, prediction = measure(side, batch, precision, args.base_channels, args.steps)
            print(f"| {side} | {batch} | {training:.1f} | {prediction:.1f} |", flush=True)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=at_least(32), nargs="+", default=[32, 64, 128, 256], help="square image sides")
    parser.add_argument("--batches", type=at_least(1), nargs="+", default=[1, 4, 16, 64], help="batch sizes")
    parser.add_argument("--steps", type=at_least(1), default=3, help="timed steps per setting (and at least 2 s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="as train.py's (default: auto)")
    parser.add_argument("--base-channels", type=base_channels, default=CLASSIC_BASE_CHANNELS,
                        help="U-Net width (default: the classic 64)")
    return parser


if __name__ == "__main__":
    run_cli(main, get_args_parser())
