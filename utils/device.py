"""Device and precision, decided once per run and used by train, evaluate and predict."""

import argparse
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def choose_device(requested: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else MPS, else CPU."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise UserError(f"--device {requested!r} is not a device: use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {requested} asked for CUDA, but no CUDA GPU is visible: use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
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


def choose_precision(device: torch.device, amp: bool = False, precision: str = "auto") -> Precision:
    """fp32 unless --amp or --precision asks otherwise; --amp picks bf16 where supported, fp16 on older GPUs."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device_type = "cpu" if device.type == "mps" else device.type  # autocast on MPS is not reliable yet
    if precision == "auto":
        if not amp:
            return Precision(device_type, None)
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return Precision(device_type, torch.float16)
        return Precision(device_type, torch.bfloat16)
    if precision == "fp32":
        return Precision(device_type, None)
    if precision == "fp16" and device_type == "cpu":
        raise UserError("--precision fp16 needs a CUDA GPU: use --precision bf16 on the CPU")
    return Precision(device_type, torch.bfloat16 if precision == "bf16" else torch.float16)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last pays off on CUDA tensor cores; on CPU it is left to the default layout."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --amp and --precision, the same in every script."""
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA if available)")
    parser.add_argument("--amp", action="store_true", help="mixed precision: bf16, or fp16 (+ scaler) on older GPUs")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="force a precision; auto = fp32, or what --amp picks (default: %(default)s)")
