"""Where a training step's time goes: the model-only step of bench/train_speed.py, profiled kernel by kernel.

    python bench/step_profile.py --scale 0.5 --batch-size 16 --compile on     # on a GPU: what gpu_check.sh runs
    python bench/step_profile.py --scale 0.2 --batch-size 4 --device cpu      # on a CPU: aten operators instead

The question it answers (issue 4): can the model's own step reach 150 images/s at 640x959 on an H100, or do its
convolution kernels alone take longer than that allows? It times the step without the profiler, then records a
few steps with torch.profiler and sums the time of every GPU kernel (on a CPU: every aten operator's own time)
by kind: convolutions (cuDNN, CUTLASS, Triton templates), BatchNorm, kernels fused by torch.compile, layout
conversions, the optimizer, copies, other. The convolutions' FLOPs come from torch.utils.flop_counter on a meta
copy of the step, so their achieved TFLOP/s and the images/s the step would reach if nothing but the
convolutions ran are printed too. The last line is a Markdown table row for bench/README.md.
"""

import argparse
import gzip
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import at_least  # noqa: E402
from bench.train_speed import add_step_arguments, model_only_step, peak_memory, seconds_per_step  # noqa: E402
from unet import UNet  # noqa: E402
from utils.device import choose_precision  # noqa: E402
from utils.dice_score import segmentation_loss  # noqa: E402
from utils.errors import run_cli  # noqa: E402

CONVOLUTIONS = "convolutions"
# First match wins: a Triton kernel named after a fused BatchNorm is the compiler's, a cuDNN BatchNorm kernel is
# not a convolution although cuDNN runs both.
KERNEL_KINDS: tuple[tuple[str, str], ...] = (
    (CONVOLUTIONS, r"triton_tem"),  # convolution/matmul templates (max-autotune)
    # Triton kernels on GPUs; on CPUs, the compiled graph's own time (its C++ kernels; its name holds a hash)
    ("fused by torch.compile", r"triton|compiledfxgraph|cpp_fused"),
    ("layout conversions", r"nchwtonhwc|nhwctonchw"),
    ("optimizer", r"adam|multi_tensor"),
    ("BatchNorm", r"batch_?norm|bn_(fw|bw)"),
    (CONVOLUTIONS, r"xmma|gemm|implicit_convolve|cutlass|wgrad|dgrad|fprop|conv|splitk|winograd|cudnn_generated"),
    ("copies and fills", r"memcpy|memset|copy|\bcat\b|catarray|fill|_pad|\bpad|clone|zero_"),
)
OTHER = "other elementwise and reductions"


def kernel_kind(name: str) -> str:
    """The kind of a GPU kernel or CPU operator, by its name."""
    lowered = name.lower()
    for kind, pattern in KERNEL_KINDS:
        if re.search(pattern, lowered):
            return kind
    return OTHER


def time_by_kind(timings: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Sum (name, microseconds) pairs by kind."""
    totals: dict[str, float] = defaultdict(float)
    for name, microseconds in timings:
        totals[kernel_kind(name)] += microseconds
    return dict(totals)


def recorded_timings(prof: profile, device: torch.device) -> list[tuple[str, float]]:
    """GPU kernels' times on CUDA; on a CPU, each operator's own time (its children's excluded)."""
    if device.type == "cuda":
        return [(event.name, event.time_range.elapsed_us()) for event in prof.events()
                if event.device_type == DeviceType.CUDA]
    return [(event.name, event.self_cpu_time_total) for event in prof.events() if event.device_type == DeviceType.CPU]


def convolution_flops_per_image(args: argparse.Namespace) -> float:
    """FLOPs of one image's forward and backward pass (convolutions: all the model's matrix work), counted on meta
    tensors: shapes only, no memory and no compute."""
    height, width = int(args.height * args.scale), int(args.width * args.scale)
    model = UNet(3, 2, base_channels=args.base_channels).to("meta")
    images = torch.empty(1, 3, height, width, device="meta")
    masks = torch.zeros(1, height, width, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        segmentation_loss(model(images), masks).backward()
    return float(counter.get_total_flops())


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's dense matrix rate in the step's compute dtype, measured: a large square matmul, the most a
    convolution can hope for. fp32 on CUDA uses TF32 where cuDNN's convolutions do (PyTorch's default)."""
    size, repeats = (8192, 20) if device.type == "cuda" else (4096, 3)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        a @ b  # warm-up: library loading, kernel choice
        seconds = seconds_per_step(lambda: a @ b, device, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * size**3 / seconds / 1e12


def write_trace(prof: profile, path: Path) -> None:
    """The Chrome trace (chrome://tracing, ui.perfetto.dev), gzip-compressed when the name ends in .gz: a
    compiled GPU step's trace can be tens of MB of JSON, more than a lent GPU machine sends back."""
    if path.suffix != ".gz":
        prof.export_chrome_trace(str(path))
        return
    plain = path.with_suffix("")
    prof.export_chrome_trace(str(plain))
    with open(plain, "rb") as source, gzip.open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    plain.unlink()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Time of the model-only training step by kind of kernel.")
    parser.add_argument("--warmup", type=at_least(0), default=3,
                        help="untimed steps first (compilation, cuDNN's algorithm search; default: %(default)s)")
    parser.add_argument("--steps", type=at_least(1), default=5,
                        help="steps timed without the profiler (default: %(default)s)")
    parser.add_argument("--profiled-steps", type=at_least(1), default=2, help="steps recorded (default: %(default)s)")
    parser.add_argument("--top", type=at_least(1), default=12,
                        help="longest kernels listed by name (default: %(default)s)")
    parser.add_argument("--trace", type=Path, default=None, metavar="FILE",
                        help="also write a Chrome trace of the profiled steps (gzip-compressed if FILE ends in .gz)")
    add_step_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> None:

    step, device, batch = model_only_step(args)
    for _ in range(args.warmup):
        step()
    step_seconds = seconds_per_step(step, device, args.steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        profiled_seconds = seconds_per_step(step, device, args.profiled_steps)
    if args.trace:
        write_trace(prof, args.trace)

    timings = recorded_timings(prof, device)
    by_kind = time_by_kind(timings)
    recorded_ms = sum(by_kind.values()) / 1000 / args.profiled_steps
    flops = convolution_flops_per_image(args) * batch
    conv_seconds = by_kind.get(CONVOLUTIONS, 0.0) / 1e6 / args.profiled_steps
    unit = "kernel" if device.type == "cuda" else "operator"  # on a CPU, each operator's own time

    per_name: dict[str, float] = defaultdict(float)
    for name, microseconds in timings:
        per_name[name] += microseconds
    print(f"longest {args.top} of {len(per_name)} {unit} names, ms per step:")
    for name, microseconds in sorted(per_name.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {microseconds / 1000 / args.profiled_steps:9.2f}  {kernel_kind(name)[:12]:12}  {name[:110]}")
    print(f"\n| {unit} kind | ms per step | share |")
    print("|---|---|---|")
    for kind, microseconds in sorted(by_kind.items(), key=lambda item: -item[1]):
        ms = microseconds / 1000 / args.profiled_steps
        print(f"| {kind} | {ms:.2f} | {ms / recorded_ms:.1%} |")
    print(f"\nstep: {step_seconds * 1000:.1f} ms for {batch} images = {batch / step_seconds:.3g} images/s "
          f"(profiled: {profiled_seconds * 1000:.1f} ms, {unit} time recorded: {recorded_ms:.1f} ms)")
    print(f"FLOPs (convolutions, forward + backward): {flops / batch / 1e12:.3f} TFLOP per image")
    profiled = "model only, profiled"
    if conv_seconds > 0:
        conv_only = (f"convolutions {conv_seconds * 1000:.1f} ms per step = {batch / conv_seconds:.3g} images/s "
                     f"at {flops / conv_seconds / 1e12:.2f} TFLOP/s, {conv_seconds * 1000 / recorded_ms:.0%} "
                     f"of {unit} time")
        print(f"{conv_only}: the step's images/s if nothing but the convolutions took time")
        dtype = choose_precision(device, args.amp, args.precision).dtype or torch.float32
        rate = matmul_tflops(device, dtype)
        print(f"a {str(dtype).removeprefix('torch.')} matmul on this device: {rate:.2f} TFLOP/s; the convolutions "
              f"reach {flops / conv_seconds / 1e12 / rate:.0%} of it")
        profiled += f": {conv_only}"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    mode = f" ({args.compile_mode})" if args.compile_mode else ""
    settings = (f"{int(args.width * args.scale)}x{int(args.height * args.scale)}, batch {batch}, precision "
                f"{args.precision}{' --amp' if args.amp else ''}, compile {args.compile}{mode}")
    print(f"| {profiled} | {name} | {settings} | {batch / step_seconds:.3g} | - | {peak_memory(device)} | "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')} |")

if __name__ == "__main__":
    run_cli(main, get_args_parser())
