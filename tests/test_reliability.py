"""Nothing lost: a training process killed with SIGKILL mid-epoch and resumed reaches the same weights, bit for bit
(CPU, fp32); SIGTERM stops cleanly with last.pth saved; non-finite steps are skipped without changing anything."""

import csv
import io
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NARROW_UNET, disc_mask, random_rgb, run_script, write_image
from torch import nn

from utils.checkpoint import load_checkpoint
from utils.nan_guard import NonFiniteGuard

REPO = Path(__file__).resolve().parents[1]
# 8 images in batches of 2: 4 steps an epoch, 2 epochs; a loader worker.
FLAGS = ["--epochs", "2", "--batch-size", "2", "--scale", "1", "--validation", "0", "--workers", "1",
         "--precision", "fp32", "--augment", "none", "--log-every", "1", "--seed", "5", "--wandb", "disabled",
         "--learning-rate", "1e-3", *NARROW_UNET]
# Augmentation where the random state it draws from is what a test follows; elsewhere it only adds the ~4 s that
# importing torchvision costs each new process (and each worker not forked) on a 2-core CPU.
AUGMENTED = ["--augment", "light"]
SAVE_EVERY_STEP = ["--save-every", "1"]  # the runs that are killed: last.pth after every step
TOTAL_STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for i in range(8):
        write_image(folder / "imgs" / f"car{i}_01.png", random_rgb(i))
        write_image(folder / "masks" / f"car{i}_01_mask.png", disc_mask(value=1))
    return folder


def command(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "--imgs", str(data / "imgs"), "--masks", str(data / "masks"),
            "--checkpoint-dir", str(run), *FLAGS, *extra]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# train.py's command line in a real process that signals itself at a chosen point, so that where it dies is
# decided by the test, not by timing: argv is WHEN N, then train.py's flags.
#   mid-save N      SIGKILL with half of the checkpoint of step N written (its temporary file, before the rename)
#   after-save N    SIGKILL as soon as the checkpoint of step N is in place
#   sigterm-step N  SIGTERM to itself once the run's N-th training step has run, as `kill` or a scheduler sends it
#   group:SIGNAL:METHOD N  SIGNAL to its whole process group once step N has run (loader workers started by METHOD
#                   included), from another process, as Ctrl-C (SIGINT), torchrun or a batch scheduler (SIGTERM) do
#   wandb-start:SIGNAL 0  SIGNAL to itself as wandb starts (the run's log is made), before any step
SIGNALLING_TRAIN = """
import io, multiprocessing, os, signal, subprocess, sys
import torch
import train
from utils import checkpoint
from utils.errors import run_cli

when, number = sys.argv[1], int(sys.argv[2])
sys.argv = ["train.py", *sys.argv[3:]]
if when.startswith("group:"):
    multiprocessing.set_start_method(when.split(":")[2])

if when == "mid-save":
    real_save = torch.save
    def save(payload, file, *args, **kwargs):
        if payload.get("step") == number:
            buffer = io.BytesIO()
            real_save(payload, buffer)
            file.write(buffer.getvalue()[: buffer.tell() // 2])
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(payload, file, *args, **kwargs)
    checkpoint.torch.save = save
elif when.startswith("wandb-start:"):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a test runner's process may ignore it
    real_log = train.RunLog
    def starting_wandb(*args, **kwargs):
        signal.raise_signal(getattr(signal, when.split(":")[1]))
        return real_log(*args, **kwargs)
    train.RunLog = starting_wandb
elif when == "after-save":
    real_write = checkpoint.write_checkpoint
    def write(path, payload):
        real_write(path, payload)
        if payload.get("step") == number:
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.write_checkpoint = write
else:
    real_step, steps = train.train_step, []
    def train_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        steps.append(1)
        if len(steps) == number:
            if when.startswith("group:"):  # sent by another process, as by a terminal or torchrun: PyTorch's
                # worker handler ends a worker quietly when the sender is its parent, and dies of it otherwise
                subprocess.run(["kill", "-s", when.split(":")[1][3:], "--", f"-{os.getpgrp()}"], check=True,
                               start_new_session=True)  # kill itself outside the group it signals
            else:
                os.kill(os.getpid(), signal.SIGTERM)
        return result
    train.train_step = train_step
run_cli(train.main, train.get_args_parser())
"""


def killed_run(when: str, number: int, data: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    command_line = [sys.executable, "-c", SIGNALLING_TRAIN, when, str(number),
                    *command(data, run, *SAVE_EVERY_STEP, *extra)[2:]]
    return subprocess.run(command_line, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300,
                          start_new_session=True)  # a process group of its own, which group: may signal


def unfinished_saves(run: Path) -> list[str]:
    return sorted(path.name for path in run.glob(".*.tmp"))


def model_and_optimizer(path: Path) -> dict:
    checkpoint = load_checkpoint(path)
    return {"model": checkpoint["model"], "optimizer": checkpoint["optimizer"]["state"], "step": checkpoint["step"]}


@pytest.mark.slow
def test_sigkilled_twice_and_resumed_matches_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    """Killed once while writing a checkpoint and once between steps, at seeded points of the 8 steps (last.pth
    is written after every step), and resumed each time: the final weights and AdamW state are those of a run that
    was never interrupted (and saved at the ends of its epochs only), bit for bit, augmentation included."""
    # The runs that are not killed run in this process (conftest's one thread, as OMP_NUM_THREADS=1 gives the others):
    # a new process spends 3-4 s starting.
    straight = run_script(*command(data, tmp_path / "straight", *AUGMENTED)[1:], cwd=REPO)
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = model_and_optimizer(tmp_path / "straight" / "last.pth")
    assert expected["step"] == TOTAL_STEPS

    run, last = tmp_path / "killed", tmp_path / "killed" / "last.pth"
    chooser = random.Random(20261127)  # "random" points, the same in every CI run
    first = chooser.randint(2, 4)  # inside epoch 1
    result = killed_run("mid-save", first, data, run, *AUGMENTED)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert load_checkpoint(last)["step"] == first - 1  # the save in progress never replaced the one before
    assert len(unfinished_saves(run)) == 1

    second = chooser.randint(first + 1, TOTAL_STEPS - 2)
    result = killed_run("after-save", second, data, run, *AUGMENTED, "--resume", "auto")
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert "unfinished save of a run killed while writing it" in result.stderr
    assert unfinished_saves(run) == []
    assert load_checkpoint(last)["step"] == second

    result = run_script(*command(data, run, *SAVE_EVERY_STEP, *AUGMENTED, "--resume", "auto")[1:], cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "after its first" in result.stdout or second % 4 == 0  # resumed inside an epoch
    resumed = model_and_optimizer(last)
    assert resumed["step"] == TOTAL_STEPS
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for index, state in expected["optimizer"].items():
        for key, value in state.items():
            assert torch.equal(value, resumed["optimizer"][index][key]), (index, key)
    # and each epoch's train_loss covers all its batches, those before the kills too (saved with the position)
    losses = {name: [float(row["train_loss"]) for row in csv.DictReader(open(tmp_path / name / "metrics.csv"))]
              for name in ("straight", "killed")}
    assert len(losses["straight"]) == 2 and losses["killed"] == pytest.approx(losses["straight"], rel=1e-5)


def test_sigterm_stops_after_the_step_saves_and_says_how_to_resume(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = killed_run("sigterm-step", 3, data, run, "--save-every", "100")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert "SIGTERM received" in result.stderr and "--resume auto" in result.stdout
    checkpoint = load_checkpoint(run / "last.pth")
    assert checkpoint["step"] == 3  # the step under way was finished and saved; no later one ran
    assert checkpoint["epoch"] * 4 + checkpoint["epoch_batches"] == checkpoint["step"]


@pytest.mark.parametrize(("name", "start_method"), [("SIGINT", "fork"), ("SIGTERM", "fork"), ("SIGTERM", "forkserver")])
def test_a_signal_to_the_process_group_stops_cleanly_with_its_loader_worker(data: Path, tmp_path: Path, name: str,
                                                                             start_method: str) -> None:
    """The loader worker gets the signal too (Ctrl-C reaches the whole foreground group, torchrun and schedulers
    send SIGTERM to it): it leaves it to the main process, which says so once and saves. Before, a forked worker
    printed the main process's message again, and one killed by SIGTERM failed the step, so nothing was saved."""
    run = tmp_path / "run"
    result = killed_run(f"group:{name}:{start_method}", 3, data, run, "--save-every", "100")
    assert result.returncode == 128 + getattr(signal, name), result.stderr[-2000:]
    assert result.stderr.count(f"{name} received") == 1, result.stderr[-2000:]
    assert "--resume auto" in result.stdout
    assert load_checkpoint(run / "last.pth")["step"] == 3


# train.py with its frames kept alive to the end, as wandb keeps the traceback of a start that failed.
KEEPS_FRAMES = """
import sys
import train
from utils import run_log
from utils.errors import run_cli

kept = []
def start(self, config, mode, continues):
    kept.append(sys._getframe())  # and with it the frames of its callers, train() and its loader's iterator
run_log.RunLog._start_wandb = start
sys.argv = ["train.py", *sys.argv[1:]]
run_cli(train.main, train.get_args_parser())
"""


def test_a_run_whose_frames_outlive_it_still_exits(data: Path, tmp_path: Path) -> None:
    """Found by a review: with --wandb online and no network, the run trained, saved and never exited. The loader
    workers, kept alive through wandb's traceback, left multiprocessing's exit-time SIGTERM to the main process,
    which waited for them. The timeout only guards against that hang."""
    command_line = [sys.executable, "-c", KEEPS_FRAMES, *command(data, tmp_path / "run", "--wandb", "offline")[2:]]
    result = subprocess.run(command_line, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(tmp_path / "run" / "last.pth")["step"] == TOTAL_STEPS


def test_only_unfinished_checkpoint_saves_are_removed(tmp_path: Path) -> None:
    from utils.checkpoint import remove_unfinished_saves

    kept = ["last.pth", "best.pth", ".lock", "metrics.csv", ".notes.tmp", ".notes.txt.99.tmp", ".last.pth.tmp",
            "last.pth.12.tmp"]
    for name in kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".last.pth.4242.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".epoch_3.pth.7.tmp").write_bytes(b"")
    (tmp_path / ".training_curves.png.20471.tmp").write_bytes(b"")  # found by a concurrency review: left for good
    (tmp_path / ".metrics.csv.20471.tmp").write_bytes(b"ep")
    assert sorted(remove_unfinished_saves(tmp_path)) == [(".epoch_3.pth.7.tmp", 0), (".last.pth.4242.tmp", 17),
                                                        (".metrics.csv.20471.tmp", 2),
                                                        (".training_curves.png.20471.tmp", 0)]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(kept)
    assert remove_unfinished_saves(tmp_path / "not yet made") == []


def test_an_unfinished_save_beside_a_linked_checkpoint_s_target_is_removed_too(tmp_path: Path) -> None:
    """Found by a review: last.pth linking to another disk is saved beside its target, where a killed save's
    temporary file was never looked for; that folder's other files are not this run's."""
    from utils.checkpoint import remove_unfinished_saves

    store, run = tmp_path / "big_disk", tmp_path / "run"
    store.mkdir()
    run.mkdir()
    (store / "last.pth").write_bytes(b"x")
    (run / "last.pth").symlink_to(store / "last.pth")
    for name in (".last.pth.4242.tmp", ".other.pth.7.tmp"):
        (store / name).write_bytes(b"half a checkpoint")
    assert remove_unfinished_saves(run) == [(str(store / ".last.pth.4242.tmp"), 17)]
    assert sorted(path.name for path in store.iterdir()) == [".other.pth.7.tmp", "last.pth"]


@pytest.mark.parametrize("fused", [True, False])  # False: Apple MPS, whose AdamW has no fused kernel here
def test_a_non_finite_step_changes_nothing_and_is_counted(fused: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
    guard = NonFiniteGuard(model, optimizer, torch.device("cpu"))
    before = {name: value.clone() for name, value in model.state_dict().items()}

    def step(images: torch.Tensor) -> None:
        guard.before_forward()
        loss = model(images).mean()
        optimizer.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if guard.before_step(grad_norm):
            optimizer.step()
        guard.after_step()

    bad = torch.ones(2, 1, 8, 8)
    bad[0, 0, 3, 3] = float("nan")
    step(bad)
    step(bad)
    for name, value in model.state_dict().items():  # weights, BatchNorm statistics and its counter
        assert torch.equal(value, before[name]), name
    assert all(float(state["step"]) == 0 for state in optimizer.state.values())
    assert guard.counts() == (2, 2)
    step(torch.ones(2, 1, 8, 8))
    assert guard.counts() == (2, 0)
    assert not torch.equal(model[0].weight, before["0.weight"])  # a good step still trains


def test_non_finite_losses_stop_the_run_with_the_last_good_state(data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """From step 5 on every loss is NaN (as after a divergence): the steps are skipped, three in a row stop the
    run with one clear line, and last.pth holds exactly the state the last good step left (epoch_2.pth)."""
    import train
    from utils.errors import UserError

    calls = []

    def loss_that_breaks(*args, **kwargs):  # noqa: ANN002, ANN003
        calls.append(1)
        loss = train_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) > 4 else loss

    train_loss = train.segmentation_loss
    monkeypatch.setattr(train, "segmentation_loss", loss_that_breaks)
    flags = ["--imgs", str(data / "imgs"), "--masks", str(data / "masks"), "--checkpoint-dir", str(tmp_path),
             "--epochs", "4", "--batch-size", "4", "--scale", "1", "--validation", "0", "--workers", "0",
             "--precision", "fp32", "--max-bad-steps", "3", "--log-every", "100", "--keep-epochs",
             "--wandb", "disabled", *NARROW_UNET]
    # --log-every 100, more than the run's steps: before (found by a review) the count was read only at those
    # steps, and such a run ended with a NaN loss and exit code 0; on CPUs it is now read after every step
    with pytest.raises(UserError, match=r"stopped at epoch 4, step 7: 3 steps in a row had a non-finite loss") as stop:
        train.main(train.get_args_parser().parse_args(flags))
    assert f"Start a new run with a lower --learning-rate (from scratch, or from those weights: --load " \
        f"{tmp_path / 'last.pth'} --checkpoint-dir ANOTHER; a resumed run keeps its own rate)" in str(stop.value)
    good, last = load_checkpoint(tmp_path / "epoch_2.pth"), load_checkpoint(tmp_path / "last.pth")
    assert good["step"] == 4 and last["step"] == 7
    for name, value in good["model"].items():  # weights and BatchNorm statistics untouched by the bad steps
        assert torch.equal(value, last["model"][name]), name


def test_a_second_signal_stops_at_once() -> None:
    from utils.signals import GracefulStop

    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # a signal to its own process: the handler has run when kill returns
        assert stop.requested == "SIGTERM" and stop.exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_failed_save_warns_keeps_training_and_the_previous_file(data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capfd: pytest.CaptureFixture) -> None:
    """The disk is full for the second save only: a warning, training goes on, the next save succeeds."""
    import train
    from utils import checkpoint as checkpoint_module
    from utils.errors import UserError

    real_write, writes, kept_after_failure = checkpoint_module.write_checkpoint, [], []

    def disk_full_once(path, payload):  # noqa: ANN001
        writes.append(path)
        if len(writes) == 3:  # the next save: what the failed one left
            kept_after_failure.append(load_checkpoint(path)["epoch"])
        if len(writes) == 2:
            raise UserError(f"cannot write checkpoint {path} (No space left on device): free disk space or pick "
                            "another --checkpoint-dir")
        real_write(path, payload)

    monkeypatch.setattr(checkpoint_module, "write_checkpoint", disk_full_once)
    monkeypatch.setattr(train, "EPOCH_SAVE_GAP_S", 0)  # a save at every epoch's end, short as they are
    flags = ["--imgs", str(data / "imgs"), "--masks", str(data / "masks"), "--checkpoint-dir", str(tmp_path),
             "--epochs", "3", "--batch-size", "4", "--scale", "1", "--validation", "0", "--workers", "0",
             "--wandb", "disabled", *NARROW_UNET]
    result = train.main(train.get_args_parser().parse_args(flags))
    assert result["step"] == 6 and len(writes) == 3
    warning = "No space left on device): free disk space or pick another --checkpoint-dir; training goes on, " \
              "the previous last.pth is kept"
    assert warning in capfd.readouterr().err
    assert kept_after_failure == [1]  # the previous last.pth, still there once the failure was reported
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 3


@pytest.mark.parametrize(("text", "expected"), [("500", (500, None)), ("15m", (None, 15.0)), ("0.5m", (None, 0.5)),
                                                (None, (None, None)), ("0", (None, None)), ("0m", (None, None)),
                                                ("0.0m", (None, None))])
def test_save_every_takes_steps_or_minutes(text: str | None, expected: tuple) -> None:
    import train

    assert train.parse_save_every(text) == expected


@pytest.mark.parametrize("text", ["-3", "m", "10s", "ten", "0.0", "00", "nanm", "infm"])  # 0 (off): above
def test_save_every_refuses_anything_else(text: str) -> None:
    import train
    from utils.errors import UserError

    with pytest.raises(UserError, match="--save-every"):
        train.parse_save_every(text)


def in_process_flags(data: Path, run: Path, *extra: str) -> list[str]:
    return ["--imgs", str(data / "imgs"), "--masks", str(data / "masks"), "--checkpoint-dir", str(run),
            "--batch-size", "2", "--scale", "1", "--workers", "0", "--wandb", "disabled", "--precision", "fp32",
            "--seed", "5", *NARROW_UNET, *extra]


def test_a_new_run_does_not_replace_an_earlier_run_unless_told_to(data: Path, tmp_path: Path) -> None:
    """A forgotten --resume used to empty metrics.csv at once and replace last.pth and best.pth."""
    import train
    from utils.errors import UserError

    run = tmp_path / "run"
    flags = in_process_flags(data, run, "--epochs", "1", "--validation", "25")
    train.main(train.get_args_parser().parse_args(flags))
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    # best.pth of the last epoch is last.pth (a hard link): the same point, so it may go on without --overwrite
    again = train.main(train.get_args_parser().parse_args([*flags, "--resume", str(run / "best.pth")]))
    assert again["step"] == 3 and again["history"] == []  # accepted; its one epoch is done: nothing trained
    for missing, complaint in ((run / "epoch_9.pth", "checkpoint .*epoch_9.pth does not exist"),
                               (run, "--resume .*run is a folder: give a checkpoint file in it")):
        with pytest.raises(UserError, match=complaint):  # what is wrong with the file comes first
            train.main(train.get_args_parser().parse_args([*flags, "--resume", str(missing)]))
    with pytest.raises(UserError, match=r"--checkpoint-dir .*run already holds a run \(last.pth, best.pth, "
                                        r"metrics.csv\): continue it with --resume auto, give the new run another "
                                        "--checkpoint-dir, or pass --overwrite to replace it"):
        train.main(train.get_args_parser().parse_args(flags))
    (run / "last.pth").unlink()  # best.pth alone: --resume auto finds nothing to resume, and must not replace it
    before.pop("last.pth")
    with pytest.raises(UserError, match=r"continue it with --resume .*run/best.pth"):
        train.main(train.get_args_parser().parse_args([*flags, "--resume", "auto"]))
    other = tmp_path / "other"
    train.main(train.get_args_parser().parse_args(in_process_flags(data, other, "--epochs", "1", "--validation", "0")))
    with pytest.raises(UserError, match=r"already holds a run \(best.pth, metrics.csv\): give the run resumed from "
                                        r".*other/last.pth another --checkpoint-dir, or pass --overwrite"):
        train.main(train.get_args_parser().parse_args([*flags, "--resume", str(other / "last.pth"), "-e", "2"]))
    assert before == {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    # --overwrite: the earlier run's files go, also the best.pth a run without validation would never replace
    no_validation = [flag if flag != "25" else "0" for flag in flags]
    # ... but only once the new run has saved: one that fails first (here every image breaks after the data
    # check) puts them back; it used to leave an empty metrics.csv alone
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    real_check = train.check_dataset

    def check_then_break_every_image(*args, **kwargs):  # noqa: ANN002, ANN003
        found = real_check(*args, **kwargs)
        for path in (broken / "imgs").iterdir():
            path.write_bytes(b"not a PNG any more")
        return found

    kept = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "check_dataset", check_then_break_every_image)
        with pytest.raises(UserError, match="every training file failed to load this epoch"):
            train.main(train.get_args_parser().parse_args([*in_process_flags(broken, run, "--epochs", "1",
                                                                             "--validation", "0"), "--overwrite"]))
    assert kept == {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert not (run / ".earlier_run").exists()
    result = train.main(train.get_args_parser().parse_args([*no_validation, "--overwrite"]))
    assert result["step"] == 4 and load_checkpoint(run / "last.pth")["epoch"] == 1  # 8 images, batches of 2
    assert not (run / "best.pth").exists() and not (run / ".earlier_run").exists()


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stop_while_wandb_starts_puts_the_earlier_run_back(name: str, code: int, data: Path, tmp_path: Path) -> None:
    """Found by a review: Ctrl-C or SIGTERM in the seconds an --overwrite run's wandb takes to start (up to a minute
    online) left the earlier run's checkpoints hidden in .earlier_run, and predict.py found no best.pth."""
    from unet import UNet
    from utils.checkpoint import save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run / "last.pth", UNet(3, 2, base_channels=8), [0, 1], epoch=3)
    os.link(run / "last.pth", run / "best.pth")
    (run / "metrics.csv").write_text("epoch,step,train_loss\n1,4,0.5\n2,8,0.4\n3,12,0.3\n")
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    result = killed_run(f"wandb-start:{name}", 0, data, run, "--overwrite")
    assert result.returncode == code, result.stderr[-3000:]
    assert "the earlier run's best.pth, last.pth, metrics.csv put back" in result.stderr
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_a_validation_file_broken_during_the_run_is_left_out_of_the_scores(data: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capfd: pytest.CaptureFixture) -> None:
    """Training skips a file that breaks after the data check; validation stopped the run there, losing the epoch."""
    import train

    real_check = train.check_dataset

    def check_then_break_a_validation_mask(*args, **kwargs):  # noqa: ANN002, ANN003
        found = real_check(*args, **kwargs)
        _, validation = train.split_pairs(found.pairs, 25, 5)
        validation[0].mask.write_bytes(b"not a PNG any more")
        return found

    shutil.copytree(data, tmp_path / "data")
    monkeypatch.setattr(train, "check_dataset", check_then_break_a_validation_mask)
    result = train.main(train.get_args_parser().parse_args(
        in_process_flags(tmp_path / "data", tmp_path / "run", "--epochs", "1", "--validation", "25")))
    assert "warning: not scored: cannot read" in capfd.readouterr().err
    assert result["val_dice"] is not None  # the other validation image
    assert load_checkpoint(tmp_path / "run" / "last.pth")["epoch"] == 1


def test_masks_changed_after_the_data_check_are_skipped_and_the_run_goes_on(data: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capfd: pytest.CaptureFixture) -> None:
    """Found by a concurrency review: a mask another process resized (or gave a new value) during training stopped
    the run with exit 2 and lost the epoch's steps, while a deleted file was skipped."""
    import train

    real_check = train.check_dataset

    def check_then_change_two_masks(*args, **kwargs):  # noqa: ANN002, ANN003
        found = real_check(*args, **kwargs)
        training, _ = train.split_pairs(found.pairs, 0, 5)
        write_image(training[0].mask, disc_mask(value=1)[::2, ::2])  # another size
        write_image(training[1].mask, disc_mask(value=7))  # a value the run does not know
        return found

    shutil.copytree(data, tmp_path / "data")
    monkeypatch.setattr(train, "check_dataset", check_then_change_two_masks)
    result = train.main(train.get_args_parser().parse_args(
        in_process_flags(tmp_path / "data", tmp_path / "run", "--epochs", "1", "--validation", "0")))
    err = capfd.readouterr().err
    assert "resize each mask to its image" in err and "has the value 7, which is not among the mask values" in err
    assert result["step"] == 4 and load_checkpoint(tmp_path / "run" / "last.pth")["epoch"] == 1  # 8 images, batch 2
    with open(tmp_path / "run" / "metrics.csv", newline="") as file:
        assert [row["skipped"] for row in csv.DictReader(file)] == ["2"]


def test_an_epoch_with_no_validation_image_scored_logs_no_scores_and_counts_the_files(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    """Found by a review: metrics.csv read val_iou 0.0 (val_dice empty) and the epoch line did not count the files."""
    import train

    real_check = train.check_dataset

    def check_then_break_every_validation_mask(*args, **kwargs):  # noqa: ANN002, ANN003
        found = real_check(*args, **kwargs)
        for pair in train.split_pairs(found.pairs, 25, 5)[1]:
            pair.mask.write_bytes(b"not a PNG any more")
        return found

    shutil.copytree(data, tmp_path / "data")
    monkeypatch.setattr(train, "check_dataset", check_then_break_every_validation_mask)
    result = train.main(train.get_args_parser().parse_args(
        in_process_flags(tmp_path / "data", tmp_path / "run", "--epochs", "1", "--validation", "25")))
    assert result["val_dice"] is None
    row = next(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert (row["val_dice"], row["val_iou"], row["skipped"]) == ("", "", "2")  # the two validation files
    epoch_line = next(line for line in capfd.readouterr().out.splitlines() if line.startswith("epoch 1: train loss"))
    assert epoch_line.endswith(", 2 files skipped")


def test_a_validation_that_fails_keeps_the_epochs_training_and_a_resume_validates_it(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    import train

    flags = ["--epochs", "2", "--validation", "25", "--augment", "light"]
    train.main(train.get_args_parser().parse_args(in_process_flags(data, tmp_path / "straight", *flags)))
    real_evaluate, calls = train.evaluate, []

    def fails_in_epoch_2(*args, **kwargs):  # noqa: ANN002, ANN003
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of disk, or of memory, while validating")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", fails_in_epoch_2)
    run = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="while validating"):
        train.main(train.get_args_parser().parse_args(in_process_flags(data, run, *flags)))
    kept = load_checkpoint(run / "last.pth")
    assert (kept["epoch"], kept["epoch_batches"], kept["step"]) == (1, 3, 6)  # epoch 2's three steps are kept
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    older = tmp_path / "older"  # the same point saved before epoch_loss was kept
    shutil.copytree(run, older)
    without = torch.load(older / "last.pth", weights_only=True)
    del without["epoch_loss"]
    torch.save(without, older / "last.pth")
    result = train.main(train.get_args_parser().parse_args(in_process_flags(data, run, *flags, "--resume", "auto")))
    straight = load_checkpoint(tmp_path / "straight" / "last.pth")
    resumed = load_checkpoint(run / "last.pth")
    assert result["step"] == straight["step"] == 6 and resumed["val_dice"] == pytest.approx(straight["val_dice"])
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    rows = {name: list(csv.DictReader(open(tmp_path / name / "metrics.csv"))) for name in ("straight", "failed")}
    assert float(rows["failed"][1]["train_loss"]) == pytest.approx(float(rows["straight"][1]["train_loss"]))
    assert rows["failed"][1]["images_per_second"] == "" != rows["straight"][1]["images_per_second"]  # not timed
    capfd.readouterr()
    train.main(train.get_args_parser().parse_args(in_process_flags(data, older, *flags, "--resume", "auto")))
    assert f"note: {older / 'last.pth'} was saved without the loss of epoch 2's first 3 batches (before it was " \
           "kept): that epoch's train_loss covers the batches after the resume only" in capfd.readouterr().err


def test_a_signal_during_the_last_validation_completes_the_run_and_exits_with_the_signals_code(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    """Found by a review: it said "stopping after this step", then finished and exited 0, where a first signal
    exits 130/143 everywhere else (the README's word, and what a scheduler reads)."""
    import train

    real_evaluate, calls = train.evaluate, []

    def interrupted_in_epoch_2(*args, **kwargs):  # noqa: ANN002, ANN003
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # GracefulStop's handler: noted, acted on after the validation
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", interrupted_in_epoch_2)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train.main(train.get_args_parser().parse_args(in_process_flags(data, run, "--epochs", "2",
                                                                       "--validation", "25")))
    assert stop.value.code == 130 and len(calls) == 2
    printed = capfd.readouterr().out
    assert "SIGINT received during the last validation: the run completed and saved all it had" in printed
    saved = load_checkpoint(run / "last.pth")
    assert (saved["epoch"], saved["epoch_batches"], saved["val_dice"] is not None) == (2, 0, True)


def test_a_run_goes_on_from_its_own_earlier_checkpoints(data: Path, tmp_path: Path) -> None:
    """Going back to epoch_1.pth replaces the later last.pth: only with --overwrite, and then nothing else of the
    run is removed. Without last.pth, the latest epoch_N.pth is the one to continue from, in place."""
    import train
    from utils.errors import UserError

    run = tmp_path / "run"
    flags = in_process_flags(data, run, "--validation", "25", "--keep-epochs")
    train.main(train.get_args_parser().parse_args([*flags, "--epochs", "2"]))
    with pytest.raises(UserError, match=r"epoch_1.pth is an earlier point of the run in .*run: going on from it "
                                        "replaces its last.pth as it trains: pass --overwrite to go back to it"):
        train.main(train.get_args_parser().parse_args([*flags, "--epochs", "2", "--resume", str(run / "epoch_1.pth")]))
    with pytest.raises(UserError, match=r"epoch_1.pth is at epoch 1, and .*run holds epoch_2.pth of later epochs, "
                                        "which --keep-epochs would replace"):
        train.main(train.get_args_parser().parse_args([*flags, "--epochs", "2", "--resume", str(run / "epoch_1.pth"),
                                                       "--overwrite"]))
    later = (run / "epoch_2.pth").read_bytes()
    train.main(train.get_args_parser().parse_args([*flags, "--epochs", "2", "--resume", str(run / "epoch_1.pth"),
                                                   "--overwrite", "--no-keep-epochs"]))
    assert {path.name for path in run.glob("*.pth")} == {"last.pth", "best.pth", "epoch_1.pth", "epoch_2.pth"}
    assert (run / "epoch_2.pth").read_bytes() == later and load_checkpoint(run / "last.pth")["epoch"] == 2
    with open(run / "metrics.csv") as file:
        assert [row.split(",")[0] for row in file.read().splitlines()[1:]] == ["1", "2"]  # epoch 1's row kept
    (run / "last.pth").unlink()
    with pytest.raises(UserError, match=r"continue it with --resume .*run/epoch_2.pth"):
        train.main(train.get_args_parser().parse_args([*flags, "--epochs", "3", "--resume", "auto"]))
    result = train.main(train.get_args_parser().parse_args([*flags, "--epochs", "3", "--resume",
                                                            str(run / "epoch_2.pth")]))
    assert result["step"] == 9 and load_checkpoint(run / "last.pth")["epoch"] == 3


def test_under_torchrun_a_stop_is_agreed_after_every_cpu_step_and_at_each_epochs_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The processes sum their stop flags to stop after the same step. Only every --log-every steps, a CPU run went
    on for 10 steps of seconds each after Ctrl-C (torchrun kills its workers 30 s after its signal), and through
    whole epochs of fewer steps."""
    import argparse

    import train
    from utils.distributed import World
    from utils.signals import GracefulStop

    sums = []
    monkeypatch.setattr(train, "all_reduce_sum", lambda tensor, world: sums.append(float(tensor)) or tensor)
    stop = GracefulStop(announce=False)
    control = train.EpochControl(argparse.Namespace(save_every=None, log_every=10), World(rank=0, size=2), None,
                                 stop, lambda step, batches: None)
    cpu = torch.device("cpu")
    assert control.stop_requested(3, cpu, epoch_ends=False) is False and sums == [0.0]
    stop.requested = "SIGINT"
    assert control.stop_requested(4, cpu, epoch_ends=False) is True  # the very next step, not step 10
    assert control.stop_requested(7, cpu, epoch_ends=True) is True and sums == [0.0, 1.0, 1.0]


def test_a_ctrl_c_is_one_line_and_what_breaks_in_threads_after_it_prints_nothing(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: about one Ctrl-C of eight during predict.py printed, after "interrupted", a traceback of
    multiprocessing's file-descriptor handshake thread, whose loader worker had just stopped."""
    import argparse
    import threading

    from utils.errors import run_cli

    def interrupted_main(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["predict.py"])
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # put back after the test
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    with pytest.raises(SystemExit) as stop:
        run_cli(interrupted_main, argparse.ArgumentParser())
    assert stop.value.code == 130
    helper = threading.Thread(target=lambda: 1 / 0)
    helper.start()
    helper.join()
    assert capsys.readouterr().err == "interrupted\n"


def test_output_that_cannot_be_written_is_one_line_and_the_streams_are_put_back(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: `evaluate.py > log` on a full disk ended in a traceback from a print."""
    import argparse
    import errno

    from utils.errors import run_cli

    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def printing_main(args: argparse.Namespace) -> int:
        print("a table")
        return 0

    full = FullDisk()
    monkeypatch.setattr(sys, "argv", ["evaluate.py"])
    monkeypatch.setattr(sys, "stdout", full)
    with pytest.raises(SystemExit) as stop:
        run_cli(printing_main, argparse.ArgumentParser())
    assert stop.value.code == 2 and sys.stdout is full
    assert capsys.readouterr().err == ("error: cannot write to the standard output (No space left on device): free "
                                       "disk space where it is redirected, or redirect it elsewhere\n")


def test_an_error_of_a_loader_worker_is_said_without_its_class_name(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: a PixelLimitError re-raised by a DataLoader worker printed as
    "error: utils.data_loading.PixelLimitError: ..." (only "UserError: " was taken off)."""
    import argparse

    from utils.data_loading import PixelLimitError
    from utils.errors import run_cli

    def failing_main(args: argparse.Namespace) -> int:  # the message as torch's worker re-raise folds it
        raise PixelLimitError("Caught PixelLimitError in DataLoader worker process 0.\nOriginal Traceback (most "
                              "recent call last):\n  File \"x.py\", line 1\nutils.data_loading.PixelLimitError: "
                              "a.jpg declares 6,144 pixels: raise --max-image-pixels")

    monkeypatch.setattr(sys, "argv", ["evaluate.py"])
    with pytest.raises(SystemExit) as stop:
        run_cli(failing_main, argparse.ArgumentParser())
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: a.jpg declares 6,144 pixels: raise --max-image-pixels\n"


def test_a_loader_worker_drops_only_the_broken_handover_of_a_stopped_main_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The traceback above came from the worker's side of the handover (multiprocessing's "_serve" thread)."""
    import threading

    from utils.data_loading import _quiet_handover_breaks

    def broken() -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    printed: list[str] = []

    def record(args: threading.ExceptHookArgs) -> None:
        printed.append(args.thread.name)

    monkeypatch.setattr(threading, "excepthook", lambda args: _quiet_handover_breaks(args, default=record))
    for name in ("Thread-3 (_serve)", "Thread-4 (work)"):
        thread = threading.Thread(target=broken, name=name)
        thread.start()
        thread.join()
    assert printed == ["Thread-4 (work)"]


def test_best_pth_of_a_linked_last_pth_keeps_its_epoch(tmp_path: Path) -> None:
    """Found by a review: with last.pth a link to another disk, best.pth and each epoch_N.pth became hard links to
    the link itself, so every later save went through them too: best.pth always held the latest weights."""
    from utils.atomic_files import atomic_path
    from utils.checkpoint import copy_checkpoint

    store, run = tmp_path / "big_disk", tmp_path / "run"
    store.mkdir()
    run.mkdir()
    (run / "last.pth").symlink_to(store / "last.pth")
    with atomic_path(run / "last.pth") as tmp:
        tmp.write_bytes(b"epoch 1")
    copy_checkpoint(run / "last.pth", run / "best.pth")
    with atomic_path(run / "last.pth") as tmp:
        tmp.write_bytes(b"epoch 2")
    assert (run / "best.pth").read_bytes() == b"epoch 1" and not (run / "best.pth").is_symlink()
    assert (run / "last.pth").read_bytes() == b"epoch 2" and (run / "last.pth").is_symlink()


def test_a_worker_leaves_the_first_signal_to_the_main_process_and_stops_at_the_second() -> None:
    """The handler a loader worker installs: the first signal is the main process's to act on (it stops after its
    step and saves), the second ends the worker (PyTorch's worker loop takes KeyboardInterrupt as its end)."""
    from utils.signals import leave_first_signal_to_main

    before = signal.getsignal(signal.SIGUSR1)
    try:
        leave_first_signal_to_main((signal.SIGUSR1,))
        os.kill(os.getpid(), signal.SIGUSR1)  # Python runs the handler right after the call: nothing raised
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(1000):  # the handler runs between bytecodes, at the latest within this loop
                pass
    finally:
        signal.signal(signal.SIGUSR1, before)
