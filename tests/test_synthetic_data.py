"""The synthetic Carvana set has Carvana's names and encodings and goes through the real data pipeline."""

import re
from pathlib import Path

import numpy as np
from conftest import run_script
from PIL import Image

from utils.check_data import scan_mask_values
from utils.data_loading import SegmentationDataset, list_pairs
from utils.synthetic_data import make_synthetic_carvana

REPO = Path(__file__).resolve().parents[1]


def test_files_follow_carvana_naming_and_encoding(tmp_path: Path) -> None:
    imgs, masks = make_synthetic_carvana(tmp_path, count=18, width=120, height=80, workers=1)
    images = sorted(p.name for p in imgs.iterdir())
    assert len(images) == 18 and all(re.fullmatch(r"[0-9a-f]{12}_(0[1-9]|1[0-6])\.jpg", n) for n in images)
    assert len({name[:12] for name in images}) == 2  # 16 views of the first car, 2 of the second
    for name in images:
        image = Image.open(imgs / name)
        mask = Image.open(masks / name.replace(".jpg", "_mask.gif"))
        assert image.mode == "RGB" and image.size == mask.size == (120, 80)
        values = np.asarray(mask)
        assert mask.mode == "P" and set(np.unique(values)) == {0, 1}
        assert 0.05 < values.mean() < 0.5


def test_same_seed_same_files(tmp_path: Path) -> None:
    make_synthetic_carvana(tmp_path / "a", count=2, width=64, height=48, seed=3, workers=1)
    make_synthetic_carvana(tmp_path / "b", count=2, width=64, height=48, seed=3, workers=2)
    for folder in ("imgs", "masks"):
        files = sorted((tmp_path / "a" / folder).iterdir())
        assert len(files) == 2
        for path in files:
            assert path.read_bytes() == (tmp_path / "b" / folder / path.name).read_bytes()


def test_pipeline_detects_mask_suffix_and_values(tmp_path: Path) -> None:
    make_synthetic_carvana(tmp_path, count=3, width=96, height=64, workers=1)
    pairs = list_pairs(tmp_path / "imgs", tmp_path / "masks")
    assert len(pairs) == 3 and all(p.mask.name == f"{p.name}_mask.gif" for p in pairs)
    values = scan_mask_values([p.mask for p in pairs])
    assert values == [0, 1]
    item = SegmentationDataset(pairs, values, scale=0.5)[0]
    assert tuple(item["image"].shape) == (3, 32, 48) and set(item["mask"].unique().tolist()) == {0, 1}


def test_cli_rejects_bad_count_with_one_line(tmp_path: Path) -> None:
    result = run_script("-m utils.synthetic_data", "--out", tmp_path / "x", "--count", "0", cwd=REPO)
    assert (result.returncode, result.stderr.strip()) == (2, "error: --count must be at least 1, got 0")
    assert not (tmp_path / "x").exists()


def test_a_folder_that_already_holds_data_is_not_written_into(tmp_path: Path) -> None:
    """Found by a review: a second --synthetic run beside `make demo`'s data mixed two data sets of two sizes."""
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "data" / "imgs" / "mine.jpg").write_bytes(b"")
    result = run_script("-m utils.synthetic_data", "--out", tmp_path / "data", "--count", "1", "--width", "32",
                        "--height", "32", cwd=REPO)
    assert result.returncode == 2
    assert ("data/imgs already holds files: give --out another folder (download_data.sh --synthetic takes it too), or "
            "empty") in result.stderr
    assert [path.name for path in (tmp_path / "data" / "imgs").iterdir()] == ["mine.jpg"]


def test_a_repainted_car_changes_only_the_car_s_paint() -> None:
    """bench/object_colours.py's premise: the same car, view and scene, in another colour."""
    from utils.synthetic_data import _render

    own_image, own_mask = _render(240, 160, 1, 1, 5)
    image, mask = _render(240, 160, 1, 1, 5, paint=(28, 58, 130))
    assert np.array_equal(np.asarray(mask), np.asarray(own_mask))
    car = np.asarray(mask) > 0
    own, repainted = np.asarray(own_image).astype(int), np.asarray(image).astype(int)
    assert np.array_equal(own[~car], repainted[~car])  # the scene around it, noise included
    blue = repainted[car][:, 2] > repainted[car][:, 0] + 40
    red = own[car][:, 0] > own[car][:, 2] + 40  # car 1 of seed 1 is the set's red car
    assert blue.mean() > 0.5 and red.mean() > 0.5
