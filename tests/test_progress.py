"""Progress bars in a log file are lines, on a terminal a line redrawn in place."""

import io

import pytest

from utils.progress import LOG_INTERVAL_S, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_written_to_a_file_is_whole_lines_without_carriage_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: a log of train.py held 61 redraws of one epoch's bar on one line of 4,962 bytes."""
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    with progress_bar(total=200, desc="epoch 1/1", unit="img", mininterval=0) as bar:
        for _ in range(200):
            bar.update()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("epoch 1/1:   0%") and lines[-1].startswith("epoch 1/1: 100%")
    assert all(line.startswith("epoch 1/1: ") for line in lines)


def test_a_bar_in_a_log_waits_its_interval_between_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    bar = progress_bar(total=10)
    assert bar.mininterval == bar.maxinterval == LOG_INTERVAL_S  # found by a review: the monitor's 10 s redraw
    bar.update(10)  # within the interval: no line of its own
    bar.close()
    assert log.getvalue().count("\n") == 2 and "10/10" in log.getvalue()  # the first line and the last


def test_a_bar_that_vanishes_on_a_terminal_is_in_a_log_only_when_it_lasts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: validation's and the tiles' bars (leave=False) left a lone '0%' line, read as a stall."""
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    with progress_bar(range(5), leave=False, mininterval=0) as bar:  # done within LOG_INTERVAL_S
        assert list(bar) == [0, 1, 2, 3, 4]
    assert log.getvalue() == ""
    with progress_bar(range(5), leave=False, mininterval=0, delay=0) as bar:  # as one that outlasts the delay
        assert list(bar) == [0, 1, 2, 3, 4]
    assert log.getvalue().splitlines()[-1].startswith("100%") and "\r" not in log.getvalue()
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    with progress_bar(range(5), leave=False, mininterval=0) as bar:
        assert list(bar) == [0, 1, 2, 3, 4]
    assert "5/5" in screen.getvalue()


def test_a_bar_on_a_terminal_is_redrawn_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    with progress_bar(total=3, mininterval=0) as bar:
        for _ in range(3):
            bar.update()
    assert screen.getvalue().count("\r") >= 3 and screen.getvalue().count("\n") <= 1


def test_a_bar_closed_where_it_started_writes_its_line_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: evaluate.py stopped by an error on its first batch logged its '0%' line twice."""
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    with pytest.raises(RuntimeError), progress_bar(total=6, desc="evaluation"):
        raise RuntimeError("the first batch failed")
    assert log.getvalue().count("evaluation:") == 1
