"""Held-out Dice of short training runs, per augmentation preset, on two data sets.

    python bench/heldout_dice.py                       # both data sets, presets none, light and strong
    python bench/heldout_dice.py --data nuclei --presets none light

- carvana: the synthetic Carvana-format set (utils.synthetic_data), 480x320; cars 1-2 (32 views) train, car 3
  (16 views, never seen) is held out.
- nuclei: the real fluorescence-microscopy image shipped in the stardist wheel (2018 Data Science Bowl, CC0),
  512x512 16-bit with hand-annotated instance labels; tiles of the top three quarters train, the bottom quarter
  is held out. A plain Otsu threshold of the held-out strip is the baseline to beat.
"""

import argparse
import importlib.util
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from bench.arguments import at_least, base_channels, fresh_work_dir  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.data_loading import SegmentationDataset, list_pairs, make_loader  # noqa: E402
from utils.device import choose_precision  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.inference import TTA_CHOICES, InferenceOptions  # noqa: E402
from utils.scoring import evaluate  # noqa: E402
from utils.synthetic_data import VIEWS, _car_id, make_synthetic_carvana  # noqa: E402

# Per data set: the training flags of the comparison (the same for every preset).
SETTINGS = {
    "carvana": ["--scale", "0.25", "--epochs", "8", "--batch-size", "2", "--learning-rate", "5e-4"],
    "nuclei": ["--binarize", "--scale", "1", "--epochs", "12", "--batch-size", "8", "--learning-rate", "1e-3"],
}


def nuclei_files() -> tuple[Path, Path]:
    """img2d.tif and mask2d.tif from the installed stardist package, found without importing it."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("stardist is not installed: pip install --no-deps stardist==0.9.2 (make install-test does)")
    folder = Path(spec.submodule_search_locations[0]) / "data" / "images"
    return folder / "img2d.tif", folder / "mask2d.tif"


def make_nuclei_split(root: Path, tile: int = 96, stride: int = 48) -> tuple[Path, Path]:
    """Tiles of the top three quarters -> root/train, the bottom quarter -> root/test (16-bit PNGs)."""
    image_file, mask_file = nuclei_files()
    image, mask = np.asarray(Image.open(image_file)), np.asarray(Image.open(mask_file))
    split = image.shape[0] * 3 // 4
    for part in ("train", "test"):
        for kind in ("imgs", "masks"):
            (root / part / kind).mkdir(parents=True, exist_ok=True)
    for top in range(0, split - tile + 1, stride):
        for left in range(0, image.shape[1] - tile + 1, stride):
            name = f"tile_{top:03d}_{left:03d}.png"
            Image.fromarray(image[top:top + tile, left:left + tile]).save(root / "train" / "imgs" / name)
            Image.fromarray(mask[top:top + tile, left:left + tile]).save(root / "train" / "masks" / name)
    Image.fromarray(image[split:]).save(root / "test" / "imgs" / "bottom.png")
    Image.fromarray(mask[split:]).save(root / "test" / "masks" / "bottom.png")
    return root / "train", root / "test"


# The synthetic Carvana split: 16 views of each of 3 cars, 480x320, seed 1; the 2 cars whose ids sort first train.
CARVANA_SEED, CARVANA_WIDTH, CARVANA_HEIGHT, CARVANA_CARS, CARVANA_TRAINING_CARS = 1, 480, 320, 3, 2


def carvana_cars() -> tuple[list[int], list[int]]:
    """(training cars, held-out cars) of make_carvana_split, as utils.synthetic_data's car numbers."""
    cars = sorted(range(CARVANA_CARS), key=lambda car: _car_id(CARVANA_SEED, car))
    return cars[:CARVANA_TRAINING_CARS], cars[CARVANA_TRAINING_CARS:]


def make_carvana_split(root: Path) -> tuple[Path, Path]:
    """48 synthetic views of 3 cars: two cars train, the third is held out (carvana_cars)."""
    imgs, masks = make_synthetic_carvana(root / "all", count=CARVANA_CARS * VIEWS, width=CARVANA_WIDTH,
                                         height=CARVANA_HEIGHT, seed=CARVANA_SEED)
    for part, cars in zip(("train", "test"), carvana_cars()):
        ids = {_car_id(CARVANA_SEED, car) for car in cars}
        for kind, folder in (("imgs", imgs), ("masks", masks)):
            (root / part / kind).mkdir(parents=True, exist_ok=True)
            for path in folder.iterdir():
                if path.name[:12] in ids:
                    shutil.copy(path, root / part / kind / path.name)
    return root / "train", root / "test"


def otsu_threshold(values: np.ndarray) -> float:
    """The threshold that maximises the between-class variance of a 256-bin histogram."""
    histogram, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(histogram)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(histogram * centres) / np.maximum(weight_low, 1)
    mean_high = (np.sum(histogram * centres) - np.cumsum(histogram * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[np.argmax(between)])


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (prediction & truth).sum() / total)


def otsu_dice(test_dir: Path) -> float:
    """Foreground Dice of Otsu thresholding on the held-out images (all pixels pooled)."""
    predictions, truths = [], []
    for pair in list_pairs(test_dir / "imgs", test_dir / "masks"):
        image = np.asarray(Image.open(pair.image)).astype(np.float64)
        predictions.append((image > otsu_threshold(image)).ravel())
        truths.append((np.asarray(Image.open(pair.mask)) != 0).ravel())
    return dice(np.concatenate(predictions), np.concatenate(truths))


def heldout_scores(checkpoint_file: Path, test_dir: Path, tta_modes: tuple[str, ...] = ("none",),
                   precision: str = "auto") -> dict[str, float]:
    """Mean Dice of a checkpoint on the held-out images at their native resolution, read as it was trained
    to read them, on the CPU: {test-time augmentation mode: Dice}."""
    model, checkpoint = load_model(checkpoint_file, torch.device("cpu"))
    trained_with = checkpoint["args"]
    return model_scores(model, test_dir, checkpoint["scale"], model.mask_values, tta_modes, precision,
                        binarize=trained_with["binarize"], ignore_value=trained_with["ignore_index"])


def model_scores(model: torch.nn.Module, test_dir: Path, scale: float, mask_values: list,
                 tta_modes: tuple[str, ...] = ("none",), precision: str = "auto", binarize: int | None = None,
                 ignore_value: int | None = None) -> dict[str, float]:
    """heldout_scores for a model object (also the reference recipe's, which has no checkpoint of ours)."""
    device = torch.device("cpu")
    model = model.to(device)
    dataset = SegmentationDataset(list_pairs(test_dir / "imgs", test_dir / "masks"), mask_values, scale,
                                  model.n_channels, scale_masks=False, binarize=binarize, ignore_value=ignore_value)
    return {mode: evaluate(model, make_loader(dataset, 1, device, 0), device,
                           choose_precision(device, precision=precision), progress=False,
                           options=InferenceOptions(tile="none", tta=mode))["dice"]
            for mode in tta_modes}


def train_and_score(train_dir: Path, test_dir: Path, flags: list[str], preset: str, run_dir: Path,
                    seed: int = 0, tta_modes: tuple[str, ...] = ("none",)) -> dict:
    """Train with the real train.main, then score the held-out images at their native resolution, once per
    test-time augmentation mode: {"dice": the first mode's, "dice_by_tta": {mode: Dice}, "seconds"}."""
    args = train.get_args_parser().parse_args([
        "--imgs", str(train_dir / "imgs"), "--masks", str(train_dir / "masks"), "--validation", "0",
        "--augment", preset, "--checkpoint-dir", str(run_dir), "--wandb", "disabled", "--seed", str(seed),
        "--amp", "--overwrite", *flags,  # a scratch folder: a rerun of the benchmark replaces its runs
    ])
    started = time.perf_counter()
    train.main(args)
    seconds = time.perf_counter() - started
    by_tta = heldout_scores(run_dir / "last.pth", test_dir, tta_modes)
    return {"dice": by_tta[tta_modes[0]], "dice_by_tta": by_tta, "seconds": seconds}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=sorted(SETTINGS), default=sorted(SETTINGS), help="data sets")
    parser.add_argument("--presets", nargs="+", default=["none", "light", "strong"], help="augmentation presets")
    parser.add_argument("--seeds", type=int, default=1, help="training runs per preset (different seeds)")
    parser.add_argument("--epochs", type=at_least(1), default=None, help="override the data sets' epoch counts")
    parser.add_argument("--base-channels", type=base_channels, default=None,
                        help="train.py --base-channels, the model's width (default: train.py's, 64)")
    parser.add_argument("--tta", nargs="+", choices=TTA_CHOICES, default=["none"],
                        help="score each trained model with these test-time augmentations (default: none)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/unet_heldout"), help="scratch folder")
    return parser


def main(args: argparse.Namespace) -> None:
    fresh_work_dir(args.work_dir)
    rows = []
    for name in args.data:
        make_split = make_nuclei_split if name == "nuclei" else make_carvana_split
        train_dir, test_dir = make_split(args.work_dir / name)
        if name == "nuclei":
            print(f"nuclei: Otsu threshold baseline, held-out Dice {otsu_dice(test_dir):.4f}")
        for preset in args.presets:
            flags = SETTINGS[name] + (["--epochs", str(args.epochs)] if args.epochs is not None else []) + \
                (["--base-channels", str(args.base_channels)] if args.base_channels else [])
            for seed in range(args.seeds):
                result = train_and_score(train_dir, test_dir, flags, preset,
                                         args.work_dir / name / f"run_{preset}_{seed}", seed, tuple(args.tta))
                for mode, score in result["dice_by_tta"].items():
                    rows.append((name, preset, seed, mode, score, result["seconds"]))
                    print(f"{name}: --augment {preset} seed {seed} --tta {mode}: held-out Dice {score:.4f} "
                          f"({result['seconds']:.0f} s training)", flush=True)
    print("\n| data | --augment | seed | --tta | held-out Dice | training s |\n|---|---|---|---|---|---|")
    for name, preset, seed, mode, score, seconds in rows:
        print(f"| {name} | {preset} | {seed} | {mode} | {score:.4f} | {seconds:.0f} |")
    epochs = f", --epochs {args.epochs} for all" if args.epochs is not None else ""
    width = f", --base-channels {args.base_channels}" if args.base_channels else ""
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, flags: {SETTINGS}{epochs}{width}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
