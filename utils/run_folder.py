"""What a training run leaves in its --checkpoint-dir, and when another run may write there: a forgotten --resume
must never replace a run's checkpoints."""

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import UserError
from .run_log import CURVES_PNG, METRICS_CSV


def resume_path(resume: str | None, checkpoint_dir: Path) -> Path | None:
    """The file --resume names; for auto, CHECKPOINT_DIR/last.pth if there is one."""
    if resume is None:
        return None
    if resume == "auto":
        path = checkpoint_dir / "last.pth"
        return path if path.exists() else None
    return Path(resume)


def epoch_number(path: Path) -> int:
    """N of epoch_N.pth (-1 for another name)."""
    number = path.stem.removeprefix("epoch_")
    return int(number) if number.isdigit() else -1


def earlier_run_files(folder: Path) -> list[str]:
    """What a run leaves in its folder that another run there would replace: checkpoints, and a metrics.csv with
    epochs in it (a run whose checkpoints were moved elsewhere), latest epoch_N.pth first."""
    found = [name for name in ("last.pth", "best.pth") if (folder / name).is_file()]
    found += [path.name for path in sorted(folder.glob("epoch_*.pth"), key=epoch_number, reverse=True)]
    metrics = folder / METRICS_CSV
    if metrics.is_file() and len(metrics.read_text(errors="replace").splitlines()) > 1:
        found.append(metrics.name)
    return found


def check_run_folder(folder: Path, resume_file: Path | None, overwrite: bool) -> bool:
    """Whether this run replaces another one's files in `folder`, refused without --overwrite.

    A new run, or one resumed from a file elsewhere, writes last.pth, best.pth and metrics.csv from its first epoch
    on. Resuming a file of the folder's own run continues that run in place, unless the file is an earlier point
    than the folder's last.pth: going on from it would replace the later one.
    """
    # the file's own folder, not that of the file a link (last.pth kept on another disk) leads to
    replaces_a_run = resume_file is None or resume_file.parent.resolve() != folder.resolve()
    if overwrite:
        return replaces_a_run
    if replaces_a_run:
        _check_no_earlier_run(folder, resume_file)
        return True
    own_last = folder / "last.pth"
    # best.pth of the last epoch is a hard link to last.pth: the same point, not an earlier one
    if own_last.exists() and not os.path.samefile(resume_file, own_last):
        raise UserError(f"{resume_file} is an earlier point of the run in {folder}: going on from it replaces its "
                        "last.pth as it trains: pass --overwrite to go back to it, or give --checkpoint-dir another "
                        "folder")
    return False


def check_later_epochs_kept(folder: Path, resume_file: Path, epochs_done: int) -> None:
    """A run going on in its folder with --keep-epochs writes epoch_N.pth for each epoch after epochs_done: where
    such files exist (the run went further before, and this one goes back), they are the only copies of the epochs
    this run abandons, which --overwrite (consent to replace last.pth) does not cover."""
    later = sorted((path for path in folder.glob("epoch_*.pth") if epoch_number(path) > epochs_done), key=epoch_number)
    if later:
        names = ", ".join(path.name for path in later[:3]) + (", ..." if len(later) > 3 else "")
        raise UserError(f"{resume_file} is at epoch {epochs_done}, and {folder} holds {names} of later epochs, which "
                        "--keep-epochs would replace as this run reaches them: move them elsewhere to keep them, "
                        "pass --no-keep-epochs, or give --checkpoint-dir another folder")


def _check_no_earlier_run(folder: Path, starting_from: Path | None) -> None:
    found = earlier_run_files(folder)
    if not found:
        return
    shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    latest = next((name for name in found if name.startswith("epoch_")), "best.pth" if "best.pth" in found else None)
    resume = "--resume auto" if "last.pth" in found else f"--resume {folder / latest}" if latest else None
    other = ("give the new run another --checkpoint-dir" if starting_from is None
             else f"give the run resumed from {starting_from} another --checkpoint-dir")
    raise UserError(f"--checkpoint-dir {folder} already holds a run ({shown}): "
                    + (f"continue it with {resume}, " if resume and starting_from is None else "")
                    + f"{other}, or pass --overwrite to replace it")


SET_ASIDE = ".earlier_run"  # inside --checkpoint-dir: an earlier run's files while a new one replaces them


def set_aside_earlier_run(folder: Path, say: Callable[..., None]) -> Path | None:
    """--overwrite: the earlier run's files move into folder/.earlier_run, so that none of them (a best.pth this
    run may never write, its epoch_N.pth) is taken for this run's, and nothing is lost if this run ends before its
    first last.pth (settle_earlier_run then puts them back). Only for a run that check_run_folder says replaces
    one: a run resumed from its own folder moves nothing. Returns the holding folder, or None when empty."""
    found = earlier_run_files(folder) + ([CURVES_PNG] if (folder / CURVES_PNG).exists() else [])
    if not found:
        return None
    holding = folder / SET_ASIDE  # train.py settles one left by a killed run before it gets here
    holding.mkdir(exist_ok=True)
    for name in found:
        os.replace(folder / name, holding / name)
    say(f"--overwrite: the earlier run's {', '.join(found)} moved to {holding}, deleted once this run has saved "
        "its first last.pth", file=sys.stderr)
    return holding


def settle_earlier_run(folder: Path, say: Callable[..., None]) -> None:
    """The earlier run's set-aside files are deleted once this run's last.pth exists, else (the new run failed or
    was killed before its first save) put back in place of the new run's metrics.csv and curves."""
    holding = folder / SET_ASIDE
    if not holding.is_dir():
        return
    if (folder / "last.pth").exists():
        shutil.rmtree(holding)
        return
    names = sorted(path.name for path in holding.iterdir())
    for name in names:
        os.replace(holding / name, folder / name)
    holding.rmdir()
    say(f"the earlier run's {', '.join(names)} put back in {folder}: the --overwrite run that replaced it saved "
        "nothing", file=sys.stderr)
