"""BatchNorm's running averages against statistics recomputed each epoch (train.py --batchnorm-images N).

    python bench/batchnorm_stats.py --data carvana --seeds 0,1 --images 0,32
    python bench/batchnorm_stats.py --data nuclei --seeds 0 --images 0,16

For each seed and N, trains with train.py's defaults on the data set of bench/heldout_dice.py (all of its
training images, --validation 0; nuclei: --binarize, scale 1, batch 8, lr 1e-3, 10 epochs; carvana: scale 0.5,
5 epochs) with --keep-epochs, then scores every epoch's checkpoint on the held-out images (utils.scoring.evaluate,
fp32, the masks' resolution). Prints one line per run: the held-out Dice after each epoch and the mean seconds
per epoch.
"""

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from bench.heldout_dice import heldout_scores, make_carvana_split, make_nuclei_split  # noqa: E402
from utils.errors import run_cli  # noqa: E402

FLAGS = {
    "nuclei": ["--binarize", "--scale", "1", "--epochs", "10", "--batch-size", "8", "--learning-rate", "1e-3"],
    "carvana": ["--scale", "0.5", "--epochs", "5", "--mask-suffix", "_mask"],
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=tuple(FLAGS), default="carvana", help="data set (default: %(default)s)")
    parser.add_argument("--seeds", default="0", help="comma-separated train.py --seed values (default: %(default)s)")
    parser.add_argument("--images", default="0,32",
                        help="comma-separated --batchnorm-images values; 0 = running averages (default: %(default)s)")
    return parser


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        train_dir, test_dir = (make_nuclei_split if args.data == "nuclei" else make_carvana_split)(root)
        for seed in args.seeds.split(","):
            for images in args.images.split(","):
                run = root / "run"
                shutil.rmtree(run, ignore_errors=True)
                train.main(train.get_args_parser().parse_args([
                    *FLAGS[args.data], "--imgs", str(train_dir / "imgs"), "--masks", str(train_dir / "masks"),
                    "--validation", "0", "--workers", "0", "--amp", "--keep-epochs", "--wandb", "disabled",
                    "--checkpoint-dir", str(run), "--seed", seed, "--batchnorm-images", images]))
                scores = [heldout_scores(path, test_dir, precision="fp32")["none"]
                          for path in sorted(run.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))]
                with open(run / "metrics.csv") as file:
                    seconds = [float(row["seconds"]) for row in csv.DictReader(file)]
                print(f"{args.data} seed {seed} --batchnorm-images {images}: held-out Dice by epoch "
                      + " ".join(f"{score:.3f}" for score in scores)
                      + f"; {sum(seconds) / len(seconds):.1f} s per epoch", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
