"""predict.py and evaluate.py on a folder of tiles of several sizes in shuffled order, against a folder of one size:
what batching images of one size across loader batches (utils/size_groups.py) is worth.

    python bench/mixed_sizes.py                          # 1,200 PNG tiles: 64x64 alone, and 4 sizes shuffled
    python bench/mixed_sizes.py --count 400 --base-channels 16

Each folder is predicted and evaluated twice, by the real command lines in fresh processes, with a random model
(the speed does not depend on the weights); the faster of the two runs is printed. The mixed folder holds 1.44x
the pixels per image of the 64x64 one on average, so equal batching would predict it at about 1/1.44 the rate.
"""

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.arguments import at_least, base_channels  # noqa: E402
from unet import UNet  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.errors import run_cli  # noqa: E402

SIZES = ((64, 64), (80, 64), (64, 80), (96, 96))  # (width, height) of the mixed folder's tiles


def write_folder(root: Path, count: int, mixed: bool, seed: int = 0) -> None:
    """imgs/ and masks/ of count random tiles: 64x64, or SIZES in a shuffled order."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    for folder in ("imgs", "masks"):
        (root / folder).mkdir(parents=True)
    for index in range(count):
        width, height = rng.choice(SIZES) if mixed else SIZES[0]
        name = f"{index:05d}.png"
        Image.fromarray(noise.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "imgs" / name)
        Image.fromarray((noise.random((height, width)) > 0.5).astype(np.uint8)).save(root / "masks" / name)


def seconds(command: list[str]) -> tuple[float, str]:
    """The whole process's seconds (start and model loading included), and its output."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *command], cwd=REPO, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, done.stdout


def own_rate(stdout: str) -> str:
    """predict.py's own figure, from its first batch to its last mask (the process start left out)."""
    found = re.search(r"predicted \d+ images in [\d.]+ s \(([\d.]+) images/s", stdout)
    return found[1] if found else "?"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=at_least(2), default=1200, help="tiles per folder (default 1200)")
    parser.add_argument("--base-channels", type=base_channels, default=16,
                        help="width of the random model (default 16: tiles, where the loop around it matters)")
    parser.add_argument("--repeats", type=at_least(1), default=2, help="runs of each command; the fastest counts")
    return parser


def main(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        save_checkpoint(root / "model.pth", UNet(3, 2, base_channels=args.base_channels), [0, 1], scale=1.0)
        print(f"{args.count} PNG tiles per folder, UNet --base-channels {args.base_channels}, "
              f"{torch.get_num_threads()} threads; the faster of {args.repeats} runs, whole processes")
        for name, mixed in (("one size (64x64)", False), ("4 sizes shuffled", True)):
            folder = root / ("mixed" if mixed else "one")
            write_folder(folder, args.count, mixed)
            predict, said = min(seconds(["predict.py", "-m", str(root / "model.pth"), "-i", str(folder / "imgs"),
                                         "-o", str(root / f"out{run}"), "--overwrite"]) for run in range(args.repeats))
            evaluate, _ = min(seconds(["evaluate.py", "-m", str(root / "model.pth"), "--imgs", str(folder / "imgs"),
                                       "--masks", str(folder / "masks"), "-o", str(root / "scores.csv")])
                              for _ in range(args.repeats))
            print(f"{name:18s} predict.py {predict:5.1f} s ({own_rate(said)} images/s by its own count)   "
                  f"evaluate.py {evaluate:5.1f} s")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
