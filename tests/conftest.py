"""Shared helpers for the unit tests: tiny image/mask files written on the fly, the reference layout."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # import unet/ and utils/ also when pytest is not started from the repo root
    sys.path.insert(0, str(REPO))

# The inputs here are tiny: on a small CPU, intra-op threads cost far more in synchronisation than they gain.
torch.set_num_threads(1)

# Odd sizes on purpose: they exercise the padding in Up and the int(scale * side) rule.
HEIGHT, WIDTH = 37, 53


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a `slow` test first: `make test` hands whole files to its workers in collection order, and a long
    file handed out last keeps one worker busy after the other has finished (about a minute of the suite)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within a file is kept


def write_image(path: Path, array: np.ndarray, mode: str | None = None,
                palette: list[int] | None = None) -> Path:
    """Write an array as .npy, .pt (tensor) or any PIL format; `mode`/`palette` for PIL images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".pt":
        torch.save(torch.from_numpy(np.ascontiguousarray(array)), path)
    else:
        image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
        if palette is not None:
            image.putpalette(palette)
        image.save(path)
    return path


def disc_mask(height: int = HEIGHT, width: int = WIDTH, value: int = 1) -> np.ndarray:
    """uint8 HxW: `value` inside a disc, 0 outside."""
    yy, xx = np.mgrid[:height, :width]
    inside = (yy - height // 2) ** 2 + (xx - width // 2) ** 2 < (min(height, width) // 3) ** 2
    return (inside * value).astype(np.uint8)


def random_rgb(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# Even sides, for the data check and hostile-input tests.
CHECK_HEIGHT, CHECK_WIDTH = 32, 48


def noisy_rgb(seed: int, height: int = CHECK_HEIGHT, width: int = CHECK_WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_mask(height: int = CHECK_HEIGHT, width: int = CHECK_WIDTH) -> np.ndarray:
    """uint8 HxW: 1 in a box in the upper-left quarter, 0 elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4:height // 2, width // 4:width // 2] = 1
    return mask


@pytest.fixture
def carvana_folder(tmp_path: Path) -> Path:
    """imgs/car<i>_01.png (RGB) with masks/car<i>_01_mask.gif (palette 0/1), two pairs of 53x37."""
    for i in range(2):
        write_image(tmp_path / "imgs" / f"car{i}_01.png", random_rgb(i))
        write_image(tmp_path / "masks" / f"car{i}_01_mask.gif", disc_mask(), mode="P",
                    palette=[0, 0, 0, 255, 255, 255])
    return tmp_path


@pytest.fixture(scope="session")
def reference_layouts() -> dict:
    """{setting: {"constructor": {...}, "state_dict": {key: shape}}} in the classic U-Net's key order."""
    return json.loads((REPO / "tests" / "data" / "reference_state_dict.json").read_text())
