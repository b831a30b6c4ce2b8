"""Prediction throughput on a folder, end to end: read JPEGs, predict at --scale, masks at full size, PNGs written.

    python bench/predict_speed.py --count 6 --reference-count 6                  # the 2-core CPU
    python bench/predict_speed.py --count 320 --reference-count 32 -- --compile on  # a GPU

Runs predict.py's own main on a synthetic Carvana folder (1918x1280 JPEGs), and beside it the reference's way:
one file at a time, PIL bicubic resize, fp32, logits upsampled to full size on the CPU, argmax, PNG written
inline. Weights are random (speed does not depend on them). Prints images/s of both, their ratio, and a
Markdown row for bench/README.md. Ours runs twice, each time in a fresh process as a user's run would be,
timed from the call of predict.main (model loading, worker start and compilation included): the second run
finds the files in the OS cache and the compiler's on-disk cache warm. With --without-unet the U-Net is replaced
by a blur of the image (no convolutions): what is left is predict.py's cost around the model, the ceiling that
decoding, transfers, upsampling, encoding and PNG writing allow.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.arguments import MIN_SIDE, at_least, scale_factor  # noqa: E402
from unet import UNet  # noqa: E402
from utils.device import choose_device  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.synthetic_data import make_synthetic_carvana  # noqa: E402


def images_folder(count: int, width: int, height: int) -> Path:
    folder = Path("data") / f"bench_carvana_{count}_{width}x{height}"
    imgs = folder / "imgs"
    if not (imgs.is_dir() and len(list(imgs.iterdir())) >= count):
        print(f"writing {count} synthetic {width}x{height} pairs to {folder}", flush=True)
        make_synthetic_carvana(folder, count=count, width=width, height=height)
    return imgs


@torch.inference_mode()
def predict_like_reference(model: UNet, files: list[Path], out_dir: Path, scale: float, device: torch.device) -> float:
    """The reference predict.py's loop, re-created from its behaviour; returns images/s."""
    model = model.to(device).eval()
    model(torch.zeros(1, 3, 64, 64, device=device))  # device start-up is not part of the loop
    started = time.perf_counter()
    for path in files:
        full = Image.open(path)
        width, height = int(scale * full.width), int(scale * full.height)
        array = np.asarray(full.resize((width, height), resample=Image.BICUBIC), dtype=np.float32) / 255
        image = torch.from_numpy(array.transpose(2, 0, 1))[None].to(device)
        logits = model(image).cpu()
        logits = F.interpolate(logits, (full.height, full.width), mode="bilinear")
        mask = logits.argmax(dim=1)[0].numpy()
        Image.fromarray((mask * 255).astype(np.uint8)).save(out_dir / f"{path.stem}.png")
    return len(files) / (time.perf_counter() - started)


class BlurInsteadOfUNet(nn.Module):
    """Two smooth logit maps of the image's brightness, at its size: masks of blobs (PNGs of realistic cost) at
    next to no compute. Carries the attributes predict.py reads from the U-Net. Stands in for fuse_batchnorm,
    whose arguments it takes."""

    def __init__(self, unet: UNet, in_place: bool = False):
        super().__init__()
        for name in ("mask_values", "mask_palette", "ignore_value", "n_classes", "n_channels", "scale"):
            setattr(self, name, getattr(unet, name, None))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        smooth = F.avg_pool2d(images.mean(1, keepdim=True), 9, stride=1, padding=4)
        return torch.cat([-smooth, smooth], 1)


def seconds_of_predict(flags: list[str], cudnn_benchmark: bool = False, without_unet: bool = False
                       ) -> tuple[float, str]:
    """Wall time of predict.main in a fresh process, as a user's run is (imports left out, model loading,
    worker start and compilation in), and predict.py's own summary line: what its loop waited for. (A second
    call in one process ran ~5% slower on the CPU: the loader worker forked from the first call's large heap
    makes every page the model writes copy-on-write.)"""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import predict; "
            f"predict.torch.backends.cudnn.benchmark = {cudnn_benchmark}; "
            + ("from bench.predict_speed import BlurInsteadOfUNet; predict.fuse_batchnorm = BlurInsteadOfUNet; "
               if without_unet else "") +
            "started = time.perf_counter(); "
            "predict.main(predict.get_args_parser().parse_args(sys.argv[2:])); "
            "print('seconds', time.perf_counter() - started)")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT), *flags], check=True, stdout=subprocess.PIPE,
                            text=True)
    lines = result.stdout.splitlines()
    summary = [line for line in lines if line.startswith("predicted ")]
    return float([line for line in lines if line.startswith("seconds ")][-1].split()[1]), (summary or ["-"])[-1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Prediction images/s, end to end: ours vs the reference's loop.")
    parser.add_argument("--count", type=at_least(1), default=320,
                        help="images predicted by predict.py (default: %(default)s)")
    parser.add_argument("--files", type=at_least(1), default=320,
                        help="distinct files written; --count above it repeats them (default: %(default)s)")
    parser.add_argument("--reference-count", type=at_least(0), default=32,
                        help="images predicted the reference's way, 0 to skip (default: %(default)s)")
    parser.add_argument("--width", type=at_least(MIN_SIDE), default=1918, help="image width (default: %(default)s)")
    parser.add_argument("--height", type=at_least(MIN_SIDE), default=1280, help="image height (default: %(default)s)")
    parser.add_argument("--scale", type=scale_factor, default=0.5, help="predict.py --scale (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if available)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="turn on cuDNN's algorithm search in predict.py's process (off there by default), "
                             "to see whether predict.py should")
    parser.add_argument("--without-unet", action="store_true",
                        help="predict.py with a blur in place of the U-Net: its cost around the model (the reference "
                             "loop keeps the U-Net; use --reference-count 0)")
    parser.add_argument("flags", nargs="*", help="more predict.py flags after --, e.g. -- --compile on --amp")
    return parser


def main(args: argparse.Namespace) -> None:

    device = choose_device(args.device)
    imgs = images_folder(max(min(args.count, args.files), args.reference_count), args.width, args.height)
    files = sorted(imgs.iterdir())
    torch.manual_seed(0)
    model = UNet(3, 2)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        checkpoint = scratch / "random.pth"
        torch.save({**model.state_dict(), "mask_values": [0, 1]}, checkpoint)  # a reference-style file
        subset = scratch / "in"
        subset.mkdir()
        for number in range(args.count):  # copies, not links: predict.py predicts a file reached twice once
            path = files[number % min(args.files, len(files))]
            shutil.copyfile(path, subset / f"{number:05d}_{path.name}")
        flags = ["-m", str(checkpoint), "-i", str(subset), "-o", str(scratch / "ours"), "--scale", str(args.scale),
                 *(["--device", args.device] if args.device else []), *args.flags]
        reference = 0.0
        if args.reference_count:  # in this process, which predict.main's settings (glibc's malloc) never touch
            (scratch / "reference").mkdir()
            reference = predict_like_reference(model, files[:args.reference_count], scratch / "reference", args.scale,
                                               device)
        ours = []
        for run in range(2):
            shutil.rmtree(scratch / "ours", ignore_errors=True)
            seconds, summary = seconds_of_predict(flags, args.cudnn_benchmark, args.without_unet)
            ours.append(args.count / seconds)
            print(f"ours, run {run + 1}: {summary}", flush=True)
        written = len(list((scratch / "ours").glob("*.png")))
        assert written == args.count, f"predict.py wrote {written} masks for {args.count} images"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    ratio = f"{ours[1] / reference:.2f}x" if reference else "-"
    print(f"ours: {ours[0]:.3f} images/s first run, {ours[1]:.3f} second; reference loop: {reference:.3f}; "
          f"ratio (second run) {ratio}")
    settings = f"{args.count} images, scale {args.scale} {' '.join(args.flags)}"
    settings += " cudnn.benchmark" if args.cudnn_benchmark else ""
    settings += " without the U-Net (a blur)" if args.without_unet else ""
    print(f"| {name} | {settings} | {ours[0]:.3f} | {ours[1]:.3f} "
          f"| {reference:.3f} ({args.reference_count} images) | {ratio} | torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')} |")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
