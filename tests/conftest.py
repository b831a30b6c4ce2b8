"""Shared helpers for the unit tests: tiny image/mask files written on the fly, the reference layout."""

import contextlib
import io
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # import unet/ and utils/ also when pytest is not started from the repo root
    sys.path.insert(0, str(REPO))

# The inputs here are tiny: on a small CPU, intra-op threads cost far more in synchronisation than they gain.
torch.set_num_threads(1)

# Training runs that test the loop, its files and its resumes, not what the model learns, train a narrow U-Net:
# the loop is the same at any width, and a step of the 31M-parameter classic one cost 0.56 s against 0.04 s at 16
# base channels (1.9M parameters; batch 4 of 37x53, one thread), its checkpoint 0.38 s to write against 0.04 s
# (2-core CPU, 2026-11-29). Tests of the classic layout and of what training reaches keep the classic width.
NARROW_UNET = ["--base-channels", "16"]

# Odd sizes on purpose: they exercise the padding in Up and the int(scale * side) rule.
HEIGHT, WIDTH = 37, 53


# tmp_path folders in RAM where it has room: every training test writes ~355 MB checkpoints, and on this machine's
# disk one took 0.6-2 s to write against 0.26 s in /dev/shm (2-core CPU, 2026-11-29). A whole `make test` run used
# at most 4.2 GB there at once (the folders of passing tests are deleted as they end: pyproject.toml).
RAM_SCRATCH, RAM_SCRATCH_NEEDED = Path("/dev/shm"), 8 * 2**30


def pytest_configure(config: pytest.Config) -> None:
    """Point pytest's temporary root at RAM_SCRATCH, unless this run names its own (--basetemp or
    PYTEST_DEBUG_TEMPROOT) or it lacks the room (a container's default /dev/shm is 64 MB)."""
    if config.option.basetemp or "PYTEST_DEBUG_TEMPROOT" in os.environ:
        return
    try:
        roomy = shutil.disk_usage(RAM_SCRATCH).free >= RAM_SCRATCH_NEEDED and os.access(RAM_SCRATCH, os.W_OK)
    except OSError:
        return
    if roomy:  # inherited by the xdist workers, which are started after this hook
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(RAM_SCRATCH)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a `slow` test first: `make test` hands whole files to its workers in collection order (with
    --no-loadscope-reorder; by default xdist sorts the files by their number of tests, which put the one-test nuclei
    file last), and a long file handed out last keeps one worker busy after the other has finished (about a minute
    of the suite)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within a file is kept


def run_script(script: str, *args: object, cwd: Path, real_process: bool = False) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` in `cwd` (a repository script, or `-m module`), as a CompletedProcess.

    In this process by default: the script's own `__main__` block runs with its argv, working folder, output
    streams and exit code, without the ~4 s a new process spends importing torch (about a minute of the suite).
    The process-wide state a script may change (warning filters included) is put back afterwards (the scripts'
    main() put back Pillow's pixel limit and glibc's malloc settings themselves).
    `real_process=True` starts a real one: each CLI has at least one test that does, so the command line itself
    stays tested.
    """
    argv = [*script.split(), *map(str, args)]
    if real_process:
        target = argv if argv[0] == "-m" else [str(REPO / argv[0]), *argv[1:]]
        return subprocess.run([sys.executable, *target], cwd=cwd, capture_output=True, text=True, timeout=600)
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_environ, saved_filters = sys.argv, os.getcwd(), dict(os.environ), warnings.filters[:]
    saved_threads, saved_rng = torch.get_num_threads(), torch.random.get_rng_state()
    saved_handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    saved_hooks = threading.excepthook, sys.unraisablehook  # run_cli quiets them after a Ctrl-C
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                if argv[0] == "-m":
                    sys.argv = [argv[1], *argv[2:]]
                    with warnings.catch_warnings():  # runpy's note that the module was imported before: it was
                        warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
                        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
                else:
                    sys.argv = [str(REPO / argv[0]), *argv[1:]]
                    runpy.run_path(str(REPO / argv[0]), run_name="__main__")
            except SystemExit as stop:
                if stop.code is None or isinstance(stop.code, int):
                    code = stop.code or 0
                else:  # sys.exit("message"): printed, exit code 1, as the interpreter does
                    print(stop.code, file=sys.stderr)
                    code = 1
            except Exception:  # what the interpreter would print for an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        warnings.filters[:] = saved_filters
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environ)
        torch.set_num_threads(saved_threads)
        torch.random.set_rng_state(saved_rng)
        for number, handler in saved_handlers.items():
            signal.signal(number, handler)
        threading.excepthook, sys.unraisablehook = saved_hooks
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def write_image(path: Path, array: np.ndarray, mode: str | None = None,
                palette: list[int] | None = None) -> Path:
    """Write an array as .npy, .pt (tensor) or any PIL format; `mode`/`palette` for PIL images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".pt":
        torch.save(torch.from_numpy(np.ascontiguousarray(array)), path)
    else:
        image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
        if palette is not None:
            image.putpalette(palette)
        image.save(path)
    return path


def disc_mask(height: int = HEIGHT, width: int = WIDTH, value: int = 1) -> np.ndarray:
    """uint8 HxW: `value` inside a disc, 0 outside."""
    yy, xx = np.mgrid[:height, :width]
    inside = (yy - height // 2) ** 2 + (xx - width // 2) ** 2 < (min(height, width) // 3) ** 2
    return (inside * value).astype(np.uint8)


def random_rgb(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# Even sides, for the data check and hostile-input tests.
CHECK_HEIGHT, CHECK_WIDTH = 32, 48


def noisy_rgb(seed: int, height: int = CHECK_HEIGHT, width: int = CHECK_WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_mask(height: int = CHECK_HEIGHT, width: int = CHECK_WIDTH) -> np.ndarray:
    """uint8 HxW: 1 in a box in the upper-left quarter, 0 elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4:height // 2, width // 4:width // 2] = 1
    return mask


@pytest.fixture
def carvana_folder(tmp_path: Path) -> Path:
    """imgs/car<i>_01.png (RGB) with masks/car<i>_01_mask.gif (palette 0/1), two pairs of 53x37."""
    for i in range(2):
        write_image(tmp_path / "imgs" / f"car{i}_01.png", random_rgb(i))
        write_image(tmp_path / "masks" / f"car{i}_01_mask.gif", disc_mask(), mode="P",
                    palette=[0, 0, 0, 255, 255, 255])
    return tmp_path


@pytest.fixture(scope="session")
def reference_layouts() -> dict:
    """{setting: {"constructor": {...}, "state_dict": {key: shape}}} in the classic U-Net's key order."""
    return json.loads((REPO / "tests" / "data" / "reference_state_dict.json").read_text())
