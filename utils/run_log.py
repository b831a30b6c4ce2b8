"""What a training run reports: wandb (offline unless a key is set), metrics.csv and a curve PNG.

wandb is optional: any failure to start it is reported in one line and the run goes on without it.
"""

import contextlib
import csv
import io
import logging
import netrc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .atomic_files import atomic_path
from .errors import UserError
from .plotting import save_training_curves

METRICS_CSV, CURVES_PNG = "metrics.csv", "training_curves.png"  # written into the run's --checkpoint-dir

CSV_FIELDS = ("epoch", "step", "train_loss", "val_dice", "val_iou", "lr", "skipped", "seconds", "images_per_second",
              "data_wait")
WHOLE_FIELDS = ("epoch", "step", "skipped")  # the other fields are floats
WANDB_MODES = ("online", "offline", "disabled")


def _logged_row(row: dict[str, str]) -> dict[str, Any]:
    """A metrics.csv row as the loop logged it: numbers, "" where the column was empty (or unreadable), so that a
    resumed run's history (train.main's result, the curves) holds the same types as one never stopped."""
    typed: dict[str, Any] = {}
    for key in CSV_FIELDS:
        try:
            typed[key] = int(row[key]) if key in WHOLE_FIELDS else float(row[key])
        except (KeyError, TypeError, ValueError):
            typed[key] = ""
    return typed
WANDB_OWN_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what wandb takes in WANDB_MODE


def check_wandb_environment() -> None:
    """wandb reads WANDB_MODE itself, even where a mode is passed to it, and refuses to start on a value it does
    not know (an empty one too): said before training, not as a warning that the run goes on unlogged."""
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and mode not in WANDB_OWN_MODES:
        raise UserError(f"the environment variable WANDB_MODE is {mode!r}, which wandb refuses: set it to one of "
                        f"{', '.join(WANDB_MODES)}, or unset it (--wandb chooses the mode too)")


def default_wandb_mode() -> str:
    """WANDB_MODE when the user set it (wandb's own variable, e.g. disabled); else online when the user has a key
    (WANDB_API_KEY, or the ~/.netrc entry `wandb login` writes); else offline: the run is written locally, to be
    synced by hand later. Never a login prompt."""
    mode = os.environ.get("WANDB_MODE", "")  # as wandb reads it: exactly (check_wandb_environment)
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)  # wandb's older names
    if mode in WANDB_MODES:
        return mode
    if not mode and os.environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        return "disabled"  # older wandb's switch, which other tools (Hugging Face's Trainer) still document
    return "online" if os.environ.get("WANDB_API_KEY") or _logged_in_with_netrc() else "offline"


def _logged_in_with_netrc() -> bool:
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return bool(host and netrc.netrc(os.environ.get("NETRC")).authenticators(host))
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc (the usual case), or one that cannot be read
        return False


class RunLog:
    def __init__(self, run_dir: Path, config: dict[str, Any], wandb_mode: str, start_epoch: int = 1,
                 continues: str | None = None):
        """continues: the wandb run id of the run being resumed (from its checkpoint), to log on into it."""
        self.run_dir = run_dir
        self.csv_path = run_dir / METRICS_CSV
        self.curve_path = run_dir / CURVES_PNG
        self.rows = self._previous_rows(start_epoch)
        self._write_csv()
        self.wandb_run = None
        self._excepthook = sys.excepthook  # wandb.init replaces it, and its finish() does not give it back
        if wandb_mode != "disabled":
            self.wandb_run = self._start_wandb(config, wandb_mode, continues)

    @property
    def wandb_id(self) -> str | None:
        """The wandb run's id, for the checkpoint: a resume logs on into the same run."""
        return getattr(self.wandb_run, "id", None)

    def _previous_rows(self, start_epoch: int) -> list[dict]:
        # On resume keep the epochs already done; a fresh run starts a fresh file.
        if start_epoch <= 1 or not self.csv_path.exists():
            return []
        with open(self.csv_path, newline="") as file:
            rows = [_logged_row(row) for row in csv.DictReader(file)]
        return [row for row in rows if isinstance(row["epoch"], int) and row["epoch"] < start_epoch]

    def _start_wandb(self, config: dict[str, Any], mode: str, continues: str | None) -> Any:
        """Online, a resumed run logs on into its own wandb run (its id, resume="allow"). wandb cannot resume an
        offline run (syncing a second one of the same id replaces the first): offline, a resume is a new run whose
        config names the one it continues."""
        run_id = continues if mode == "online" else None
        if continues and mode != "online":
            config = {**config, "continues_wandb_run": continues}
        folder = str(self.run_dir.resolve())
        if not _utf8(folder):  # wandb writes its files there, and cannot name them: it would fail, in many lines
            print(f"warning: wandb cannot write in {_shown(folder)}, whose name is not UTF-8; continuing without it "
                  "(rename the folder to log with wandb)", file=sys.stderr)
            return None
        try:
            import wandb

            return wandb.init(
                # Absolute: a process started from one already running wandb (a notebook, a test) inherits its
                # WANDB_SERVICE, and that service would resolve a relative folder against its own directory.
                project="U-Net", config=_shown(config), mode=mode, dir=folder, id=run_id,
                resume="allow", settings=wandb.Settings(init_timeout=60, silent=True),
            )
        except Exception as error:  # noqa: BLE001 - logging must never stop training
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"warning: wandb did not start ({first_line}); continuing without it", file=sys.stderr)
            return None

    def _wandb_log(self, make_record: Callable[[], dict[str, Any]]) -> None:
        if self.wandb_run is None:
            return
        try:
            self.wandb_run.log(make_record())
        except Exception as error:  # noqa: BLE001 - logging must never stop training
            tqdm.write(f"warning: wandb logging failed ({error}); continuing without it", file=sys.stderr)
            _stop_quietly(self.wandb_run)  # (tqdm.write: on a line of its own, not glued to the progress bar)
            self.wandb_run = None
            self._give_back_excepthook()

    def log_step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        self._wandb_log(lambda: {"train loss": loss, "learning rate": lr, "step": step, "epoch": epoch})

    def log_epoch(self, row: dict, model: nn.Module | None = None, sample: dict | None = None) -> None:
        """One row per epoch in metrics.csv and the curve PNG; wandb also gets images and histograms."""
        self.rows.append({key: row.get(key, "") for key in CSV_FIELDS})
        self._write_csv()
        try:
            save_training_curves(self.rows, self.curve_path)
        except OSError as error:
            _warn_unwritten(self.curve_path, error)
        self._wandb_log(lambda: _wandb_record(row, model, sample))

    def _write_csv(self) -> None:
        """The whole file each time (atomically): a write that failed (a full disk) is made good by the next."""
        try:
            with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
                writer.writeheader()
                writer.writerows(self.rows)
        except OSError as error:
            _warn_unwritten(self.csv_path, error)

    def close(self, exit_code: int = 0) -> None:
        """exit_code: the process's, recorded by wandb (a run stopped by a signal or an error is not a clean one)."""
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish(exit_code=exit_code)
            except Exception as error:  # noqa: BLE001 - a failed upload must not fail a finished run
                print(f"warning: wandb did not finish cleanly ({error})", file=sys.stderr)
            self._give_back_excepthook()

    def _give_back_excepthook(self) -> None:
        """A notebook that runs train.main() keeps its own exception hook afterwards; one set since is left."""
        if getattr(sys.excepthook, "__module__", "").startswith("wandb"):
            sys.excepthook = self._excepthook


def _stop_quietly(run: Any) -> None:
    """A run whose logging failed (a full disk): ended now, wandb's own errors kept off the console. Left running,
    its service failed again at the process's exit, in some 200 lines of tracebacks after the run's last line."""
    import wandb

    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)
            with contextlib.suppress(Exception):
                wandb.teardown(exit_code=1)
    finally:
        logging.disable(logging.NOTSET)


def _warn_unwritten(path: Path, error: OSError) -> None:
    """A log file that cannot be written (a full disk) must not stop training: the checkpoints say the same."""
    print(f"warning: could not write {path} ({error.strerror or error}); training goes on", file=sys.stderr)


def _wandb_record(row: dict, model: nn.Module | None, sample: dict | None) -> dict[str, Any]:
    """What the reference logged each validation round: Dice, an image with true and predicted masks, histograms."""
    import wandb

    record = {"validation Dice": row.get("val_dice"), "step": row["step"], "epoch": row["epoch"]}
    if sample is not None:
        pixels = torch.nan_to_num(sample["image"].float(), nan=0.0).clamp(0, 1)  # a NaN cast to uint8 is undefined
        image = (pixels * 255).byte().permute(1, 2, 0).squeeze(-1).numpy()
        top = max(int(sample["true"].max()), int(sample["pred"].max()), 1)
        visible = {key: (sample[key].float() * (255 / top)).byte().numpy() for key in ("true", "pred")}
        record["images"] = wandb.Image(image)
        record["masks"] = {"true": wandb.Image(visible["true"]), "pred": wandb.Image(visible["pred"])}
    if model is not None:
        record.update(_histograms(model, wandb))
    return record


def _histograms(model: nn.Module, wandb: Any) -> dict[str, Any]:
    """Weight and gradient histograms of the finite values; NaN/Inf (a diverged run) are left out."""
    histograms = {}
    for name, parameter in model.named_parameters():
        tag = name.replace(".", "/")
        for kind, tensor in (("Weights", parameter.detach()), ("Gradients", parameter.grad)):
            if tensor is None:
                continue
            values = tensor.detach().flatten().cpu().double()
            values = values[torch.isfinite(values)].numpy()
            if values.size:
                histograms[f"{kind}/{tag}"] = wandb.Histogram(np_histogram=finite_histogram(values))
    return histograms


def finite_histogram(values: np.ndarray, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """np.histogram that never refuses finite values: float64 bin edges (a float32 range like -3e38..3e38 or
    0..1e-45 has no finite bin width) and a range widened around a constant (numpy's +-0.5 vanishes at 1e17)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        pad = max(abs(low) * 1e-3, 0.5)
        low, high = low - pad, high + pad
    return np.histogram(values, bins=bins, range=(low, high))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a file name's bytes that are not UTF-8, kept by Python as surrogates
        return False


def _shown(value: Any) -> Any:
    """Strings (nested in dicts and lists too) with names that are not UTF-8 shown with U+FFFD, as wandb needs."""
    if isinstance(value, str) and not _utf8(value):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {key: _shown(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shown(item) for item in value]
    return value
