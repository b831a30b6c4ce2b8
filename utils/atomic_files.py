"""Output files: their folders checked before the work, and each file written whole or not at all (checkpoints,
exports, masks, CSVs and plots).

Each is written to a hidden temporary file beside its target (the same file system, so the final rename is
atomic) and renamed over the target only once complete. A crash, a kill or a full disk at any instant leaves the
old file (or none) or the whole new one, never a half-written file that looks finished.
"""

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import UserError

# What temporary_path names: ".<target name>.<pid>.tmp".
TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.tmp$")
# A temporary file untouched this long is not being written (a mask takes well under a second): one whose process
# is gone is removed by remove_abandoned_temporaries.
ABANDONED_AFTER_S = 600


NAME_MAX = 255  # bytes in a file name, on the common file systems
# Text files that list file names (CSVs): a name that is not UTF-8 (file names are bytes on Linux) is written back
# as its bytes, as Python decoded it, instead of failing the write after the work.
NAME_BYTES = "surrogateescape"


def temporary_path(path: Path) -> Path:
    """Where path is written before the rename: hidden, beside it, one per process (threads write other targets).
    A target whose name is near the length limit gets a shortened one (its start, a hash of it, its suffix)."""
    name = f".{path.name}.{os.getpid()}.tmp"
    if len(os.fsencode(name)) <= NAME_MAX:
        return path.with_name(name)
    tail = f"{_hashed_tail(path)}.{os.getpid()}.tmp"
    stem = path.stem
    while stem and len(os.fsencode(f".{stem}{tail}")) > NAME_MAX:
        stem = stem[:-1]
    return path.with_name(f".{stem}{tail}")


def _hashed_tail(path: Path) -> str:
    """How a temporary name too long for the file system ends, before its ".<pid>.tmp": a hash of path's name."""
    return f"~{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:8]}{path.suffix}"


def written_path(path: Path) -> Path:
    """The file a write to path replaces: a symbolic link's target (see atomic_path)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, the process is only looked up
    except ProcessLookupError:
        return True
    except OSError:  # another user's: alive
        return False
    return False


def remove_abandoned_temporaries(targets: Iterable[Path]) -> list[Path]:
    """Delete the temporary files of these targets that a process killed while writing them left behind (atomic_path
    removes its own on any error it lives through): those untouched for ABANDONED_AFTER_S whose process is gone.
    Returns them. The age too, since a process id says nothing of another host or container writing to a shared
    disk. POSIX only: on Windows, os.kill would end the process it is asked about."""
    if os.name != "posix":
        return []
    names: dict[Path, set[str]] = {}  # per folder, the target names and the hashed tails of long ones
    for target in map(written_path, targets):
        names.setdefault(target.parent, set()).update((target.name, _hashed_tail(target)))
    before = time.time() - ABANDONED_AFTER_S
    removed = []
    for folder, wanted in names.items():
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                found = TEMPORARY_NAME.match(entry.name)
                target = found["target"] if found else ""
                if target not in wanted and ("~" not in target or target[target.rindex("~"):] not in wanted):
                    continue
                with contextlib.suppress(OSError):
                    if (entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < before
                            and _process_gone(int(found["pid"]))):
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Write to the yielded temporary path; when the block ends without an error it replaces path in one rename.

    On any error (and on KeyboardInterrupt) the partial file is removed and the error goes on. The temporary name
    ends in .tmp, so writers that pick the format from the extension must be told it (Pillow's format=). A path
    that is a symbolic link writes the file it links to, as writing through it in place would, not over the link.
    """
    path = written_path(Path(path))
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def make_folder(folder: Path, flag: str) -> None:
    """Create an output folder before the work that fills it, so a bad path fails first, in one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file of that name on the way, a broken link, no permission, a read-only disk
        on_the_way = (folder, *folder.parents)
        # A link to an unmounted disk, say: its target is not made here, on whatever disk holds that path now.
        broken = next((path for path in on_the_way if path.is_symlink() and not path.exists()), None)
        if broken is not None:
            raise UserError(f"cannot make the folder {folder} for {flag} ({broken} is a link to "
                            f"{os.path.realpath(broken)}, which does not exist): mend the link or pick another "
                            "path") from None
        in_the_way = next((path for path in on_the_way if path.exists() and not path.is_dir()), None)
        reason = f"{in_the_way} is a file, not a folder" if in_the_way is not None else error.strerror
        raise UserError(f"cannot make the folder {folder} for {flag} ({reason}): pick another path") from None


def check_writable_folder(folder: Path, flag: str) -> None:
    """Make the folder and write a small file in it: a folder may exist and still refuse files (permissions, a
    read-only or full disk), and that should stop the run before its work, not after."""
    make_folder(folder, flag)
    probe = folder / f".write_test.{os.getpid()}"
    try:
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as error:
        with contextlib.suppress(OSError):  # never made (a read-only disk says so to unlink too)
            probe.unlink()
        raise UserError(f"cannot write to the folder {folder} of {flag} ({error.strerror or error}): pick another "
                        "folder, or free disk space") from None


def check_output_file(path: Path, flag: str, suffixes: tuple[str, ...] = (),
                      ours: Callable[[str], bool] | None = None) -> None:
    """An output file's folder is writable (made now), the name is not a folder and, where suffixes are given,
    ends in one of them (so that a slip like --csv model.pth cannot overwrite a checkpoint or an image): checked
    before the work. With ours (a test of the file's first 4 KiB), an existing file is replaced only when it is
    one this tool wrote: never a training run's metrics.csv that a slip names."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {path}: give a file name ending in {' or '.join(suffixes)}")
    if ours is not None and path.exists():
        try:
            with open(path, errors="replace") as file:
                head = file.read(4096)
        except OSError:
            head = ""
        if not ours(head):
            raise UserError(f"{flag} {path} exists and was not written by this tool: give another file name, or "
                            "move that file away first")
    check_writable_folder(path.parent, flag)
    if path.is_symlink():  # written through (atomic_path): the folder that matters is the target's
        target = Path(os.path.realpath(path))
        if not target.parent.is_dir():
            raise UserError(f"{flag} {path} is a link to {target}, whose folder does not exist: mend the link, or "
                            "give another file name")
        check_writable_folder(target.parent, flag)
