"""Mask values <-> class indices: distinct values, the cached folder scan, encode/decode, class checks."""

import json
import os

import numpy as np
import pytest
from conftest import write_image

import utils.mask_encoding as mask_encoding
from utils.data_loading import read_mask
from utils.errors import UserError
from utils.mask_encoding import (
    CACHE_NAME,
    check_classes,
    decode_mask,
    distinct_values,
    encode_mask,
    scan_mask_values,
)

RED, GREEN, BLACK = [255, 0, 0], [0, 255, 0], [0, 0, 0]


def colour_mask(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# --- distinct_values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (np.array([[0, 255], [255, 0]], dtype=np.uint8), [0, 255]),
        (np.array([[65535, 0], [300, 300]], dtype=np.uint16), [0, 300, 65535]),
        (np.array([[True, False], [True, True]]), [0, 1]),
        (np.array([[7, -1], [3, 7]], dtype=np.int32), [-1, 3, 7]),
        (np.array([[2.0, 0.0]], dtype=np.float32), [0, 2]),
    ],
    ids=["uint8", "uint16", "bool", "int32", "integral-float"],
)
def test_distinct_values_of_scalar_masks(mask, expected):
    values = distinct_values(mask)
    assert values == expected
    assert all(type(v) is int for v in values)


def test_distinct_values_of_rgb_mask_are_sorted_colour_lists():
    mask = colour_mask([[RED, GREEN], [BLACK, RED]])
    assert distinct_values(mask) == [BLACK, GREEN, RED]  # sorted by (r, g, b) packed into one int


def test_distinct_values_refuses_fractional_labels():
    with pytest.raises(UserError, match="non-integer"):
        distinct_values(np.array([[0.5, 1.0]], dtype=np.float32))


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
    original = mask_encoding._scan_one

    def recording(path):
        calls.append(os.path.basename(path))
        return original(path)

    monkeypatch.setattr(mask_encoding, "_scan_one", recording)
    return calls


def forbid_scans(monkeypatch) -> None:
    def refuse(path):
        raise AssertionError(f"{path} was rescanned although the cache is fresh")

    monkeypatch.setattr(mask_encoding, "_scan_one", refuse)


def test_scan_returns_sorted_union_of_all_masks(mask_folder, monkeypatch):
    calls = record_scans(monkeypatch)
    assert scan_mask_values(mask_paths(mask_folder), workers=1) == [0, 128, 255]
    assert sorted(calls) == ["a.png", "b.png", "c.png"]


def test_scan_writes_cache_beside_the_masks(mask_folder):
    scan_mask_values(mask_paths(mask_folder), workers=1)
    cache = json.loads((mask_folder / CACHE_NAME).read_text())
    assert cache["version"] == 1
    assert {name: entry["values"] for name, entry in cache["files"].items()} == {
        "a.png": [0, 255], "b.png": [0, 128], "c.png": [0]}
    stat = (mask_folder / "a.png").stat()
    assert cache["files"]["a.png"]["key"] == [stat.st_size, stat.st_mtime_ns]
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
    assert json.loads((mask_folder / CACHE_NAME).read_text())["version"] == 1


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


# --- encode_mask ------------------------------------------------------------------------------------


def test_binary_0_255_mask_encodes_to_0_1():
    indices = encode_mask(np.array([[0, 255], [255, 0]], dtype=np.uint8), [0, 255], "m.png")
    assert indices.dtype == np.int64
    assert indices.tolist() == [[0, 1], [1, 0]]


def test_sparse_values_encode_to_consecutive_indices():
    indices = encode_mask(np.array([[20, 0, 10], [10, 20, 0]], dtype=np.uint8), [0, 10, 20], "m.png")
    assert indices.tolist() == [[2, 0, 1], [1, 2, 0]]


def test_unsorted_mask_values_encode_by_position():
    indices = encode_mask(np.array([[0, 255, 128]], dtype=np.uint8), [255, 0, 128], "m.png")
    assert indices.tolist() == [[1, 0, 2]]


def test_rgb_colours_encode_to_their_index():
    mask = colour_mask([[RED, GREEN], [BLACK, RED]])
    indices = encode_mask(mask, [BLACK, GREEN, RED], "m.png")
    assert indices.shape == (2, 2)
    assert indices.tolist() == [[2, 1], [0, 2]]


@pytest.mark.parametrize("bad", [5, 300, 254], ids=["between", "above", "below-last"])
def test_unknown_value_raises_user_error_naming_file_and_value(bad):
    mask = np.array([[0, 255], [bad, 10]], dtype=np.uint16)
    with pytest.raises(UserError, match=rf"cat_7\.png has the value {bad}\b"):
        encode_mask(mask, [0, 10, 255], "masks/cat_7.png")


def test_unknown_colour_raises_user_error_naming_file():
    mask = colour_mask([[RED, [1, 2, 3]]])
    with pytest.raises(UserError, match=r"m\.png has the value \[1, 2, 3\]"):
        encode_mask(mask, [BLACK, RED], "m.png")


def test_encoding_kind_mismatch_raises_user_error():
    with pytest.raises(UserError, match="RGB colour"):
        encode_mask(colour_mask([[RED]]), [0, 1], "m.png")
    with pytest.raises(UserError, match="single-channel"):
        encode_mask(np.array([[0]], dtype=np.uint8), [BLACK, RED], "m.png")
    with pytest.raises(UserError, match="m.png"):
        encode_mask(np.array([[0]], dtype=np.uint8), [], "m.png")


# --- decode_mask ------------------------------------------------------------------------------------

INDICES = np.array([[0, 1, 2], [2, 1, 0]])


def test_binary_decode_writes_0_255_gray_image():
    image = decode_mask(np.array([[0, 1], [1, 0]]), [0, 1])
    assert image.mode == "L"
    assert np.asarray(image).tolist() == [[0, 255], [255, 0]]


def test_scalar_decode_writes_the_mask_values(tmp_path):
    image = decode_mask(INDICES, [0, 10, 20])
    assert image.mode == "L"
    assert np.asarray(image).tolist() == [[0, 10, 20], [20, 10, 0]]
    image.save(tmp_path / "m.png")
    assert encode_mask(read_mask(tmp_path / "m.png"), [0, 10, 20], "m.png").tolist() == INDICES.tolist()


def test_colour_decode_writes_an_rgb_image(tmp_path):
    image = decode_mask(INDICES, [BLACK, GREEN, RED])
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), colour_mask([[BLACK, GREEN, RED], [RED, GREEN, BLACK]]))
    image.save(tmp_path / "m.png")
    assert encode_mask(read_mask(tmp_path / "m.png"), [BLACK, GREEN, RED], "m").tolist() == INDICES.tolist()


def test_values_above_255_decode_to_16_bit(tmp_path):
    image = decode_mask(INDICES, [0, 300, 1000])
    assert np.asarray(image).dtype == np.uint16
    assert np.asarray(image).tolist() == [[0, 300, 1000], [1000, 300, 0]]
    image.save(tmp_path / "m.png")
    assert encode_mask(read_mask(tmp_path / "m.png"), [0, 300, 1000], "m").tolist() == INDICES.tolist()


# --- check_classes ----------------------------------------------------------------------------------


def test_one_class_accepts_two_mask_values():
    check_classes([0, 255], 1)
    check_classes([0], 1)


def test_one_class_refuses_more_than_two_values():
    with pytest.raises(UserError, match="--classes 3"):
        check_classes([0, 10, 20], 1)


def test_too_few_classes_raise_user_error():
    with pytest.raises(UserError, match="--classes 3"):
        check_classes([0, 10, 20], 2)
    with pytest.raises(UserError, match="--classes 3"):
        check_classes([BLACK, GREEN, RED], 2)


def test_enough_classes_are_accepted():
    check_classes([0, 10, 20], 3)
    check_classes([0, 10, 20], 5)
    check_classes([BLACK, RED], 2)
