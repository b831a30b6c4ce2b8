"""The cost of safe checkpoints: the atomic save against a plain torch.save, the checked load against an unsafe one.

    python bench/checkpoint_cost.py                      # 7 repeats, files in a temporary folder under ./
    python bench/checkpoint_cost.py --dir /mnt/ckpt      # the disk your --checkpoint-dir is on

The payload is what train.py writes each epoch for the full-size U-Net (3 channels, 2 classes, transposed
convolutions: 31M parameters) with AdamW's two moments per parameter, after one optimizer step on a tiny input
so that the state exists: ~370 MB. Saving: write_checkpoint (temporary file, flush + fsync, rename) against
torch.save onto the same path (returns once the bytes are in the page cache). Loading: load_checkpoint
(weights_only=True, then keys, shapes, dtypes and non-finite values checked) against torch.load(weights_only=False).
os.sync() runs before each timing so that one measurement's dirty pages are not flushed in the next one's time.
Prints the medians (with the range of the saves: an fsync may wait on the disk) and a Markdown row for
bench/README.md.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import at_least  # noqa: E402
from unet import UNet  # noqa: E402
from utils.checkpoint import checkpoint_payload, load_checkpoint, rng_state, write_checkpoint  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=at_least(1), default=7, help="timings per variant; the median is reported")
    parser.add_argument("--dir", type=Path, default=Path("."), help="where the temporary checkpoint folder goes")
    return parser


def training_payload() -> dict:
    """train.py's per-epoch checkpoint for the full-size U-Net, AdamW state included."""
    torch.manual_seed(0)
    model = UNet(n_channels=3, n_classes=2, bilinear=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    model(torch.rand(2, 3, 32, 32)).sum().backward()  # batch 2: BatchNorm needs >1 value per channel
    optimizer.step()
    scheduler.step()
    return checkpoint_payload(model, [0, 1], scale=0.5, args={"epochs": 5}, optimizer=optimizer.state_dict(),
                              scheduler=scheduler.state_dict(), scaler=torch.amp.GradScaler("cpu").state_dict(),
                              epoch=1, step=1, best_dice=0.5, val_dice=0.5, rng=rng_state())


def timings(actions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per action, the actions interleaved so that a busy moment on the machine hits all of them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):
        for name, action in actions.items():
            os.sync()
            started = time.perf_counter()
            action()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def file_system(folder: Path) -> str:
    """The type of the file system holding folder (from /proc/mounts: the longest mount point above it)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    target = str(folder.resolve())
    best = max((m for m in mounts if target == m[0] or target.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=["", "unknown"])
    return best[1]


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    payload = training_payload()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="checkpoint_cost_") as folder:
        atomic, plain = Path(folder) / "last.pth", Path(folder) / "plain.pth"
        write_checkpoint(atomic, payload)  # warm-up, and a previous version to replace, as each epoch does
        torch.save(payload, plain)
        size_mb = atomic.stat().st_size / 1e6
        seconds = timings({
            "write_checkpoint (atomic)": lambda: write_checkpoint(atomic, payload),
            "torch.save": lambda: torch.save(payload, plain),
            "load_checkpoint (checked)": lambda: load_checkpoint(atomic),
            "torch.load unsafe": lambda: torch.load(plain, weights_only=False),
        }, args.repeats)
        fs = file_system(Path(folder))
    print(f"payload {size_mb:.0f} MB on {fs}, {args.repeats} repeats (seconds):")
    for name, times in seconds.items():
        print(f"  {name:26s} median {statistics.median(times):.3f}  all {', '.join(f'{t:.3f}' for t in times)}")
    save_atomic, save_plain, load_safe, load_unsafe = (statistics.median(times) for times in seconds.values())
    today = datetime.date.today().isoformat()
    command = "python bench/checkpoint_cost.py" + (f" --repeats {args.repeats}" if args.repeats != 7 else "")
    print("\n| machine | torch | date | file system | payload MB | torch.save s | write_checkpoint s | save overhead "
          "| torch.load unsafe s | load_checkpoint s | load overhead | command |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    spread = {name: f"{min(times):.2f}-{max(times):.2f}" for name, times in seconds.items()}
    print(f"| {machine()} | {torch.__version__} | {today} | {fs} | {size_mb:.0f} | {save_plain:.3f} "
          f"({spread['torch.save']}) | {save_atomic:.3f} ({spread['write_checkpoint (atomic)']}) | "
          f"{save_atomic - save_plain:+.3f} s ({save_atomic / save_plain:.2f}x) | "
          f"{load_unsafe:.3f} | {load_safe:.3f} | {load_safe - load_unsafe:+.3f} s | `{command}` |")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
