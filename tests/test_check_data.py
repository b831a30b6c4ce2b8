"""The data check: cached parallel inspection of files, mask values, the report and its CLI."""

import json
import os

import numpy as np
import pytest
from conftest import write_image

import utils.check_data as check_data
from utils.check_data import CACHE_NAME, scan_mask_values
from utils.errors import UserError

RED, GREEN, BLACK = [255, 0, 0], [0, 255, 0], [0, 0, 0]


def colour_mask(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# --- scan_mask_values and its cache -----------------------------------------------------------------


@pytest.fixture
def mask_folder(tmp_path):
    folder = tmp_path / "masks"
    write_image(folder / "a.png", np.array([[0, 255], [255, 0]], dtype=np.uint8))
    write_image(folder / "b.png", np.array([[0, 128], [0, 0]], dtype=np.uint8))
    write_image(folder / "c.png", np.array([[0, 0], [0, 0]], dtype=np.uint8))
    return folder


def mask_paths(folder):
    return sorted(folder.glob("*.png"))


def record_scans(monkeypatch) -> list[str]:
    """Let _scan_one run, but record which files it was called for."""
    calls: list[str] = []
    original = check_data._inspect_one

    def recording(kind, path):
        calls.append(os.path.basename(path))
        return original(kind, path)

    monkeypatch.setattr(check_data, "_inspect_one", recording)
    return calls


def forbid_scans(monkeypatch) -> None:
    def refuse(kind, path):
        raise AssertionError(f"{path} was rescanned although the cache is fresh")

    monkeypatch.setattr(check_data, "_inspect_one", refuse)


def test_scan_returns_sorted_union_of_all_masks(mask_folder, monkeypatch):
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 128, 255]
    assert sorted(calls) == ["a.png", "b.png", "c.png"]


def test_scan_writes_cache_beside_the_masks(mask_folder):
    scan_mask_values(mask_paths(mask_folder), workers=1)
    cache = json.loads((mask_folder / CACHE_NAME).read_text())
    assert cache["version"] == 2
    assert {name: entry["record"]["values"] for name, entry in cache["files"].items()} == {
        "mask:a.png": [0, 255], "mask:b.png": [0, 128], "mask:c.png": [0]}
    stat = (mask_folder / "a.png").stat()
    assert cache["files"]["mask:a.png"]["key"] == [stat.st_size, stat.st_mtime_ns]
    assert sorted(p.name for p in mask_folder.iterdir()) == [CACHE_NAME, "a.png", "b.png", "c.png"]


def test_second_scan_reads_only_the_cache(mask_folder, monkeypatch):
    first = scan_mask_values(mask_paths(mask_folder), workers=1)
    forbid_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == first == [0, 128, 255]


def test_rewritten_mask_is_the_only_one_rescanned(mask_folder, monkeypatch):
    scan_mask_values(mask_paths(mask_folder), workers=1)
    path = mask_folder / "b.png"
    old_mtime = path.stat().st_mtime_ns
    write_image(path, np.array([[0, 64], [64, 0]], dtype=np.uint8))
    os.utime(path, ns=(old_mtime + 5_000_000_000, old_mtime + 5_000_000_000))
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 64, 255]
    assert calls == ["b.png"]
    forbid_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 64, 255]


def test_changed_mtime_alone_triggers_a_rescan_of_that_file(mask_folder, monkeypatch):
    scan_mask_values(mask_paths(mask_folder), workers=1)
    path = mask_folder / "c.png"
    mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(mtime - 7_000_000_000, mtime - 7_000_000_000))
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 128, 255]
    assert calls == ["c.png"]


def test_new_mask_is_scanned_and_old_ones_come_from_cache(mask_folder, monkeypatch):
    scan_mask_values(mask_paths(mask_folder), workers=1)
    write_image(mask_folder / "d.png", np.array([[0, 3]], dtype=np.uint8))
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 3, 128, 255]
    assert calls == ["d.png"]


def test_corrupt_cache_is_ignored_and_rewritten(mask_folder, monkeypatch):
    (mask_folder / CACHE_NAME).write_text("{not json")
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 128, 255]
    assert sorted(calls) == ["a.png", "b.png", "c.png"]
    assert json.loads((mask_folder / CACHE_NAME).read_text())["version"] == 2


def test_scan_of_colour_masks_returns_sorted_colours(tmp_path):
    write_image(tmp_path / "a.png", colour_mask([[RED, BLACK]]))
    write_image(tmp_path / "b.png", colour_mask([[GREEN, BLACK]]))
    assert scan_mask_values(mask_paths(tmp_path), workers=1) == [BLACK, GREEN, RED]


def test_scan_of_nothing_is_empty():
    assert scan_mask_values([]) == []


def test_mixing_scalar_and_colour_masks_raises_user_error_naming_files(tmp_path):
    write_image(tmp_path / "gray.png", np.array([[0, 255]], dtype=np.uint8))
    write_image(tmp_path / "colour.png", colour_mask([[RED, GREEN]]))
    with pytest.raises(UserError) as error:
        scan_mask_values(mask_paths(tmp_path), workers=1)
    assert "gray.png" in str(error.value) and "colour.png" in str(error.value)


