"""User-facing errors: one line naming the file or flag and the fix, never a traceback (unless --debug)."""

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """Something the user can fix (a bad file, a wrong flag); the CLIs print it and exit with code 2."""


def check_flag(flag: str, value: object, ok: bool, rule: str) -> None:
    """One wording for every flag out of its range in every script: what it must be, and what was given."""
    if not ok:
        raise UserError(f"{flag} must be {rule}, got {value}")


def run_cli(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser) -> None:
    """Parse the arguments and run main(args); a UserError (also one from a DataLoader worker) is one line."""
    parser.add_argument("--debug", action="store_true", help="show the full Python traceback of errors")
    debug = "--debug" in sys.argv[1:]  # known before parsing: a flag's own check (--tile 0) may fail in it
    if not debug:  # Pillow's own notes on a damaged file ("Truncated File Read", ...): the CLIs report it
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
    try:
        code = main(parser.parse_args())
    except UserError as error:
        if debug:
            raise
        # DataLoader workers re-raise with the worker's traceback folded into the message: keep the last line.
        message = str(error).strip().splitlines()[-1]
        message = message.split("UserError: ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def make_folder(folder: Path, flag: str) -> None:
    """Create an output folder before the work that fills it, so a bad path fails first, in one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file of that name on the way, no permission, a read-only disk
        raise UserError(f"cannot make the folder {folder} for {flag} ({error.strerror}): pick another path") from None


def check_output_file(path: Path, flag: str) -> None:
    """An output file's folder exists (made now) and the name is not a folder: checked before the work."""
    make_folder(path.parent, flag)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file name")
