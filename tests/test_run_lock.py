"""RunLock: one training run per checkpoint folder; a run that died, even by SIGKILL, does not block the next."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from utils.errors import UserError
from utils.run_lock import RunLock

REPO = Path(__file__).resolve().parents[1]

# A second process that takes the lock, says so, and holds it until stdin closes or it is killed.
HOLDER = """
import sys
from utils.run_lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process holding tmp_path/run's lock; yields the Popen (ended at teardown if still alive)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    yield process
    if process.poll() is None:
        process.stdin.close()
        process.wait(timeout=10)


def test_second_run_on_the_same_folder_is_refused_naming_the_holder(tmp_path, holder):
    with pytest.raises(UserError) as error, RunLock(tmp_path / "run"):
        pass
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'run'} is in use by another training run (pid {holder.pid} on host "
                              f"{socket.gethostname()}, started ")
    assert message.endswith("use another --checkpoint-dir, or wait for that run to end")


def test_lock_of_a_killed_run_is_taken_over_with_a_note(tmp_path, holder, capsys):
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the .lock file stays behind
    holder.wait(timeout=10)
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == holder.pid
    with RunLock(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    note = capsys.readouterr().err
    assert "ended without cleaning up" in note and f"pid {holder.pid}" in note


def test_lock_is_released_after_the_block_also_on_an_error(tmp_path):
    folder = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError, match="training failed"), RunLock(folder):
        assert (folder / ".lock").is_file()  # the folder is created
        raise RuntimeError("training failed")
    assert not (folder / ".lock").exists()
    result = subprocess.run([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, input="", capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "held\n"


def test_lock_file_names_the_run(tmp_path):
    with RunLock(tmp_path):
        info = json.loads((tmp_path / ".lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["started"][:2] == "20"


# A run whose forked child (like a DataLoader worker) outlives it: the child runs until the test closes stdin.
FORKING_HOLDER = """
import os, sys
from utils.run_lock import RunLock
with RunLock(sys.argv[1]):
    child = os.fork()
    if child == 0:
        sys.stdin.read()  # the worker lingers after its parent is killed
        os._exit(0)
    print("held", child, flush=True)
    sys.stdin.read()
"""


def test_a_killed_run_s_lingering_forked_worker_does_not_hold_the_lock(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(tmp_path / "run")], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    word, child = process.stdout.readline().split()
    assert word == "held"
    try:
        with pytest.raises(UserError, match="in use by another training run"), RunLock(tmp_path / "run"):
            pass
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        os.kill(int(child), 0)  # the worker is still running (this raises if it is not)
        with RunLock(tmp_path / "run"):
            assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    finally:
        process.stdin.close()  # the worker reads end of file and exits


def test_folder_that_cannot_be_created_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError) as error:
        RunLock(tmp_path / "file" / "run").acquire()
    assert str(error.value) == (f"cannot make the folder {tmp_path / 'file' / 'run'} for --checkpoint-dir "
                                f"({tmp_path / 'file'} is a file, not a folder): pick another path")


def test_a_broken_link_as_the_folder_is_named_and_its_target_not_made(tmp_path):
    """Found by a review: 'cannot lock --checkpoint-dir run (File exists)'. A link to an unmounted disk, say: its
    target is not made on whatever disk holds that path now."""
    (tmp_path / "run").symlink_to(tmp_path / "unmounted" / "runs")
    with pytest.raises(UserError) as error:
        RunLock(tmp_path / "run").acquire()
    assert str(error.value) == (f"cannot make the folder {tmp_path / 'run'} for --checkpoint-dir ({tmp_path / 'run'} "
                                f"is a link to {tmp_path / 'unmounted' / 'runs'}, which does not exist): mend the link "
                                "or pick another path")
    assert not (tmp_path / "unmounted").exists()
    (tmp_path / "chain").symlink_to(tmp_path / "run")  # a link to that link: the missing end is named
    with pytest.raises(UserError, match=f"is a link to {tmp_path / 'unmounted' / 'runs'}, which does not exist"):
        RunLock(tmp_path / "chain").acquire()


def test_a_file_given_as_the_folder_is_named_as_one(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(UserError, match=r"--checkpoint-dir .*run is a file, not a folder"):
        RunLock(tmp_path / "run").acquire()


def test_the_checkpoint_folder_is_made_and_tried_with_a_write_before_the_data(tmp_path, monkeypatch):
    from pathlib import Path

    from utils.atomic_files import check_writable_folder

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot make the folder .*file/run for --checkpoint-dir "
                                        r"\(.*file is a file, not "):
        check_writable_folder(tmp_path / "file" / "run", "--checkpoint-dir")
    check_writable_folder(tmp_path / "new" / "run", "--checkpoint-dir")
    assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())  # probe removed

    def read_only(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - a folder that refuses files (root ignores chmod)
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    # found by a review: on a read-only disk, removing the probe that was never made failed too, with a traceback
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(UserError, match=r"cannot write to the folder .*new/run of --checkpoint-dir \(Read-only file "
                                        r"system\): pick another folder, or free disk space"):
        check_writable_folder(tmp_path / "new" / "run", "--checkpoint-dir")


def test_a_longer_lock_left_behind_is_replaced_whole(tmp_path):
    """A stale .lock from a host of a longer name: the new holder's details replace it, not overwrite its start
    (the tail left behind would make it unreadable, and a refused second run could not name the holder)."""
    stale = {"pid": 1, "host": "h" * 300, "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / ".lock").write_text(json.dumps(stale))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_a_lock_file_removed_while_it_was_being_opened_is_not_taken(tmp_path, monkeypatch):
    """A run ending removes .lock, then unlocks: a run that opened the file just before holds a file that is no
    longer the lock. It opens .lock again, so that a third run meets the lock that is really held."""
    import utils.run_lock as run_lock

    real_open, opened = os.open, []

    def open_then_removed(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        fd = real_open(path, *args, **kwargs)
        opened.append(path)
        if len(opened) == 1:
            os.unlink(path)  # as the ending run's release() does, between this run's open and its lock
        return fd

    monkeypatch.setattr(run_lock.os, "open", open_then_removed)
    with RunLock(tmp_path):
        assert len(opened) == 2 and (tmp_path / ".lock").is_file()
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
