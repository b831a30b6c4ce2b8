"""Ctrl-C and a scheduler's SIGTERM stop training cleanly: the current step ends, last.pth is saved, the run
says how to resume. A second signal stops at once (as Ctrl-C always did). Loader workers leave the first
signal to the main process (leave_first_signal_to_main)."""

import contextlib
import multiprocessing
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """While active, the first SIGINT/SIGTERM only sets `requested` (the signal's name); the loop checks it."""

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce  # say so on stderr (one process of a torchrun run does)
        self.requested: str | None = None
        self.signal_number = 0
        self._previous: dict[int, object] = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.requested, self.signal_number = signal.Signals(number).name, number
        if self.announce:
            print(f"\n{self.requested} received: stopping after this step and saving last.pth "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by that signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signal_number


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (a scheduler, `timeout`) ends the process as usual, exit code 143, but as a SystemExit raised in the
    main thread, so that the work in progress is cleaned up or put back on the way out (a partial download, an
    earlier run set aside); only where the signal is not handled already, and only in the main thread (where
    Python allows)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(number: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + number)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def leave_first_signal_to_main(signals: tuple[signal.Signals, ...] = (signal.SIGINT,)) -> None:
    """In a loader worker: a Ctrl-C (SIGINT) reaches every process of the terminal's group, and the main process
    decides: training stops after its step and saves, prediction stops. A forked worker would otherwise print
    GracefulStop's message again, and one started by spawn or forkserver would raise KeyboardInterrupt mid-item.
    A second signal ends the worker (PyTorch's worker loop takes KeyboardInterrupt as the end).

    SIGTERM too where the main process stops gracefully on it (train.py): torchrun and batch schedulers send it
    to the whole process group, and a worker that died of it failed the step the main process was finishing
    ("DataLoader worker is killed by signal: Terminated") before it could save. Elsewhere (predict.py) SIGTERM
    keeps PyTorch's own worker handler, so the workers end with their parent."""
    received: list[int] = []

    def handle(number: int, frame: FrameType | None) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(number)

    for number in signals:
        signal.signal(number, handle)


@contextlib.contextmanager
def signals_held_for_new_processes(start_method: str | None = None) -> Iterator[None]:
    """Processes started inside begin with SIGINT and SIGTERM blocked, until their own setup takes them
    (take_held_signals): one started by spawn (the default on macOS and Windows) first imports the script and
    torch for seconds, and a Ctrl-C meanwhile ended it in a traceback. Blocked in this thread only: the process
    itself still gets them, through another thread or when the block ends. No signal masks on Windows.

    start_method: the processes' (default: multiprocessing's). Under forkserver (Python 3.14's default on Linux)
    they are forked by the server, which has imported the script already: nothing is held, and the server is
    started first, so that it does not itself begin with the signals held for good."""
    method = (start_method or multiprocessing.get_start_method(allow_none=True)
              or multiprocessing.get_all_start_methods()[0])  # the default, without fixing it
    if method == "forkserver":
        from multiprocessing import forkserver  # imported where it exists: not on Windows

        forkserver.ensure_running()
    if not hasattr(signal, "pthread_sigmask") or method == "forkserver":
        yield
        return
    if method != "fork":  # multiprocessing's resource tracker, started first: starting it unblocks both signals
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def take_held_signals() -> None:
    """In a worker process whose handlers are set: the signals held while it started (a Ctrl-C) arrive now."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
