"""What predict.py pays per mask around the model: PNG writing (per zlib strategy) and class counting (per method).

    python bench/mask_output_cost.py                  # the CPU
    python bench/mask_output_cost.py --device cuda    # class counting on the GPU too (PNG writing is CPU work)

Masks are synthetic Carvana masks at 1918x1280 (utils/synthetic_data.py): binary 0/255, a 5-label version
and a colour-coded version of the same shapes. Times are medians of --repeat calls, in milliseconds per mask
(class counting: per batch of --batch masks). The PNG rows say which zlib strategy predict.py's writer uses
(utils/mask_writer.py); the counting rows which method class_counts (utils/mask_writer.py) picks per device.
"""

import argparse
import io
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import at_least  # noqa: E402
from utils.device import choose_device  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.mask_writer import class_counts  # noqa: E402
from utils.synthetic_data import _render  # noqa: E402

PNG_SETTINGS = {"Pillow default (level 6)": {}, "zlib Z_RLE (ours)": {"compress_type": zlib.Z_RLE},
                "level 1": {"compress_level": 1}, "level 0 (filters only)": {"compress_level": 0}}


def median_ms(work: Callable[[], object], repeat: int, sync: Callable[[], None] = lambda: None) -> float:
    work()
    sync()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def carvana_masks(width: int, height: int) -> dict[str, np.ndarray]:
    masks = {}
    for car, view in ((0, 3), (1, 8), (2, 12)):
        _, mask = _render(width, height, 0, car, view)
        masks[f"binary 0/255, car {car}"] = (np.asarray(mask) > 0).astype(np.uint8) * 255
    car = masks["binary 0/255, car 0"] > 0
    labels = (car * (1 + np.arange(height)[:, None] * 4 // height)).astype(np.uint8)  # 4 bands on the car
    masks["5 labels"] = np.broadcast_to(labels, (height, width)).copy()
    colours = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0], [0, 0, 128], [128, 128, 0]], np.uint8)
    masks["5 colours (RGB)"] = colours[masks["5 labels"]]
    return masks


def write_png(image: Image.Image, buffer: io.BytesIO, options: dict) -> None:
    buffer.seek(0)
    buffer.truncate()
    image.save(buffer, "PNG", **options)


def png_rows(masks: dict[str, np.ndarray], repeat: int) -> None:
    print("| mask | " + " | ".join(PNG_SETTINGS) + " |")
    print("|---|" + "---|" * len(PNG_SETTINGS))
    for name, mask in masks.items():
        image = Image.fromarray(mask)
        cells = []
        for options in PNG_SETTINGS.values():
            buffer = io.BytesIO()

            milliseconds = median_ms(partial(write_png, image, buffer, options), repeat)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))), mask)  # lossless
            cells.append(f"{milliseconds:.2f} ms, {len(buffer.getvalue()) / 1024:.1f} KiB")
        print(f"| {name} | " + " | ".join(cells) + " |")


def thread_rows(mask: np.ndarray, count: int) -> None:
    """Masks/s written by 1 and 2 threads: PNG compression releases the GIL, so writer threads add up."""
    image = Image.fromarray(mask)
    for threads in (1, 2):
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: write_png(image, io.BytesIO(), PNG_SETTINGS["zlib Z_RLE (ours)"]), range(4)))
            started = time.perf_counter()
            list(pool.map(lambda _: write_png(image, io.BytesIO(), PNG_SETTINGS["zlib Z_RLE (ours)"]), range(count)))
            print(f"| {threads} | {count / (time.perf_counter() - started):.0f} masks/s |")


def counting_rows(mask: np.ndarray, batch: int, device: torch.device, repeat: int) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for n_classes in (2, 5, 40):
        classes = torch.from_numpy((mask > 0).astype(np.int64) * (n_classes - 1)).expand(batch, -1, -1)
        classes = classes.contiguous().to(device)
        expected = class_counts(classes.cpu(), n_classes, "scatter")
        cells = []
        for method in ("sums", "scatter"):
            assert torch.equal(class_counts(classes, n_classes, method).cpu(), expected)
            cells.append(f"{median_ms(partial(class_counts, classes, n_classes, method), repeat, sync):.2f} ms")
        chosen = "sums" if device.type != "cpu" and n_classes <= 32 else "scatter"
        print(f"| {device.type} | {n_classes} | {batch} | " + " | ".join(cells) + f" | {chosen} |")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PNG writing and class counting per mask, by method.")
    parser.add_argument("--width", type=at_least(1), default=1918, help="mask width (default: %(default)s)")
    parser.add_argument("--height", type=at_least(1), default=1280, help="mask height (default: %(default)s)")
    parser.add_argument("--batch", type=at_least(1), default=16, help="masks per counting call (default: %(default)s)")
    parser.add_argument("--repeat", type=at_least(1), default=7, help="timed calls per cell (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="device for the class counting (default: %(default)s)")
    return parser


def main(args: argparse.Namespace) -> None:
    other = choose_device(args.device) if args.device != "cpu" else None  # a device it cannot use: said first
    masks = carvana_masks(args.width, args.height)
    print(f"PNG writing, one thread, {args.width}x{args.height} (median of {args.repeat}):")
    png_rows(masks, args.repeat)
    print("\n| writer threads (Z_RLE, binary mask) | speed |\n|---|---|")
    thread_rows(masks["binary 0/255, car 0"], 40)
    print(f"\nclass counts (median of {args.repeat}), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}:")
    print("| device | classes | masks per call | sums | scatter | predict.py uses |")
    print("|---|---|---|---|---|---|")
    devices = [torch.device("cpu")] + ([other] if other is not None else [])
    for device in devices:
        counting_rows(masks["binary 0/255, car 0"], 1 if device.type == "cpu" else args.batch, device, args.repeat)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
