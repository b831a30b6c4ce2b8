"""User-facing errors: one line naming the file or flag and the fix, never a traceback (unless --debug)."""

import argparse
import contextlib
import numbers
import os
import re
import select
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


class UserError(Exception):
    """Something the user can fix (a bad file, a wrong flag); the CLIs print it and exit with code 2."""


def check_flag(flag: str, value: object, ok: bool, rule: str) -> None:
    """One wording for every flag out of its range in every script: what it must be, and what was given."""
    if not ok:
        raise UserError(f"{flag} must be {rule}, got {value}")


def counted(count: int, noun: str, plural: str = "") -> str:
    """"1 image", "3 images", "2 classes": one spelling of counts in every message."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


USER_ERROR_CODE, INTERRUPTED_CODE = 2, 130  # run_cli's exit codes; 1 for any other error, as Python's
CLOSED_OUTPUT_CODE = 141  # a reader that closed the output pipe (`| head`): 128 + SIGPIPE, as the shell's tools


def exit_code_of(error: BaseException | None) -> int:
    """The exit code the process will end with while `error` is in flight (None: none, 0), as run_cli sets it."""
    if error is None:
        return 0
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 0 if error.code is None else 1
    if isinstance(error, UserError):
        return USER_ERROR_CODE
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED_CODE
    return 1


class _Output:
    """sys.stdout during a CLI run: a write that fails (a log redirected to a full disk) is a UserError, said in
    one line, instead of a traceback from whichever print met it. A closed pipe (`| head`) stays itself."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def _failed(self, error: OSError) -> UserError:
        with contextlib.suppress(AttributeError, OSError, ValueError):  # what is left is not flushed at exit, failing
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        return UserError(f"cannot write to the standard output ({error.strerror or error}): free disk space where "
                         "it is redirected, or redirect it elsewhere")

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as error:
            raise self._failed(error) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as error:
            raise self._failed(error) from None

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def run_cli(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser) -> None:
    """Parse the arguments and run main(args); a UserError (also one from a DataLoader worker) is one line."""
    parser.add_argument("--debug", action="store_true", help="show the full Python traceback of errors")
    debug = "--debug" in sys.argv[1:]  # known before parsing: a flag's own check (--tile 0) may fail in it
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8, printed in a strict locale
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    if not debug:  # Pillow's own notes on a damaged file ("Truncated File Read", ...): the CLIs report it
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
    stdout = sys.stdout
    sys.stdout = _Output(stdout)
    try:
        _run(main, parser, debug)
    finally:
        sys.stdout = stdout


def _run(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser, debug: bool) -> None:
    try:
        code = main(home_expanded(parser.parse_args()))
        sys.stdout.flush()  # a reader gone (`| head`) is met here, not as Python shuts down
        sys.exit(code if isinstance(code, int) else 0)  # in the try: a Ctrl-C just as main returns is one line too
    except BrokenPipeError:
        if not _output_closed():
            raise
        # the reader had what it wanted: nothing more to say, and no flush of the rest at shutdown to fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(CLOSED_OUTPUT_CODE)
    except UserError as error:
        if debug:
            raise
        # DataLoader workers re-raise with the worker's traceback folded into the message: keep the last line,
        # without the error's qualified class name in front of it (utils.data_loading.PixelLimitError: ...)
        message = str(error).strip().splitlines()[-1]
        message = re.sub(rf"^(?:[\w.]+\.)?(?:UserError|{re.escape(type(error).__name__)}): ", "", message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(USER_ERROR_CODE)
    except KeyboardInterrupt:
        # what breaks as the process ends (a loader worker's file-descriptor handshake in a helper thread, an
        # object's __del__) follows from the interrupt, and is not the user's to read
        threading.excepthook = lambda _: None
        sys.unraisablehook = lambda _: None
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_CODE)


def home_expanded(args: argparse.Namespace) -> argparse.Namespace:
    """Paths typed as '~/x' in quotes or after '=' (--out=~/x), where the shell leaves the ~: the home folder, as
    meant, not a folder named '~' in the current one (which a later `rm -r ~/x` would not be)."""
    def expanded(value: object) -> object:
        if isinstance(value, (str, Path)) and str(value).startswith("~"):
            return type(value)(os.path.expanduser(value))
        return [expanded(item) for item in value] if isinstance(value, list) else value

    for name, value in vars(args).items():
        if name not in NAME_PARTS:
            setattr(args, name, expanded(value))
    return args


NAME_PARTS = ("mask_suffix",)  # text fields that are parts of file names, not paths: a suffix "~" stays "~"


def as_parsed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fields a notebook set by hand after parse_args (args.checkpoint_dir = "runs/a", args.epochs = "5",
    args.input = "a.jpg") given the values that parsing the same text gives, so that a str where the run reads a
    Path or a list is not an AttributeError deep inside; a value the flag's own parsing refuses is one line."""
    for action in parser._actions:
        if action.dest == argparse.SUPPRESS or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if action.nargs == 0:  # a switch (--overwrite): text such as "" or "False" would be true
            if isinstance(value, str):
                raise UserError(f"args.{action.dest} = {value!r}: {_flag(action)} is a switch, set it to True or "
                                "False")
            continue
        listed = action.nargs in ("+", "*") or isinstance(action.nargs, int)
        if listed and isinstance(value, (str, os.PathLike)):
            value = [value]
        if listed and isinstance(value, (list, tuple)):
            value = [_parsed(action, item) for item in value]
        else:
            value = _parsed(action, value)
        setattr(args, action.dest, value)
    return home_expanded(args)  # "~/runs/a" as typed in a shell: the home folder, not a folder named "~"


def _flag(action: argparse.Action) -> str:
    """The flag as messages name it: its long spelling (--batch-size, not -b)."""
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def _parsed(action: argparse.Action, value: object) -> object:
    """A number set by hand is read from its text as well (a review: args.epochs = 7.0, 2.5 or True ran, or ended
    in a TypeError deep inside, where --epochs 7.0 is refused); None only where it is the flag's default."""
    if action.type in (None, str):
        return os.fspath(value) if isinstance(value, os.PathLike) else value
    flag = _flag(action)
    if value is None and action.default is not None:
        raise UserError(f"args.{action.dest} = None: set it to what {flag} takes (default {action.default!r})")
    if isinstance(value, numbers.Number):  # numpy's too; True is a number, and int("True") refuses it
        value = str(value)
    if not isinstance(value, str):
        return value
    try:
        return action.type(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        raise UserError(f"args.{action.dest} = {value!r} cannot be read as {flag} reads it ({error}): set it to "
                        f"what {flag} takes") from None


def _output_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (a BrokenPipeError from elsewhere is a real error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or a stdout without a descriptor
        return False
