"""Device, precision and CPU runtime settings, decided once per run and used by train, evaluate and predict."""

import argparse
import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_MIN_IMAGES = 1000  # predict.py --compile auto: fewer images run eagerly (should_compile)
# train.py --compile auto: fewer training images (epochs x images) run eagerly. On an H100 compiling made the first
# epoch ~42 s longer and the others 15% faster (46.3 -> 53.3 images/s): it pays from ~15,000 images on.
COMPILE_MIN_TRAINING_IMAGES = 15000
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters
GLIBC_DEFAULTS = ((M_MMAP_MAX, 65536), (M_TRIM_THRESHOLD, 128 * 1024))  # as mallopt(3) documents them


def sum_dtype(device: torch.device) -> torch.dtype:
    """The float type for sums that should not drift: float64, but for Apple's GPU (MPS), which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def mps_available() -> bool:
    """Apple's GPU backend, where this torch build has it."""
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


@contextlib.contextmanager
def float32_default() -> Iterator[None]:
    """The run's tensors float32 (the models, the loss's sums, the logits), whatever torch.set_default_dtype a
    notebook chose before calling a script's main(); its default comes back afterwards."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def choose_device(requested: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else MPS, else CPU."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise UserError(f"--device {requested!r} is not a device: use cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda", "mps"):
            raise UserError(f"--device {requested} is not supported here: use cpu, cuda or cuda:N (mps on Apple "
                            "silicon)")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {requested} asked for CUDA, but no CUDA GPU is visible: use --device cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                            f"numbered from 0: use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if device.type == "mps" and not mps_available():
            raise UserError(f"--device {requested} asked for Apple's MPS, which this machine does not have: use "
                            "--device cpu")
        if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # torchrun: one GPU per process
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: dtype for autocast (None = fp32) and whether a GradScaler is needed."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_grad_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def has_native_bf16(device: torch.device) -> bool:
    """bf16 arithmetic in hardware: NVIDIA Ampere and newer, CPUs with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private but stable since torch 2.1
        return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return False


def choose_precision(device: torch.device, amp: bool = False, precision: str = "auto") -> Precision:
    """auto: bf16 autocast where the hardware computes bf16 natively (about 2x fp32 there), else fp32.

    --amp also turns on mixed precision elsewhere: bf16 on any CPU, fp16 with a gradient scaler on GPUs
    without bf16. --precision forces one.
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device_type = device.type
    if device_type == "mps":  # autocast on MPS is not reliable yet: full precision, and no flag pretends otherwise
        if precision in ("bf16", "fp16"):
            raise UserError(f"--precision {precision} is not supported on Apple MPS: leave it out (fp32 there) or "
                            "use --device cpu")
        return Precision(device_type, None)
    if precision == "auto":
        if has_native_bf16(device):
            return Precision(device_type, torch.bfloat16)
        if not amp:
            return Precision(device_type, None)
        if device.type == "cuda":
            return Precision(device_type, torch.float16)
        return Precision(device_type, torch.bfloat16)
    if precision == "fp32":
        return Precision(device_type, None)
    if precision == "fp16" and device_type == "cpu":
        raise UserError("--precision fp16 needs a CUDA GPU: use --precision bf16 on the CPU")
    return Precision(device_type, torch.bfloat16 if precision == "bf16" else torch.float16)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last: tensor cores on CUDA want it, and oneDNN on the CPU is ~15% faster with it (README)."""
    return torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format


def should_compile(choice: str, device: torch.device, images: int | None = None,
                   min_images: int = COMPILE_MIN_IMAGES) -> bool:
    """auto: on CUDA, where the fused kernels pay back the compile time; off on CPUs, where they did not.

    images: the run's images (prediction) or training images over all its epochs; auto compiles only from
    min_images on. On an H200, 960 images predicted at 202 images/s compiled and 157 eager once the compiler's
    cache was warm, but at 39 the first time (~20 s of compiling): a single image or a short list is faster eager.
    """
    if choice == "auto":
        return device.type == "cuda" and (images is None or images >= min_images)
    return choice == "on"


def compile_model(model: torch.nn.Module, choice: str) -> torch.nn.Module:
    """torch.compile; with --compile auto a machine whose compiler fails (no Triton, no C compiler) runs eagerly."""
    if choice == "auto":
        torch._dynamo.config.suppress_errors = True
    return torch.compile(model)


def keep_freed_memory_on_cpu(device: torch.device) -> None:
    """Stop glibc from returning every freed activation to the OS and faulting it back in at the next step.

    Large blocks are otherwise mmap-ed and unmapped per allocation: on the 2-core machine that cost 10-15% of a
    CPU training step and ~10% of a prediction (bench/README.md). The process keeps its peak memory instead.
    A no-op off the CPU and off glibc.
    """
    libc = _glibc(device)
    if libc is None:
        return
    libc.mallopt(M_MMAP_MAX, 0)  # large blocks from the heap, reused
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # the largest value mallopt takes: keep the freed top of the heap


@contextlib.contextmanager
def freed_memory_kept(device: torch.device) -> Iterator[None]:
    """keep_freed_memory_on_cpu for one run: afterwards glibc's documented defaults are set again and the kept
    memory is given back, so that a notebook that called a script's main() gets its allocator back (its dynamic
    mmap threshold stays off: glibc turns it off for good once a parameter is set)."""
    keep_freed_memory_on_cpu(device)
    try:
        yield
    finally:
        libc = _glibc(device)
        if libc is not None:
            for parameter, value in GLIBC_DEFAULTS:
                libc.mallopt(parameter, value)
            libc.malloc_trim(0)


def return_freed_memory(device: torch.device) -> None:
    """Give the heap's free pages back to the OS now (after keep_freed_memory_on_cpu kept them).

    Tiled prediction of a huge image calls it between tiles: kept, the holes between its long-lived buffers
    raised the peak of an 8000x6000 image from 3.8 to 5.0 GiB. A no-op off the CPU and off glibc.
    """
    libc = _glibc(device)
    if libc is not None:
        libc.malloc_trim(0)


def _glibc(device: torch.device) -> ctypes.CDLL | None:
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --amp and --precision, the same in every script."""
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA, else MPS, else CPU)")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision even without native bf16: bf16 on CPUs, fp16 (+ scaler) on older GPUs; "
                             "Apple MPS stays fp32")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto = bf16 where the hardware has it natively, else fp32 (or what --amp picks); "
                             "fp32 forces full precision (default: %(default)s)")
