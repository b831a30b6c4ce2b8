"""Held-out Dice within the same wall-clock budget: train.py's defaults against the reference recipe's.

    python bench/time_to_quality.py                    # both data sets, train.py's default epochs
    python bench/time_to_quality.py --data nuclei --epochs 10

For each data set, train.py runs with its defaults (only the data flags and --epochs given) and its wall time T
is measured; then the reference recipe (bench/reference_recipe.py: RMSprop lr 1e-5, batch 1, no augmentation,
ReduceLROnPlateau) trains with T seconds as its budget. Both models are scored with the same function
(utils.scoring.evaluate, fp32, at the masks' native resolution) on images neither trained on:
- carvana: the synthetic Carvana-format set, cars 1-2 (32 views) train, car 3 (16 views) is held out;
- nuclei: the real 2018 Data Science Bowl image in the stardist wheel, top three quarters (96 px tiles) train,
  bottom quarter held out; masks binarised (nucleus / background) and images made 8-bit RGB for both recipes.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from bench.arguments import at_least, fresh_work_dir  # noqa: E402
from bench.heldout_dice import make_carvana_split, make_nuclei_split, model_scores  # noqa: E402
from bench.reference_recipe import train_reference  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.errors import run_cli  # noqa: E402

# The data flags, the same for both recipes: Carvana names its masks <id>_mask.gif, the nuclei tiles share names.
DATA = {"carvana": {"scale": 0.5, "mask_suffix": "_mask"}, "nuclei": {"scale": 1.0, "mask_suffix": ""}}


def binarize_masks(folder: Path) -> None:
    """Instance labels -> 0/1 (the reference recipe has no --binarize)."""
    for path in folder.iterdir():
        Image.fromarray((np.asarray(Image.open(path)) > 0).astype(np.uint8)).save(path)


def to_rgb8(folder: Path) -> None:
    """16-bit grayscale -> 8-bit RGB, each image stretched to its own range: the reference reads 3-channel
    8-bit images only (it divides by 255)."""
    for path in folder.iterdir():
        values = np.asarray(Image.open(path)).astype(np.float64)
        stretched = (values - values.min()) / max(values.max() - values.min(), 1e-12) * 255
        Image.fromarray(stretched.round().astype(np.uint8)).convert("RGB").save(path)


def compare(name: str, root: Path, epochs: int | None) -> dict:
    train_dir, test_dir = (make_nuclei_split if name == "nuclei" else make_carvana_split)(root)
    if name == "nuclei":
        for part in (train_dir, test_dir):
            binarize_masks(part / "masks")
            to_rgb8(part / "imgs")
    scale = DATA[name]["scale"]
    flags = ["--imgs", str(train_dir / "imgs"), "--masks", str(train_dir / "masks"), "--scale", str(scale),
             "--checkpoint-dir", str(root / "ours"), "--wandb", "disabled"]
    flags += ["--epochs", str(epochs)] if epochs is not None else []
    started = time.perf_counter()
    train.main(train.get_args_parser().parse_args(flags))
    budget = time.perf_counter() - started
    ours, _ = load_model(root / "ours" / "last.pth", torch.device("cpu"))
    ours_dice = model_scores(ours, test_dir, scale, [0, 1], precision="fp32")["none"]
    print(f"{name}: train.py defaults: held-out Dice {ours_dice:.4f} in {budget:.0f} s", flush=True)

    started = time.perf_counter()
    reference = train_reference(train_dir / "imgs", train_dir / "masks", epochs=10_000, batch_size=1, scale=scale,
                                mask_suffix=DATA[name]["mask_suffix"], time_budget_s=budget)
    reference_seconds = time.perf_counter() - started
    reference_dice = model_scores(reference["model"], test_dir, scale, [0, 1], precision="fp32")["none"]
    images = sum(row["images"] for row in reference["epochs"])
    print(f"{name}: reference recipe: held-out Dice {reference_dice:.4f} in {reference_seconds:.0f} s "
          f"({images} training images seen)", flush=True)
    return {"data": name, "ours": ours_dice, "reference": reference_dice, "budget": budget}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=sorted(DATA), default=sorted(DATA), help="data sets")
    parser.add_argument("--epochs", type=at_least(1), default=None, help="train.py --epochs (default: train.py's)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/unet_time_to_quality"), help="scratch folder")
    return parser


def main(args: argparse.Namespace) -> None:
    fresh_work_dir(args.work_dir)
    rows = [compare(name, args.work_dir / name, args.epochs) for name in args.data]
    print("\n| data | budget (s) | train.py defaults | reference recipe |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['data']} | {row['budget']:.0f} | {row['ours']:.4f} | {row['reference']:.4f} |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
