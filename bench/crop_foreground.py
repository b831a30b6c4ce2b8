"""Held-out Dice of training on --crop windows, by the share of windows centred on an object (--crop-foreground).

    python bench/crop_foreground.py                        # shares 0, 0.33 and 0.67, one seed each
    python bench/crop_foreground.py --shares 0 0.33 --seeds 2
    python bench/crop_foreground.py --data carvana --shares 0 0.33   # large objects: does it cost anything?

sparse: 256x256 RGB images of textured noise with two small discs each (radius 4-7, about 0.5% of the pixels),
24 training and 8 held-out images, 64x64 windows (--crops-per-image 4): a window placed anywhere holds a disc
about one time in six. carvana: bench/heldout_dice.py's synthetic split (480x320, two cars train, the third is
held out), 128x128 windows at scale 1 (--crops-per-image 4): the car fills a large part of each view. The
held-out images are scored whole.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import fresh_work_dir  # noqa: E402
from bench.heldout_dice import make_carvana_split, train_and_score  # noqa: E402
from utils.errors import run_cli  # noqa: E402

SETTINGS = {
    "sparse": ["--scale", "1", "--crop", "64", "--batch-size", "8", "--learning-rate", "1e-3", "--workers", "0"],
    "carvana": ["--scale", "1", "--crop", "128", "--batch-size", "8", "--learning-rate", "1e-3", "--workers", "0"],
}


def make_sparse_split(root: Path, train: int = 24, test: int = 8, size: int = 256) -> tuple[Path, Path]:
    """Noisy images with two faint-edged discs each; 0/1 PNG masks of the discs."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for part, count in (("train", train), ("test", test)):
        for kind in ("imgs", "masks"):
            (root / part / kind).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            mask = np.zeros((size, size), bool)
            for _ in range(2):
                cy, cx, radius = rng.integers(10, size - 10), rng.integers(10, size - 10), rng.integers(4, 8)
                mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius * radius
            shade = 20 * np.sin(xx / rng.uniform(15, 40)) * np.cos(yy / rng.uniform(15, 40))  # texture to ignore
            image = rng.normal(100, 18, (size, size, 3)) + shade[..., None] + mask[..., None] * np.array([55, 25, -20])
            name = f"{part}{index:02d}.png"
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / part / "imgs" / name)
            Image.fromarray(mask.astype(np.uint8)).save(root / part / "masks" / name)
    return root / "train", root / "test"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(SETTINGS), default="sparse", help="data set (default: %(default)s)")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.33, 0.67],
                        help="--crop-foreground values to compare")
    parser.add_argument("--seeds", type=int, default=1, help="training runs per share (different seeds)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default: %(default)s)")
    parser.add_argument("--crops-per-image", type=int, default=4, help="windows per image and epoch (default: 4)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/unet_crop_foreground"), help="scratch folder")
    return parser


def main(args: argparse.Namespace) -> None:
    fresh_work_dir(args.work_dir)
    make_split = make_sparse_split if args.data == "sparse" else make_carvana_split
    train_dir, test_dir = make_split(args.work_dir)
    rows = []
    for share in args.shares:
        for seed in range(args.seeds):
            flags = [*SETTINGS[args.data], "--epochs", str(args.epochs), "--crops-per-image",
                     str(args.crops_per_image), "--crop-foreground", str(share)]
            result = train_and_score(train_dir, test_dir, flags, "light", args.work_dir / f"run_{share}_{seed}", seed)
            rows.append((share, seed, result["dice"], result["seconds"]))
            print(f"--crop-foreground {share} seed {seed}: held-out Dice {result['dice']:.4f} "
                  f"({result['seconds']:.0f} s training)", flush=True)
    print("\n| --crop-foreground | seed | held-out Dice | training s |\n|---|---|---|---|")
    for share, seed, score, seconds in rows:
        print(f"| {share} | {seed} | {score:.4f} | {seconds:.0f} |")
    print(f"\n{args.data}: torch {torch.__version__}, {torch.get_num_threads()} threads, flags: {SETTINGS[args.data]}, "
          f"--epochs {args.epochs}, --crops-per-image {args.crops_per_image}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
