"""User-facing errors: one line naming the file or flag and the fix, never a traceback (unless --debug)."""

import argparse
import sys
import warnings
from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix (a bad file, a wrong flag); the CLIs print it and exit with code 2."""


def run_cli(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser) -> None:
    """Parse the arguments and run main(args); a UserError (also one from a DataLoader worker) is one line."""
    parser.add_argument("--debug", action="store_true", help="show the full Python traceback of errors")
    args = parser.parse_args()
    if not args.debug:  # Pillow's own notes on a damaged file ("Truncated File Read", ...): the CLIs report it
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
    try:
        code = main(args)
    except UserError as error:
        if args.debug:
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
