"""One training run per checkpoint folder: a second run pointed at the same folder stops before it writes.

The lock is a POSIX record lock (fcntl.lockf) on <folder>/.lock, held for the whole run. The kernel drops it when
the holder ends in any way (also SIGKILL or the OOM killer), so a crashed run never blocks the next one and no
pid has to be trusted: a pid check takes a reused pid for the old run, and cannot see a run in another container
or on another host that shares the folder. Unlike flock, a record lock is not inherited by forked children: the
DataLoader workers of a killed run, which linger a few seconds, do not keep holding it. (It also means one
process does not conflict with itself.) The file's text (pid, host, start time) only makes the message useful.
"""

import contextlib
import errno
import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path
from types import TracebackType

from .atomic_files import make_folder
from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no fcntl; runs there are not guarded
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    """`with RunLock(folder):` holds folder/.lock for the block; refuses if a live run holds it already."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        if fcntl is None:
            print(f"warning: no file locks on this system: nothing stops a second run in {self.folder}",
                  file=sys.stderr)
            return
        make_folder(self.folder, "--checkpoint-dir")
        try:
            fd = self._lock()
        except OSError as error:
            raise UserError(f"cannot lock --checkpoint-dir {self.folder} ({error.strerror}): pick another "
                            "folder") from None
        if fd is None:  # the file system has no locks (e.g. NFS mounted with nolock): run unguarded
            return
        previous = _holder(fd)
        if previous:  # the lock was free, so whoever wrote it is gone
            print(f"note: {self.path} was left by a run that ended without cleaning up ({previous}): taking it over",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode(), 0)
        self._fd = fd

    def _lock(self) -> int | None:
        """An open descriptor of the .lock file now at self.path, locked; None where locks are unsupported."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno in (errno.EACCES, errno.EAGAIN):  # held by another process
                    holder = _holder(fd) or "details not written yet"
                    os.close(fd)
                    raise UserError(f"{self.folder} is in use by another training run ({holder}): use another "
                                    "--checkpoint-dir, or wait for that run to end") from None
                os.close(fd)
                print(f"warning: cannot lock {self.path} ({error.strerror}): nothing stops a second run in "
                      f"{self.folder}", file=sys.stderr)
                return None
            # release() removes the file before unlocking: a file we opened before that is no longer the lock.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    return fd
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked, so no other run can have locked this file meanwhile
        os.close(fd)  # drops the lock


def _holder(fd: int) -> str:
    """'pid N on host H, started T' from the lock file, or '' when it is empty or unreadable."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"null")
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, TypeError, KeyError):
        return ""
