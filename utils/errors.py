"""User-facing errors: one line naming the file or flag and the fix, never a traceback."""

import sys
from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix (a bad file, a wrong flag); the CLIs print it and exit with code 2."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(); turn a UserError (also one raised in a DataLoader worker) into one line."""
    try:
        code = main()
    except UserError as error:
        # DataLoader workers re-raise with the worker's traceback folded into the message: keep the last line.
        message = str(error).strip().splitlines()[-1]
        message = message.split("UserError: ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
