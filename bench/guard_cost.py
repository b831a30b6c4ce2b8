"""Cost of the non-finite guard (utils/nan_guard.py) per training step, against the step itself.

    python bench/guard_cost.py                      # CPU, 1918x1280 at scale 0.2, batch 4 (the CPU benchmark)
    python bench/guard_cost.py --device cuda --scale 0.5 --batch-size 16

Times train.py's own train_step with and without the guard, alternating, and the guard's own work alone
(BatchNorm statistics saved and put back, the finite check, the counters) over many repeats.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import at_least, scale_factor  # noqa: E402
from train import train_step  # noqa: E402
from unet import UNet  # noqa: E402
from utils.device import choose_device, choose_precision, memory_format  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.nan_guard import NonFiniteGuard  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if available)")
    parser.add_argument("--scale", type=scale_factor, default=0.2, help="of 1918x1280 (default: %(default)s)")
    parser.add_argument("--batch-size", type=at_least(1), default=4, help="(default: %(default)s)")
    parser.add_argument("--steps", type=at_least(1), default=4, help="timed steps with and without the guard each")
    return parser


def main(args: argparse.Namespace) -> None:
    device = choose_device(args.device)
    precision = choose_precision(device)
    height, width = int(1280 * args.scale), int(1918 * args.scale)
    model = UNet(3, 2).to(device, memory_format=memory_format(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)
    guard = NonFiniteGuard(model, optimizer, device)
    images = torch.rand(args.batch_size, 3, height, width, device=device).contiguous(
        memory_format=memory_format(device))
    masks = torch.randint(0, 2, (args.batch_size, height, width), device=device)

    def timed(with_guard: bool) -> float:
        sync(device)
        started = time.perf_counter()
        train_step(model, images, masks, optimizer, scaler, precision, 1.0, guard=guard if with_guard else None)
        sync(device)
        return time.perf_counter() - started

    timed(True), timed(False)  # warm-up
    plain, guarded = [], []
    for _ in range(args.steps):
        plain.append(timed(False))
        guarded.append(timed(True))
    norm = torch.tensor(1.0, device=device)
    sync(device)
    started = time.perf_counter()
    repeats = 200
    for _ in range(repeats):
        guard.before_forward()
        guard.before_step(norm)
        guard.after_step()
    sync(device)
    alone = (time.perf_counter() - started) / repeats
    step = statistics.median(plain)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"step {step * 1000:.1f} ms without the guard, {statistics.median(guarded) * 1000:.1f} ms with it; "
          f"the guard's own work {alone * 1000:.3f} ms = {alone / step:.3%} of a step")
    print(f"| {name} | {width}x{height}, batch {args.batch_size}, {precision.name} | {step * 1000:.0f} ms | "
          f"{alone * 1000:.3f} ms ({alone / step:.3%}) | torch {torch.__version__}, {time.strftime('%Y-%m-%d')} |")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
