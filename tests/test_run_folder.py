"""When a training run may write into a --checkpoint-dir: unit rules of utils/run_folder.py (train.py's use of them
is tested end to end in test_reliability.py)."""

import os
from pathlib import Path

import pytest

from utils.errors import UserError
from utils.run_folder import (
    check_run_folder,
    earlier_run_files,
    epoch_number,
    resume_path,
    set_aside_earlier_run,
    settle_earlier_run,
)


def make_run(folder: Path, *names: str, metrics_rows: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())
    (folder / "metrics.csv").write_text("epoch,step\n" + "".join(f"{i},{i}\n" for i in range(1, metrics_rows + 1)))
    return folder


def test_epoch_number_is_n_of_epoch_n_pth() -> None:
    assert epoch_number(Path("epoch_12.pth")) == 12 and epoch_number(Path("best.pth")) == -1


def test_a_run_lists_its_checkpoints_latest_epoch_first(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", "epoch_2.pth", "last.pth", "epoch_10.pth", "notes.txt")
    assert earlier_run_files(run) == ["last.pth", "epoch_10.pth", "epoch_2.pth", "metrics.csv"]
    empty = make_run(tmp_path / "empty", metrics_rows=0)  # a header only: a run that never finished an epoch
    assert earlier_run_files(empty) == []


def test_resume_auto_is_last_pth_when_there_is_one(tmp_path: Path) -> None:
    assert resume_path(None, tmp_path) is None and resume_path("auto", tmp_path) is None
    (tmp_path / "last.pth").write_bytes(b"x")
    assert resume_path("auto", tmp_path) == tmp_path / "last.pth"
    assert resume_path("other/epoch_3.pth", tmp_path) == Path("other/epoch_3.pth")


def test_a_new_run_is_refused_where_a_run_is_unless_overwrite(tmp_path: Path) -> None:
    assert check_run_folder(tmp_path / "fresh", None, overwrite=False) is True  # nothing there: a new run
    run = make_run(tmp_path / "run", "last.pth", "best.pth")
    with pytest.raises(UserError, match=r"already holds a run \(last.pth, best.pth, metrics.csv\): continue it "
                                        "with --resume auto"):
        check_run_folder(run, None, overwrite=False)
    elsewhere = make_run(tmp_path / "elsewhere", "last.pth")
    with pytest.raises(UserError, match="give the run resumed from .*elsewhere/last.pth another --checkpoint-dir"):
        check_run_folder(run, elsewhere / "last.pth", overwrite=False)
    assert check_run_folder(run, None, overwrite=True) is True


def test_a_run_goes_on_in_its_own_folder_only_from_its_latest_point(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", "last.pth", "epoch_1.pth")
    os.link(run / "last.pth", run / "best.pth")  # best.pth of the last epoch: the same point as last.pth
    assert check_run_folder(run, run / "last.pth", overwrite=False) is False
    assert check_run_folder(run, run / "best.pth", overwrite=False) is False
    with pytest.raises(UserError, match="epoch_1.pth is an earlier point of the run in .*run: .*--overwrite"):
        check_run_folder(run, run / "epoch_1.pth", overwrite=False)
    assert check_run_folder(run, run / "epoch_1.pth", overwrite=True) is False  # goes back; removes nothing


def test_a_last_pth_that_links_elsewhere_is_still_the_folder_s_own_run(tmp_path: Path) -> None:
    """Found by a review: last.pth kept on another disk behind a link was taken for a run of that disk's folder,
    and --resume auto refused to go on in place."""
    store = make_run(tmp_path / "big_disk", "last.pth")
    run = make_run(tmp_path / "run", "best.pth")
    (run / "last.pth").symlink_to(store / "last.pth")
    assert check_run_folder(run, run / "last.pth", overwrite=False) is False
    with pytest.raises(UserError, match="already holds a run"):  # the stored file named itself: another folder's
        check_run_folder(run, store / "last.pth", overwrite=False)


def test_overwrite_sets_the_earlier_run_aside_until_the_new_one_saves_and_says_which(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", "last.pth", "best.pth", "epoch_3.pth", "training_curves.png", "notes.txt")
    earlier = {path.name: path.read_bytes() for path in run.iterdir()}
    said = []
    holding = set_aside_earlier_run(run, lambda *args, **kwargs: said.append(args[0]))
    assert sorted(path.name for path in run.iterdir()) == [".earlier_run", "notes.txt"]
    assert said == [f"--overwrite: the earlier run's last.pth, best.pth, epoch_3.pth, metrics.csv, training_curves.png "
                    f"moved to {holding}, deleted once this run has saved its first last.pth"]
    (run / "metrics.csv").write_text("epoch,step\n")  # the new run's, before it has saved anything
    settle_earlier_run(run, lambda *args, **kwargs: said.append(args[0]))  # it failed: all put back
    assert {path.name: path.read_bytes() for path in run.iterdir()} == earlier
    assert said[-1] == (f"the earlier run's best.pth, epoch_3.pth, last.pth, metrics.csv, training_curves.png put back "
                        f"in {run}: the --overwrite run that replaced it saved nothing")

    set_aside_earlier_run(run, print)
    (run / "last.pth").write_bytes(b"the new run's")
    settle_earlier_run(run, print)  # the new run saved: the earlier one is gone
    assert sorted(path.name for path in run.iterdir()) == ["last.pth", "notes.txt"]
    assert set_aside_earlier_run(tmp_path, print) is None and not (tmp_path / ".earlier_run").exists()
