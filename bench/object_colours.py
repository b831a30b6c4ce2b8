"""Does a model segment a car of a colour it never saw? The synthetic Carvana set's cars, repainted.

    python bench/object_colours.py -m /tmp/unet_time_to_quality/carvana/ours/last.pth
    python bench/object_colours.py -m ours.pth reference.pth --scale 0.25 --views 1 3 5 7

Renders views of the three cars of bench/time_to_quality.py's Carvana split (utils.synthetic_data, seed 1, 480x320:
the two cars whose ids sort first train, the third is held out) in several paints, the shapes and everything else
unchanged, and prints each model's foreground Dice with its false positive and false negative pixels per car and
paint, scored at 480x320 in fp32. It tells a model that learnt the training cars' colours from one that learnt
what a car is: train.py's defaults before the colour channels were shuffled (2026-11-30) scored 0.98-0.99 on
every car painted green, blue or grey, and 0.92 on every car painted red, nearly all of the loss false positives
(a halo).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.checkpoint import load_model  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.inference import predict_image  # noqa: E402
from utils.synthetic_data import _car_id, _render  # noqa: E402

# The paints: the set's own cars (seed 1) are dark green (car 0), red (car 1) and white (car 2); the others are of
# the generator's palette.
PAINTS = {"green": (30, 75, 62), "white": (218, 221, 215), "red": (135, 31, 15), "blue": (28, 58, 130),
          "grey": (96, 99, 105)}
SEED, WIDTH, HEIGHT, CARS = 1, 480, 320, 3  # bench.heldout_dice.make_carvana_split's set


def scores(model: torch.nn.Module, scale: float, car: int, paint: tuple[int, int, int],
           views: list[int]) -> tuple[float, int, int]:
    """(Dice, false positives, false negatives) over the views, pixels pooled."""
    both = false_positive = false_negative = 0
    for view in views:
        image, mask = _render(WIDTH, HEIGHT, SEED, car, view, paint=paint)
        truth = np.asarray(mask) > 0
        predicted = predict_image(model, image, scale=scale, precision="fp32").numpy() > 0
        both += int((predicted & truth).sum())
        false_positive += int((predicted & ~truth).sum())
        false_negative += int((~predicted & truth).sum())
    return 2 * both / max(2 * both + false_positive + false_negative, 1), false_positive, false_negative


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--models", nargs="+", type=Path, required=True,
                        help="checkpoints: train.py's, or the reference's plain state dicts")
    parser.add_argument("--scale", type=float, default=None,
                        help="the scale the models read at (default: each checkpoint's own; 0.5 for plain state dicts)")
    parser.add_argument("--views", nargs="+", type=int, default=list(range(1, 17)), choices=range(1, 17),
                        metavar="V", help="views 1-16 to render (default: all)")
    return parser


def main(args: argparse.Namespace) -> None:
    torch.set_grad_enabled(False)
    held_out = max(range(CARS), key=lambda car: _car_id(SEED, car))  # the split trains the cars whose ids sort first
    print("| model | car | " + " | ".join(PAINTS) + " |\n|---|---|" + "---|" * len(PAINTS))
    for path in args.models:
        model, checkpoint = load_model(path, torch.device("cpu"))
        scale = args.scale or checkpoint.get("scale") or 0.5
        for car in range(CARS):
            cells = [scores(model, scale, car, paint, args.views) for paint in PAINTS.values()]
            role = "held out" if car == held_out else "trained"
            print(f"| {path} | {car} ({role}) | "
                  + " | ".join(f"{dice:.4f} ({fp} FP, {fn} FN)" for dice, fp, fn in cells) + " |", flush=True)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
