"""argparse types for the bench scripts' numbers: a count of 0 or a scale of 2 is one line from argparse at once,
not a traceback (or the out-of-memory killer) minutes into a run."""

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path

from unet.unet_model import MAX_BASE_CHANNELS, MIN_SIDE, whole_number
from utils.errors import UserError


def at_least(minimum: int) -> Callable[[str], int]:
    """A whole number of at least `minimum` (counts, steps, repeats, sides)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def base_channels(text: str) -> int:
    """train.py's --base-channels, by the rule the UNet is built with."""
    try:
        return whole_number("--base-channels", int(text), MAX_BASE_CHANNELS)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to {MAX_BASE_CHANNELS}, got {text!r}") from None


def positive(text: str) -> float:
    """A number above 0 (GiB, seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def percent(text: str) -> float:
    """A share of the data in percent, from 0 to below 100 (a validation split)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"must be a percent from 0 to below 100, got {text}")
    return value


def scale_factor(text: str) -> float:
    """A downscaling factor in (0, 1], as the benchmarks measure at or below the files' size."""
    value = positive(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be at most 1 (a downscaling factor), got {text}")
    return value


def height_x_width(text: str) -> tuple[int, int]:
    """'HxW', each side at least MIN_SIDE."""
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW, e.g. 640x959")
    side = at_least(MIN_SIDE)
    return side(parts[0]), side(parts[1])


WORK_DIR_MARK = ".bench_work_dir"  # written into each scratch folder a bench script makes


def fresh_work_dir(folder: Path) -> Path:
    """--work-dir emptied for a new run, if it is one a bench script made (or is empty or missing): a folder of
    the user's given by mistake (--work-dir .) is refused, never deleted."""
    if folder.exists() and not (folder / WORK_DIR_MARK).exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"--work-dir {folder} holds files no bench script wrote, and would be deleted: give a new or "
                        "empty folder")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / WORK_DIR_MARK).touch()
    return folder
