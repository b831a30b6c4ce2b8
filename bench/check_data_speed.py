"""Data check time vs one epoch of data loading, on synthetic Carvana-size files.

    python bench/check_data_speed.py --count 200 --workers 2

Prints: the first (cold) check, the second (cached) check, and one pass of the training DataLoader over the
same pairs at --scale 0.5 (decode, resize, encode masks; no model), all with the same number of workers.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import at_least, fresh_work_dir  # noqa: E402
from utils.check_data import CACHE_NAME, check_dataset  # noqa: E402
from utils.data_loading import SegmentationDataset, make_loader  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.synthetic_data import make_synthetic_carvana  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=at_least(1), default=200, help="image/mask pairs (default: %(default)s)")
    parser.add_argument("--workers", type=at_least(1), default=2, help="processes for the check and the loader")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/unet_check_speed"), help="scratch folder")
    return parser


def main(args: argparse.Namespace) -> None:
    imgs, masks = args.work_dir / "imgs", args.work_dir / "masks"
    if not imgs.is_dir() or len(list(imgs.iterdir())) != args.count:
        fresh_work_dir(args.work_dir)
        make_synthetic_carvana(args.work_dir, count=args.count, workers=args.workers)
    (masks / CACHE_NAME).unlink(missing_ok=True)

    started = time.perf_counter()
    check = check_dataset(imgs, masks, workers=args.workers)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    check_dataset(imgs, masks, workers=args.workers)
    warm = time.perf_counter() - started

    dataset = SegmentationDataset(check.pairs, check.mask_values, scale=0.5)
    loader = make_loader(dataset, 4, torch.device("cpu"), args.workers)
    started = time.perf_counter()
    for _ in loader:
        pass
    epoch = time.perf_counter() - started
    print(f"{args.count} pairs of 1918x1280 JPEG + GIF, {args.workers} workers, torch {torch.__version__}")
    print(f"data check, cold: {cold:.1f} s ({args.count / cold:.1f} pairs/s)")
    print(f"data check, cached: {warm:.2f} s")
    print(f"one epoch of data loading at scale 0.5: {epoch:.1f} s ({args.count / epoch:.1f} pairs/s)")
    print(f"cold check / epoch loading: {cold / epoch:.2f}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
