"""Output files written whole or not at all: checkpoints, exports, masks, CSVs and plots.

Each is written to a hidden temporary file beside its target (the same file system, so the final rename is
atomic) and renamed over the target only once complete. A crash, a kill or a full disk at any instant leaves the
old file (or none) or the whole new one, never a half-written file that looks finished.
"""

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

# What temporary_path names: ".<target name>.<pid>.tmp".
TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.\d+\.tmp$")


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
    tail = f"~{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:8]}{path.suffix}.{os.getpid()}.tmp"
    stem = path.stem
    while stem and len(os.fsencode(f".{stem}{tail}")) > NAME_MAX:
        stem = stem[:-1]
    return path.with_name(f".{stem}{tail}")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Write to the yielded temporary path; when the block ends without an error it replaces path in one rename.

    On any error (and on KeyboardInterrupt) the partial file is removed and the error goes on. The temporary name
    ends in .tmp, so writers that pick the format from the extension must be told it (Pillow's format=). A path
    that is a symbolic link writes the file it links to, as writing through it in place would, not over the link.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
