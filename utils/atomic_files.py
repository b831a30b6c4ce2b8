"""Output files written whole or not at all: checkpoints, exports, masks, CSVs and plots.

Each is written to a hidden temporary file beside its target (the same file system, so the final rename is
atomic) and renamed over the target only once complete. A crash, a kill or a full disk at any instant leaves the
old file (or none) or the whole new one, never a half-written file that looks finished.
"""

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

# What temporary_path names: ".<target name>.<pid>.tmp".
TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.\d+\.tmp$")


def temporary_path(path: Path) -> Path:
    """Where path is written before the rename: hidden, beside it, one per process (threads write other targets)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Write to the yielded temporary path; when the block ends without an error it replaces path in one rename.

    On any error (and on KeyboardInterrupt) the partial file is removed and the error goes on. The temporary name
    ends in .tmp, so writers that pick the format from the extension must be told it (Pillow's format=).
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
