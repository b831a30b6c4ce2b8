"""bench/gpu_check.sh runs where no test runs first: on a GPU machine lent by chance, with 15 minutes for all of
it. A renamed or mistyped flag there costs a row of figures that may not be measurable again for sessions, so
every Python command the script runs is checked here: its script imports, and its arguments parse with that
script's own parser (the flags predict_speed.py passes on, with predict.py's)."""

import argparse
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import predict
from bench import train_speed
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"


class Parsed(Exception):
    """Raised in place of the script's work, once its arguments have parsed."""

    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def gpu_check_commands() -> list[list[str]]:
    """Each Python command in gpu_check.sh as an argv: a script path under bench/ or tests/, then its arguments."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        match = re.search(r"((?:bench|tests)/\S+\.py)(.*)", line)
        if not match or line.lstrip().startswith("#"):
            continue
        arguments = re.split(r"\s(?:\d?>>?|\|)", match.group(2))[0]  # up to a redirection or pipe
        commands.append([match.group(1), *shlex.split(arguments.replace("$OUT", "/tmp/out"))])
    return commands


COMMANDS = gpu_check_commands()
BENCHMARKS = list(dict.fromkeys(tuple(argv) for argv in COMMANDS if argv[0].startswith("bench/")))


def parsed_arguments(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The namespace the script's own parser makes of argv, without running the script's work."""
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        raise Parsed(real_parse_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(Parsed) as parsed:
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    return parsed.value.namespace


def test_the_script_is_valid_bash_and_its_commands_were_found() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    scripts = {argv[0] for argv in COMMANDS}
    assert {"tests/test_cuda.py", "bench/train_speed.py", "bench/step_profile.py", "bench/predict_speed.py",
            "bench/tile_memory.py", "bench/mask_output_cost.py"} <= scripts
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("argv", BENCHMARKS, ids=" ".join)
def test_each_benchmark_command_parses(argv: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = parsed_arguments(list(argv), monkeypatch)
    monkeypatch.undo()
    if argv[0] == "bench/train_speed.py":
        train_speed.check_args(namespace)
    if argv[0] == "bench/predict_speed.py":  # the flags after -- go to predict.py
        predict.get_args_parser().parse_args(["-m", "model.pth", "-i", "in", *namespace.flags])


def test_a_mistyped_flag_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        parsed_arguments(["bench/train_speed.py", "--count", "320", "--compile-mdoe", "max-autotune"], monkeypatch)
    namespace = parsed_arguments(["bench/train_speed.py", "--count", "320", "--epochs", "1"], monkeypatch)
    with pytest.raises(UserError, match="--epochs must be at least 2: the first epoch is warm-up"):
        train_speed.check_args(namespace)


def test_an_error_found_deep_inside_a_benchmark_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    """Found in the 14th session: a UserError raised by train.py inside a bench script came with a traceback."""
    monkeypatch.setattr(sys, "argv", ["bench/train_speed.py", "--width", "16", "--height", "16", "--scale", "0.1",
                                      "--count", "2", "--data", str(tmp_path / "data"), "--device", "cpu"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(REPO / "bench" / "train_speed.py"), run_name="__main__")
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "is 16x16, only 1x1 at scale 0.1: the U-Net needs at least 16 px" in last


@pytest.mark.parametrize(("argv", "rule"), [
    (["bench/step_profile.py", "--scale", "2"], "must be at most 1 (a downscaling factor), got 2"),
    (["bench/predict_speed.py", "--files", "0"], "must be at least 1, got 0"),
    (["bench/inference_memory.py", "--sizes", "10x10"], "must be at least 16, got 10"),
    (["bench/tile_memory.py", "--gpu-limit", "-1"], "must be above 0, got -1"),
    (["bench/mask_output_cost.py", "--repeat", "x"], "'x' is not a whole number"),
    (["bench/step_profile.py", "--base-channels", "1000"], "a whole number from 1 to 256, got '1000'"),
])
def test_a_bad_number_is_one_line_before_any_work(argv: list[str], rule: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    """Found by a review: these ran into tracebacks (a median of nothing, a division by zero), minutes of
    writing data first, or the out-of-memory killer (--scale 2 took 21 GB)."""
    with pytest.raises(SystemExit) as stop:
        parsed_arguments(argv, monkeypatch)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"{Path(argv[0]).name}: error: argument {argv[1]}: {rule}"


@pytest.mark.parametrize("part", ["next", "explore", "all"])
def test_each_part_runs_through_and_tables_its_rows(part: str, tmp_path: Path) -> None:
    """The shell around the benchmarks (parts, tables, the log), with a stand-in for python that prints a row."""
    stand_in = tmp_path / "python"
    stand_in.write_text('#!/bin/sh\necho "| measured | $1 |"\n')
    stand_in.chmod(0o755)
    result = subprocess.run(["bash", str(SCRIPT), part], env={**os.environ, "OUT": str(tmp_path), "PY": str(stand_in)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    training = (tmp_path / "gpu_table.md").read_text().splitlines()
    prediction = (tmp_path / "gpu_table_predict.md").read_text().splitlines()
    assert training and prediction
    assert all(line.endswith("| measured | bench/train_speed.py |") or "bench/step_profile.py" in line
               for line in training)
    assert all(line.endswith("| measured | bench/predict_speed.py |") for line in prediction)
    assert result.stdout.count("| run |") == 2 and "finished" in result.stdout


def test_predict_speed_repeats_files_and_runs_without_the_unet(tmp_path: Path) -> None:
    """Found by a review of the bench scripts: gpu_check.sh's predict rows (--count above --files, and the blur in
    place of the U-Net) both failed on the CPU: the repeats were links, which predict.py predicts once, and the
    stand-in model lacked an attribute predict.py reads. The same paths, tiny, on the CPU."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "predict_speed.py"), "--count", "3", "--files", "2",
                             "--reference-count", "0", "--width", "96", "--height", "64", "--scale", "1",
                             "--device", "cpu", "--without-unet", "--", "--compile", "off"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = [line for line in result.stdout.splitlines() if line.startswith("ours, run ")]
    assert len(runs) == 2 and all("predicted 3 images" in line for line in runs)
    assert "without the U-Net (a blur)" in result.stdout.splitlines()[-1]


def test_a_work_dir_of_the_users_is_refused_and_one_a_bench_made_is_emptied(tmp_path: Path) -> None:
    """Found by a review: --work-dir was deleted without a look, a thesis.txt in it too (--work-dir . would have
    taken the checkout)."""
    from bench.arguments import fresh_work_dir

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    with pytest.raises(UserError, match="holds files no bench script wrote, and would be deleted"):
        fresh_work_dir(mine)
    assert (mine / "thesis.txt").read_text() == "years of work"
    scratch = fresh_work_dir(tmp_path / "scratch")  # new: made and marked
    (scratch / "run_1").mkdir()
    assert fresh_work_dir(scratch) == scratch and [path.name for path in scratch.iterdir()] == [".bench_work_dir"]
