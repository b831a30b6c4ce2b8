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

from bench.heldout_dice import CARVANA_CARS, CARVANA_HEIGHT, CARVANA_SEED, CARVANA_WIDTH, carvana_cars  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.dice_score import per_class_counts, scores_from_counts  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.inference import predict_image  # noqa: E402
from utils.synthetic_data import _render  # noqa: E402

# The paints: the set's own cars (seed 1) are dark green (car 0), red (car 1) and white (car 2); the others are of
# the generator's palette.
PAINTS = {"green": (30, 75, 62), "white": (218, 221, 215), "red": (135, 31, 15), "blue": (28, 58, 130),
          "grey": (96, 99, 105)}


def scores(model: torch.nn.Module, scale: float | None, car: int, paint: tuple[int, int, int],
           views: list[int]) -> tuple[float, int, int]:
    """(Dice, false positives, false negatives) of the car over the views, pixels pooled."""
    counts = []
    for view in views:
        image, mask = _render(CARVANA_WIDTH, CARVANA_HEIGHT, CARVANA_SEED, car, view, paint=paint)
        predicted = predict_image(model, image, scale=scale, precision="fp32") > 0
        counts.append(per_class_counts(predicted[None], torch.from_numpy(np.asarray(mask) > 0)[None], 2))
    both, predicted, true = (torch.cat(parts).sum(0)[1] for parts in zip(*counts))
    dice, _ = scores_from_counts(both, predicted, true)
    return dice.item(), int(predicted - both), int(true - both)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--models", nargs="+", type=Path, required=True,
                        help="checkpoints: train.py's, or the reference's plain state dicts")
    parser.add_argument("--scale", type=float, default=None,
                        help="the scale the models read at (default: each checkpoint's own; 0.5 for plain state dicts, "
                             "as in predict.py)")
    parser.add_argument("--views", nargs="+", type=int, default=list(range(1, 17)), choices=range(1, 17),
                        metavar="V", help="views 1-16 to render (default: all)")
    return parser


def main(args: argparse.Namespace) -> None:
    torch.set_grad_enabled(False)
    _, held_out = carvana_cars()
    print("| model | car | " + " | ".join(PAINTS) + " |\n|---|---|" + "---|" * len(PAINTS))
    for path in args.models:
        model, _ = load_model(path, torch.device("cpu"))
        for car in range(CARVANA_CARS):
            cells = [scores(model, args.scale, car, paint, args.views) for paint in PAINTS.values()]
            role = "held out" if car in held_out else "trained"
            print(f"| {path} | {car} ({role}) | "
                  + " | ".join(f"{dice:.4f} ({fp} FP, {fn} FN)" for dice, fp, fn in cells) + " |", flush=True)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
