"""Outputs are written whole or not at all: an error mid-write keeps the old file and leaves no partial one."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from utils.atomic_files import TEMPORARY_NAME, atomic_path, temporary_path
from utils.errors import UserError


def test_complete_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "scores.csv"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and TEMPORARY_NAME.match(tmp.name)["target"] == "scores.csv"
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the rename
    assert target.read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["scores.csv"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_keeps_the_old_file_and_removes_the_partial_one(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "mask.png"
    target.write_bytes(b"old mask")
    with pytest.raises(type(error)), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a")
        raise error
    assert target.read_bytes() == b"old mask"
    assert [path.name for path in tmp_path.iterdir()] == ["mask.png"]


def test_a_link_writes_the_file_it_links_to_and_stays_a_link(tmp_path: Path) -> None:
    """Found by a review: -o link.png replaced the link with a file, and the file it linked to was never made."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link.png").symlink_to(tmp_path / "elsewhere" / "target.png")  # not made yet
    for content in (b"first", b"second"):
        with atomic_path(tmp_path / "link.png") as tmp:
            tmp.write_bytes(content)
        assert (tmp_path / "link.png").is_symlink() and (tmp_path / "elsewhere" / "target.png").read_bytes() == content
    assert sorted(path.name for path in (tmp_path / "elsewhere").iterdir()) == ["target.png"]


def test_temporary_names_are_hidden_beside_the_target_and_recognised() -> None:
    tmp = temporary_path(Path("run/last.pth"))
    assert tmp.parent == Path("run") and tmp.name.startswith(".last.pth.") and tmp.suffix == ".tmp"
    assert TEMPORARY_NAME.match(tmp.name)["target"] == "last.pth"


@pytest.mark.parametrize("name", ["a" * 250 + ".csv", "é" * 125 + ".pth", "b" * 255])
def test_a_name_near_the_length_limit_is_written_through_a_shorter_temporary_name(tmp_path: Path, name: str) -> None:
    """Found by a review: the temporary name of a valid 245-255 byte name went past the 255-byte limit, and the
    write failed after the work ("File name too long: free disk space")."""
    with atomic_path(tmp_path / name) as tmp:
        assert len(os.fsencode(tmp.name)) <= 255 and tmp.parent == tmp_path
        tmp.write_bytes(b"whole")
    assert [path.name for path in tmp_path.iterdir()] == [name]
    assert TEMPORARY_NAME.match(tmp.name)["target"].endswith(Path(name).suffix)  # unfinished .pth saves are found
    assert temporary_path(tmp_path / name) != temporary_path(tmp_path / (name[:-5] + "x" + name[-4:]))


def test_a_mask_that_fails_halfway_leaves_the_previous_mask_and_no_partial_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while a mask is written: one line naming the input, and the folder holds only whole files."""
    from utils import mask_writer
    from utils.mask_writer import MaskWriter, OutputOptions

    class FullDisk:
        def save(self, path, **options) -> None:  # noqa: ANN001, ANN003
            Path(path).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "out.png").write_bytes(b"yesterday's mask")
    monkeypatch.setattr(mask_writer, "mask_image", lambda *args: FullDisk())
    writer = MaskWriter([0, 255], None, 3, OutputOptions(), threads=1)
    writer.submit(0, tmp_path / "in.jpg", tmp_path / "out.png", np.zeros((4, 4), np.uint8), [1.0, 0.0])
    with pytest.raises(UserError, match=r"cannot write the prediction of .*in\.jpg .*No space left on device"):
        writer.close()
    assert (tmp_path / "out.png").read_bytes() == b"yesterday's mask"
    assert [path.name for path in tmp_path.iterdir()] == ["out.png"]
