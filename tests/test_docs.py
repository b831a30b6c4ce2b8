"""The README documents every command-line flag and the two Quickstart commands."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

import evaluate
import predict
import train

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("script", [train, predict, evaluate], ids=lambda m: m.__name__)
def test_every_flag_is_in_the_readme(script) -> None:
    flags = [flag for action in script.get_args_parser()._actions for flag in action.option_strings]
    assert flags, "the parser has no flags"
    # whole tokens: --no-sa is not documented by --no-save, nor -e by a word holding it
    missing = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", README)]
    assert not missing, f"{script.__name__}.py flags missing from README.md: {missing}"


def test_every_flag_has_help() -> None:
    for script in (train, predict, evaluate):
        for action in script.get_args_parser()._actions:
            assert action.help, f"{script.__name__}.py {action.option_strings} has no help text"


def test_quickstart_is_make_demo_then_make_test() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.splitlines() if line.startswith("make ")]
    assert commands == ["make demo", "make test"]


def test_the_readme_flag_lists_carry_each_flag_s_current_help() -> None:
    """The `-h` blocks in the README are pasted output: a help text changed since (or a flag's default) shows here.
    Whitespace is compared loosely, so the terminal width and Python's wrapping do not matter."""
    import export
    from utils import check_data

    def loosely(text: str) -> str:  # argparse wraps lines at spaces and after hyphens
        return re.sub(r"-\s+", "-", " ".join(text.split()))

    readme = loosely(README)
    stale = []
    for script in (train, predict, evaluate, export, check_data):
        parser = script.get_args_parser()
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help and action.help != "==SUPPRESS==":
                text = loosely(formatter._expand_help(action))
                if text not in readme:
                    stale.append(f"{script.__name__} {'/'.join(action.option_strings) or action.dest}: {text[:60]}")
    assert not stale, "README.md -h blocks are out of date (refresh them with COLUMNS=120 python X -h):\n" + \
        "\n".join(stale)


@pytest.mark.parametrize("module", ["check_data", "synthetic_data"])
def test_a_utils_command_run_as_a_file_says_how_to_run_it(module: str, tmp_path: Path) -> None:
    """Found by a review: `python utils/synthetic_data.py` (the README gives `python -m utils.synthetic_data`)
    ended in an ImportError traceback."""
    result = subprocess.run([sys.executable, str(REPO / "utils" / f"{module}.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: run it as a module, from the repository's folder: python -m "
                                          f"utils.{module} (see -h)"]
    assert list(tmp_path.iterdir()) == []
