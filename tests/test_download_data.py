"""download_data.sh's Kaggle path, run for real against a stand-in `kaggle` CLI that serves zips made here in the
layout of the Carvana competition's files (the real download needs an account and ~GBs of network)."""

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import disc_mask, random_rgb, write_image
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# Writes the asked-for file (-f) into the asked-for folder (-p) from $FAKE_KAGGLE_FILES, and logs its arguments.
FAKE_KAGGLE = """#!/usr/bin/env bash
echo "$@" >> "$FAKE_KAGGLE_LOG"
while [ $# -gt 0 ]; do
    case "$1" in -f) file=$2; shift ;; -p) folder=$2; shift ;; esac
    shift
done
[ -f "$FAKE_KAGGLE_FILES/$file" ] && cp "$FAKE_KAGGLE_FILES/$file" "$folder/"
exit 0
"""


@pytest.fixture
def workspace(tmp_path: Path) -> dict:
    """A copy of the script (it works in its own folder), a fake kaggle on PATH, Carvana-style zips to serve."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "download_data.sh", root)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kaggle = bin_dir / "kaggle"
    kaggle.write_text(FAKE_KAGGLE)
    kaggle.chmod(kaggle.stat().st_mode | stat.S_IEXEC)
    files = tmp_path / "served"
    source = tmp_path / "source"
    for i in range(3):
        write_image(source / "train_hq" / f"0cdf5b5d0ce1_0{i + 1}.jpg", random_rgb(i))
        write_image(source / "train_masks" / f"0cdf5b5d0ce1_0{i + 1}_mask.gif", disc_mask(), mode="P",
                    palette=[0, 0, 0, 255, 255, 255])
    files.mkdir()
    for part in ("train_hq", "train_masks"):
        with zipfile.ZipFile(files / f"{part}.zip", "w") as archive:
            for path in sorted((source / part).iterdir()):
                archive.write(path, f"{part}/{path.name}")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
           "KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "secret", "FAKE_KAGGLE_FILES": str(files),
           "FAKE_KAGGLE_LOG": str(tmp_path / "kaggle.log")}
    return {"root": root, "env": env, "log": tmp_path / "kaggle.log", "served": files}


def download(workspace: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(workspace["root"] / "download_data.sh")], env=workspace["env"],
                          capture_output=True, text=True, timeout=120)


def test_carvana_zips_end_up_as_data_imgs_and_masks(workspace: dict) -> None:
    result = download(workspace)
    assert result.returncode == 0, result.stderr
    assert "Carvana: 3 images in data/imgs, 3 masks in data/masks" in result.stdout
    data = workspace["root"] / "data"
    assert sorted(path.name for path in (data / "imgs").iterdir()) == [f"0cdf5b5d0ce1_0{i}.jpg" for i in (1, 2, 3)]
    assert sorted(path.name for path in (data / "masks").iterdir()) == [
        f"0cdf5b5d0ce1_0{i}_mask.gif" for i in (1, 2, 3)]
    assert sorted(path.name for path in data.iterdir()) == ["imgs", "masks"]  # the temporary folder is gone
    calls = workspace["log"].read_text().splitlines()
    assert [call.split(" -f ")[1].split()[0] for call in calls] == ["train_hq.zip", "train_masks.zip"]
    assert all(call.startswith("competitions download -c carvana-image-masking-challenge") for call in calls)


def test_a_data_folder_that_holds_files_is_left_alone(workspace: dict) -> None:
    (workspace["root"] / "data" / "imgs").mkdir(parents=True)
    (workspace["root"] / "data" / "imgs" / ".gitkeep").write_text("")  # hidden files are not data: no complaint
    mine = write_image(workspace["root"] / "data" / "masks" / "mine.png", np.zeros((4, 4), np.uint8))
    result = download(workspace)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: data/masks already holds 1 files: Carvana would be mixed into them; "
                                     "move them elsewhere first (train.py --imgs/--masks read any folder)")
    assert not workspace["log"].exists()  # nothing downloaded
    assert [path.name for path in mine.parent.iterdir()] == ["mine.png"]


def test_a_download_that_writes_no_zip_is_one_line_and_leaves_nothing_behind(workspace: dict) -> None:
    (workspace["served"] / "train_masks.zip").unlink()  # e.g. a CLI version that names its downloads otherwise
    result = download(workspace)
    assert result.returncode == 1
    assert "error: the kaggle CLI wrote no train_masks.zip" in result.stderr
    data = workspace["root"] / "data"
    assert sorted(path.name for path in data.iterdir()) == ["imgs", "masks"]
    assert not any((data / "imgs").iterdir())  # the images already unpacked were not moved in: no half data set


def test_missing_cli_or_credentials_are_one_line(workspace: dict, tmp_path: Path) -> None:
    env = {**workspace["env"], "KAGGLE_USERNAME": "", "KAGGLE_CONFIG_DIR": str(tmp_path / "nowhere")}
    result = subprocess.run(["bash", str(workspace["root"] / "download_data.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: no Kaggle credentials")
    env = {**env, "KAGGLE_USERNAME": "someone", "KAGGLE_KEY": ""}  # half of the pair: the CLI would fail later
    result = subprocess.run(["bash", str(workspace["root"] / "download_data.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: no Kaggle credentials")
    assert not (workspace["root"] / "data").exists() and not workspace["log"].exists()
    env = {**workspace["env"], "PATH": "/usr/bin:/bin"}
    result = subprocess.run(["bash", str(workspace["root"] / "download_data.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: the kaggle CLI is not installed")


@pytest.mark.parametrize(("words", "count"), [([], 48), (["3"], 3)])
def test_synthetic_takes_its_size_flags_with_or_without_a_count(workspace: dict, words: list[str], count: int
                                                                ) -> None:
    shutil.copytree(REPO / "utils", workspace["root"] / "utils")  # the script runs `python -m utils.synthetic_data`
    result = subprocess.run(["bash", str(workspace["root"] / "download_data.sh"), "--synthetic", *words,
                             "--width", "24", "--height", "16", "--workers", "1"], env=workspace["env"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    images = sorted((workspace["root"] / "data" / "imgs").iterdir())
    assert len(images) == count == len(list((workspace["root"] / "data" / "masks").iterdir()))
    with Image.open(images[0]) as image:
        assert image.size == (24, 16)


def test_synthetic_out_is_read_from_the_callers_folder(workspace: dict, tmp_path: Path) -> None:
    """Found by a review: the script changed to its own folder first, so `--out relsyn` typed elsewhere wrote
    into the repository (and said it wrote to relsyn/); and the first fix ran Python in the caller's folder,
    where a utils/ package of the caller's stood in for the repository's."""
    shutil.copytree(REPO / "utils", workspace["root"] / "utils")
    caller = tmp_path / "elsewhere"
    (caller / "utils").mkdir(parents=True)  # a package of the caller's own, which must not stand in for ours
    (caller / "utils" / "__init__.py").write_text("")
    script = ["bash", str(workspace["root"] / "download_data.sh"), "--synthetic"]
    result = subprocess.run([*script, "2", "--width", "24", "--height", "16", "--workers", "1", "--out", "relsyn"],
                            cwd=caller, env=workspace["env"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list((caller / "relsyn" / "imgs").iterdir())) == 2 and not (workspace["root"] / "relsyn").exists()
    result = subprocess.run([*script, "2", "--width", "24", "--height", "16", "--workers", "1", "--out=other"],
                            cwd=caller, env=workspace["env"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and len(list((caller / "other" / "masks").iterdir())) == 2, result.stderr
    # found by the review of that: the default folder was reported as a relative data/ the caller does not have,
    # an abbreviated --ou went past the caller-folder rule, and PYTHONSAFEPATH=1 lost our utils/
    result = subprocess.run([*script, "1", "--width", "24", "--height", "16", "--workers", "1"], cwd=caller,
                            env={**workspace["env"], "PYTHONSAFEPATH": "1"}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote 1 image to {workspace['root'] / 'data' / 'imgs'}")
    # found by a review: a quoted ~ (or --out=~/x) made a folder named ~ here; the script run through a link to
    # it found no utils
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "get.sh").symlink_to(workspace["root"] / "download_data.sh")
    result = subprocess.run(["bash", str(tmp_path / "links" / "get.sh"), "--synthetic", "1", "--width", "24",
                             "--height", "16", "--workers", "1", "--out=~/syn"], cwd=caller,
                            env={**workspace["env"], "HOME": str(tmp_path / "home")}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "home" / "syn" / "imgs").iterdir())) == 1 and not (caller / "~").exists()
    result = subprocess.run([*script, "1", "--ou", "abbreviated"], cwd=caller, env=workspace["env"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unrecognized arguments: --ou abbreviated" in result.stderr
    (caller / "a_file").write_text("")
    for words, said in ((["-5"], "error: --count must be at least 1, got -5"),
                        (["2", "--out", ""], "error: --out must be a folder (data, /tmp/synthetic), got ''"),
                        (["2", "--out", "a_file"], f"error: cannot make the folder {caller}/a_file/imgs for --out "
                                                   f"({caller}/a_file is a file, not a folder): pick another path")):
        result = subprocess.run([*script, *words], cwd=caller, env=workspace["env"], capture_output=True,
                                text=True, timeout=120)
        assert (result.returncode, result.stderr.strip()) == (2, said), words
