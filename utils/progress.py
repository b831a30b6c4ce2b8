"""Progress bars that suit where stderr goes: redrawn in place on a terminal, a plain line a minute in a log.

tqdm redraws its line with carriage returns whatever the stream; in a file or a CI log every redraw stays, up to
ten a second on one physical line, megabytes long over a run.
"""

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 60.0  # seconds between the lines of a bar written to a file or pipe


class LogLines:
    """A stream for tqdm that writes each redraw as a line of its own, and nothing for a bar's erasure or for a
    redraw that says what the line before said (a bar closed by an error where it started)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable | None = None, **options: Any) -> tqdm:
    """tqdm on stderr; where stderr is no terminal, one line per LOG_INTERVAL_S (and the first and last). A bar
    that vanishes when done on a terminal (leave=False: validation, tiles) writes to a log only when it lasts
    longer than LOG_INTERVAL_S: then a line a minute and its last state, else nothing (not a lone 0%)."""
    stream = sys.stderr  # looked up now: tests and wrappers replace it
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return tqdm(iterable, file=stream, **options)
    if not options.get("leave", True):
        options = {"delay": LOG_INTERVAL_S, **options, "leave": True}
    # maxinterval too: tqdm's monitor thread would otherwise redraw 10 s after each line, two lines a minute
    return tqdm(iterable, file=LogLines(stream),
                **{"mininterval": LOG_INTERVAL_S, "maxinterval": LOG_INTERVAL_S, **options})
