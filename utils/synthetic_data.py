"""Offline stand-in for the Kaggle Carvana set: same file names, RGB JPEG images and 0/1 GIF masks.

The real data needs a Kaggle account and network access; these look-alike pairs let the real pipeline
(JPEG decode, GIF masks, `_mask` suffix detection, scaling) and training run anywhere, deterministically.
"""

import argparse
import hashlib
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

if not __package__:  # run as a file (python utils/synthetic_data.py), where its imports of the package fail
    sys.stderr.write("error: run it as a module, from the repository's folder: python -m utils.synthetic_data "
                     "(see -h)\n")
    raise SystemExit(2)  # as every other one-line error

from .atomic_files import make_folder
from .errors import UserError, check_flag, counted, run_cli

VIEWS = 16  # Carvana photographs every car from 16 angles, 22.5 degrees apart
MASK_PALETTE = (0, 0, 0, 255, 255, 255)  # index 0 black background, 1 white car, as in the real GIFs
CAR_COLOURS = (
    (232, 232, 228), (28, 30, 34), (160, 163, 168), (150, 22, 28),
    (28, 58, 130), (96, 99, 105), (32, 82, 52), (196, 168, 120),
)


def _car_id(seed: int, car: int) -> str:
    # Stable across runs and processes (unlike hash()), and shaped like Carvana's "0cdf5b5d0ce1".
    return hashlib.sha1(f"synthetic-carvana:{seed}:{car}".encode()).hexdigest()[:12]


def _trapezoid(cx: float, bottom: float, top: float, half_bottom: float, half_top: float,
               chamfer: float) -> list[tuple]:
    return [(cx - half_bottom, bottom), (cx - half_top, top + chamfer), (cx - half_top + chamfer, top),
            (cx + half_top - chamfer, top), (cx + half_top, top + chamfer), (cx + half_bottom, bottom)]


def _background(width: int, height: int, horizon: float, wall: float, shadow_box: tuple) -> Image.Image:
    ys = np.arange(height, dtype=np.float32)
    floor_depth = (ys - horizon) / max(height - horizon, 1.0)
    column = np.where(ys < horizon, wall - 22 * (1 - ys / horizon), wall - 14 - 28 * floor_depth)
    xs = np.linspace(-1, 1, width, dtype=np.float32)
    row = 1 - 0.07 * xs * xs  # studio lights: the wall falls off slightly towards the sides
    image = Image.fromarray(np.outer(column, row).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    line = max(1, height // 400)
    ImageDraw.Draw(image).line([(0, horizon), (width, horizon)], fill=(150, 150, 150), width=line)
    # Soft shadow: drawn and blurred at 1/8 resolution (cheap), then scaled up as a darkening alpha.
    factor = 8
    small = Image.new("L", (max(1, width // factor), max(1, height // factor)), 0)
    ImageDraw.Draw(small).ellipse([v / factor for v in shadow_box], fill=190)
    radius = max(0.5, (shadow_box[3] - shadow_box[1]) / factor / 3)
    alpha = small.filter(ImageFilter.GaussianBlur(radius)).resize((width, height), Image.Resampling.BILINEAR)
    return Image.composite(Image.new("RGB", (width, height), (45, 45, 48)), image, alpha)


def _render(width: int, height: int, seed: int, car: int, view: int,
            paint: tuple[int, int, int] | None = None) -> tuple[Image.Image, Image.Image]:
    """One view of one car: the same shapes are drawn into the photo and the mask so they line up exactly.
    paint: the car in that colour instead of its own, all else the same (bench/object_colours.py)."""
    rng = np.random.default_rng([seed, car])  # per car: the same car in every view, whichever worker draws it
    jitter = np.random.default_rng([seed, car, view])
    unit = min(width / 1918, height / 1280) * 1918
    length = unit * rng.uniform(0.64, 0.72)
    depth = length * rng.uniform(0.42, 0.47)
    wheel = length * rng.uniform(0.075, 0.085)
    body_h, cabin_h = length * rng.uniform(0.13, 0.155), length * rng.uniform(0.10, 0.12)
    colour = np.clip(np.array(CAR_COLOURS[rng.integers(len(CAR_COLOURS))]) + rng.integers(-15, 16, 3), 0, 255)
    colour = colour if paint is None else np.array(paint)  # drawn all the same, so the draws after it stay
    wall, horizon = rng.uniform(208, 228), height * rng.uniform(0.54, 0.6)

    angle = math.radians((view - 1) * 360 / VIEWS)  # view 01 = front, 05 = side, 09 = back
    side, end = abs(math.sin(angle)), abs(math.cos(angle))
    tall = 1 + 0.45 * end  # front/back views: the near end and the roof make the car look taller
    body_h, cabin_h = body_h * tall, cabin_h * tall
    half = (length * side + 1.3 * depth * end) / 2
    cx = width * (0.5 + jitter.uniform(-0.03, 0.03))
    ground = height * (0.8 + jitter.uniform(-0.015, 0.015))
    body_bot, body_top = ground - 0.45 * wheel, ground - wheel - body_h
    cabin_top = body_top - cabin_h
    shadow = (cx - 1.1 * half, ground - 0.5 * wheel, cx + 1.1 * half, ground + 0.4 * wheel + 0.05 * depth)
    background = _background(width, height, horizon, wall, shadow)
    image = background.copy()

    mask = Image.new("P", (width, height), 0)
    mask.putpalette(list(MASK_PALETTE))
    layer = Image.new("L", (width, height), 0)  # where the body paint goes
    corner = min(0.35 * (body_bot - body_top), 0.3 * half)
    shift = -0.08 * half * math.sin(angle)  # the cabin sits towards the rear in side views
    cabin_bottom = half * (0.62 * side + 0.88 * (1 - side))
    cabin_x, chamfer = cx + shift, min(0.25 * cabin_h, 0.2 * cabin_bottom)
    cabin = _trapezoid(cabin_x, body_top + corner, cabin_top, cabin_bottom, cabin_bottom * 0.72, chamfer)
    for draw, fill in ((ImageDraw.Draw(layer), 255), (ImageDraw.Draw(mask), 1)):
        draw.rounded_rectangle([cx - half, body_top, cx + half, body_bot], radius=corner, fill=fill)
        draw.polygon(cabin, fill=fill)
    shade = np.clip((np.arange(height) - cabin_top) / max(body_bot - cabin_top, 1.0), 0, 1)
    paint = np.clip(colour[None, :] * (1.15 - 0.55 * shade[:, None]), 0, 255).astype(np.uint8)
    gradient = Image.fromarray(paint[:, None, :]).resize((width, height), Image.Resampling.NEAREST)
    image.paste(gradient, (0, 0), layer)

    draw, trim = ImageDraw.Draw(image), tuple(int(v) for v in colour * 0.55)
    # Windows: the part of the cabin above the body, shrunk uniformly towards a point inside it (convex), so
    # the glass can never leave the masked cabin.
    above = cabin_bottom * (0.72 + 0.28 * cabin_h / (cabin_h + corner))  # cabin half width at body_top
    inset = 0.14 * cabin_h
    glass_top, glass_bottom = cabin_top + inset, body_top - 0.2 * inset
    squeeze = (glass_bottom - glass_top) / cabin_h
    centre = cabin_top + inset / (1 - squeeze)
    upper = _trapezoid(cabin_x, body_top, cabin_top, above, cabin_bottom * 0.72, chamfer)
    draw.polygon([(cabin_x + squeeze * (x - cabin_x), centre + squeeze * (y - centre)) for x, y in upper],
                 fill=(38, 46, 60))
    if side >= 0.5:  # side views: B pillar between the windows, door line
        draw.rectangle([cabin_x - 0.03 * half, glass_top, cabin_x + 0.03 * half, glass_bottom], fill=trim)
        waist, thin = body_top + 0.45 * (body_bot - body_top), max(1, height // 500)
        draw.line([(cx - 0.9 * half, waist), (cx + 0.9 * half, waist)], fill=trim, width=thin)
    if end >= 0.3:  # the visible end face: lamps and bumper (front or back)
        facing = 1 if math.cos(angle) > 0 else -1
        face_w = 1.3 * depth * end
        face_x = cx + math.copysign(1, math.sin(angle)) * facing * (half - face_w / 2)
        lamp = (236, 236, 214) if facing > 0 else (196, 30, 30)
        body_span = body_bot - body_top
        lamp_y, lamp_h, lamp_w = body_top + 0.45 * body_span, 0.07 * body_span, 0.06 * face_w
        for sign in (-1, 1):
            lx = face_x + sign * 0.3 * face_w
            draw.ellipse([lx - lamp_w, lamp_y - lamp_h, lx + lamp_w, lamp_y + lamp_h], fill=lamp)
        bumper_x, bumper_y = face_x - 0.3 * face_w, body_bot - 0.2 * body_span
        draw.rectangle([bumper_x, bumper_y, bumper_x + 0.6 * face_w, body_bot - 0.06 * body_span], fill=trim)

    # Two visible wheels: front and rear on the near side, or left and right seen almost edge-on.
    wheel_w = wheel * max(side, 0.38)
    offset = 0.66 * half if side >= 0.5 else half - 1.1 * wheel_w
    for sign in (-1, 1):
        wx, wy = cx + sign * offset, ground - wheel
        if side >= 0.5:  # dark wheel arch, inside the body
            draw.pieslice([wx - 1.15 * wheel_w, wy - 1.15 * wheel, wx + 1.15 * wheel_w, wy + 1.15 * wheel],
                          180, 360, fill=(20, 20, 22))
        for target, fill in ((draw, (24, 24, 27)), (ImageDraw.Draw(mask), 1)):
            target.ellipse([wx - wheel_w, wy - wheel, wx + wheel_w, wy + wheel], fill=fill)
        for scale, fill in ((0.6, (150, 152, 158)), (0.2, (85, 86, 92))):
            rx, ry = scale * wheel_w, scale * wheel
            draw.ellipse([wx - rx, wy - ry, wx + rx, wy + ry], fill=fill)

    # Belt and braces: whatever the rasteriser does at tiny sizes, car pixels show only where the mask says.
    image = Image.composite(image, background, mask.convert("L"))
    noise = jitter.integers(-5, 6, (height, width, 1), dtype=np.int16)  # sensor noise, so JPEG has texture
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), mask


def _write_pair(job: tuple) -> None:
    imgs_dir, masks_dir, width, height, seed, index = job
    car, view = divmod(index, VIEWS)
    name = f"{_car_id(seed, car)}_{view + 1:02d}"
    image, mask = _render(width, height, seed, car, view + 1)
    image.save(imgs_dir / f"{name}.jpg", quality=90)
    mask.save(masks_dir / f"{name}_mask.gif")


def make_synthetic_carvana(out_dir: str | Path, count: int = 48, width: int = 1918, height: int = 1280,
                           seed: int = 0, workers: int | None = None) -> tuple[Path, Path]:
    """Write `count` Carvana-style pairs (16 views per car) under out_dir/imgs and out_dir/masks.

    Same seed, same files, whatever the worker count: each image draws from its own (seed, car, view)
    generator. Files of the same name are overwritten; anything else in the folders is left alone.
    Returns (imgs_dir, masks_dir).
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if width < 16 or height < 16:
        raise ValueError(f"width and height must be at least 16, got {width}x{height}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    imgs_dir, masks_dir = Path(out_dir) / "imgs", Path(out_dir) / "masks"
    imgs_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(imgs_dir, masks_dir, width, height, seed, index) for index in range(count)]
    if workers == 1 or count == 1:
        for job in jobs:
            _write_pair(job)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, count)) as pool:
            list(pool.map(_write_pair, jobs, chunksize=max(1, count // (4 * workers))))
    return imgs_dir, masks_dir


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.synthetic_data", allow_abbrev=False,  # download_data.sh
                                     description="Write a synthetic dataset in the Kaggle Carvana format.")
    parser.add_argument("--out", default="data", metavar="DIR", help="output folder for imgs/ and masks/")
    parser.add_argument("--count", type=int, default=48, metavar="N", help="number of image/mask pairs")
    parser.add_argument("--width", type=int, default=1918, help="image width in pixels (Carvana: 1918)")
    parser.add_argument("--height", type=int, default=1280, help="image height in pixels (Carvana: 1280)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument("--workers", type=int, default=None, help="processes to use (default: up to 4 CPUs)")
    return parser


def main(args: argparse.Namespace) -> int:
    """CLI for `make demo` and for trying the pipeline without the Kaggle download."""
    for flag, value, low in (("--count", args.count, 1), ("--width", args.width, 16), ("--height", args.height, 16),
                             ("--seed", args.seed, 0), ("--workers", args.workers, 1)):
        check_flag(flag, value, value is None or value >= low, f"at least {low}")
    check_flag("--out", repr(args.out), args.out.strip() != "", "a folder (data, /tmp/synthetic)")
    imgs, masks = Path(args.out) / "imgs", Path(args.out) / "masks"
    held = [folder for folder in (imgs, masks)
            if folder.is_dir() and any(not path.name.startswith(".") for path in folder.iterdir())]  # as is_hidden
    # (data_loading's, not imported: it would bring torch into a script that only writes files)
    if held:  # writing beside them would mix two data sets (the same seed also rewrites some of the names)
        raise UserError(f"{held[0]} already holds files: give --out another folder (download_data.sh --synthetic "
                        f"takes it too), or empty {imgs} and {masks} first")
    for folder in (imgs, masks):
        make_folder(folder, "--out")
    make_synthetic_carvana(args.out, args.count, args.width, args.height, args.seed, args.workers)
    print(f"wrote {counted(args.count, 'image')} to {imgs} and {counted(args.count, 'mask')} to {masks} "
          f"({args.width}x{args.height})")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
