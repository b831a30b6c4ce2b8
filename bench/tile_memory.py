"""Peak memory of predict.py on one large image with --tile auto: the "fits in a small GPU / a laptop" check.

    python bench/tile_memory.py --width 8000 --height 6000 --scale 1 --device cpu     # peak RSS of the process
    python bench/tile_memory.py --width 1918 --height 1280 --scale 1 --gpu-limit 2    # a GPU with 2 GiB

On a GPU, --gpu-limit caps PyTorch's allocator (torch.cuda.set_per_process_memory_fraction), so using more
raises CUDA's out-of-memory error as a small GPU would. Two runs: --max-memory set to the limit (tiles planned
from the budget), then predict.py's defaults (which read the GPU's real free memory, try the whole image,
run out of memory against the cap and must fall back to tiles). Weights are random; the mask is checked for size.
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import predict  # noqa: E402
from bench.arguments import MIN_SIDE, at_least, positive, scale_factor  # noqa: E402
from unet import UNet  # noqa: E402
from utils.device import choose_device  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def run_predict(flags: list[str], device: torch.device) -> tuple[float, float]:
    """(seconds, peak GiB: the CUDA allocator's, or the process's resident set on a CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    code = predict.main(predict.get_args_parser().parse_args(flags))
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"predict.py failed with code {code}")
    if device.type == "cuda":
        return seconds, torch.cuda.max_memory_allocated(device) / 2**30
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=at_least(MIN_SIDE), default=8000, help="image width (default: %(default)s)")
    parser.add_argument("--height", type=at_least(MIN_SIDE), default=6000, help="image height (default: %(default)s)")
    parser.add_argument("--scale", type=scale_factor, default=1.0, help="predict.py --scale (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if available)")
    parser.add_argument("--gpu-limit", type=positive, default=None, help="GiB PyTorch may allocate on the GPU")
    parser.add_argument("flags", nargs="*", help="more predict.py flags after --")
    return parser


def main(args: argparse.Namespace) -> None:
    device = choose_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        rng = np.random.default_rng(0)
        image = scratch / "large.jpg"
        Image.fromarray(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)).save(image, quality=90)
        checkpoint = scratch / "random.pth"
        torch.save({**UNet(3, 2).state_dict(), "mask_values": [0, 1]}, checkpoint)
        flags = ["-m", str(checkpoint), "-i", str(image), "-o", str(scratch / "mask.png"), "--scale", str(args.scale),
                 *(["--device", args.device] if args.device else []), *args.flags]
        runs = []
        if device.type == "cuda" and args.gpu_limit:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(args.gpu_limit * 2**30 / total, device)
            runs.append((f"--max-memory {args.gpu_limit}", flags + ["--max-memory", str(args.gpu_limit)]))
            runs.append(("defaults (out-of-memory fallback)", flags))
        else:
            runs.append(("defaults", flags))
        for label, run_flags in runs:
            seconds, peak = run_predict(run_flags, device)
            mask = Image.open(scratch / "mask.png")
            assert mask.size == (args.width, args.height), mask.size
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
            kind = "CUDA allocator peak" if device.type == "cuda" else "peak RSS of the process"
            print(f"| {name} | {args.width}x{args.height} scale {args.scale}, {label} | {seconds:.1f} s | "
                  f"{peak:.2f} GiB {kind} | torch {torch.__version__}, {time.strftime('%Y-%m-%d')} |", flush=True)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
