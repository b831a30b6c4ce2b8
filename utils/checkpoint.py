"""The checkpoint is the contract: one function writes it, one reads it, everything else goes through them.

Our checkpoints are self-describing dicts (weights, model_args, mask_values, scale, run args, training
state). Plain reference state_dicts (optionally with a "mask_values" key) load too: their architecture is
read off the tensor shapes. Files are always read with weights_only=True, so loading never runs code.
"""

import contextlib
import os
import pickle
import random
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unet import UNet

from .errors import UserError
from .mask_encoding import MaskValue

FORMAT_VERSION = 1


def unwrap_model(model: nn.Module) -> UNet:
    """The UNet inside DDP (.module) and torch.compile (._orig_mod) wrappers."""
    while not isinstance(model, UNet):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"{type(model).__name__} does not wrap a UNet")
        model = inner
    return model


def model_args(model: nn.Module) -> dict[str, Any]:
    net = unwrap_model(model)
    return {"n_channels": net.n_channels, "n_classes": net.n_classes, "bilinear": net.bilinear}


def _plain(value: Any) -> Any:
    """Run arguments as the built-in types that weights_only loading accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {**numpy_state["state"],
                                           "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    numpy_state = state["numpy"]
    key = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def checkpoint_payload(model: nn.Module, mask_values: list[MaskValue], **extra: Any) -> dict[str, Any]:
    """What a checkpoint holds: the plain UNet's state_dict and constructor arguments, mask values, extras.

    extra: scale, args, optimizer, scheduler, scaler (state_dicts), epoch, step, best_dice, rng, ...
    """
    return {
        "format": FORMAT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "model_args": model_args(model),
        "mask_values": _plain(mask_values),
        **{key: (_plain(value) if key == "args" else value) for key, value in extra.items()},
    }


def write_checkpoint(path: Path | str, payload: dict[str, Any]) -> None:
    """Write atomically (temporary file, fsync, rename): a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0][:120]
        raise UserError(f"cannot write checkpoint {path} ({reason}): free disk space or pick "
                        "another --checkpoint-dir") from None


def save_checkpoint(path: Path | str, model: nn.Module, mask_values: list[MaskValue], **extra: Any) -> None:
    """The one checkpoint writer, synchronous: checkpoint_payload + write_checkpoint."""
    write_checkpoint(path, checkpoint_payload(model, mask_values, **extra))


def _snapshot(value: Any) -> Any:
    """A CPU copy of every tensor in a nested structure: the live ones change with the next optimizer step."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(item) for item in value)
    return value


def _write_with_copies(path: Path, payload: dict[str, Any], copies: list[Path] | tuple[Path, ...]) -> None:
    write_checkpoint(path, payload)
    for target in copies:
        copy_checkpoint(path, target)


class CheckpointWriter:
    """Saves in a background thread, so that serialising and syncing ~370 MB does not stall a GPU.

    The state is copied when save() is called; one write runs at a time (save() and wait() first finish the
    previous one and raise its error, if any). Call wait() before the process ends. background=False writes
    at once: on a CPU the training threads use every core, and a writer thread beside them slowed the next
    steps by more than the write itself takes (measured on the 2-core machine: ~2.5 s lost against 0.4 s).
    """

    def __init__(self, background: bool = True) -> None:
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: UserError | None = None

    def save(self, path: Path | str, model: nn.Module, mask_values: list[MaskValue],
             copies: list[Path] | tuple[Path, ...] = (), **extra: Any) -> None:
        """Write path, then give each of copies the same content (copy_checkpoint)."""
        self.wait()
        if not self.background:
            _write_with_copies(Path(path), checkpoint_payload(model, mask_values, **extra), copies)
            return
        payload = _snapshot(checkpoint_payload(model, mask_values, **extra))
        self._thread = threading.Thread(target=self._write_in_background, args=(Path(path), payload, list(copies)),
                                        name="checkpoint-writer")
        self._thread.start()

    def _write_in_background(self, path: Path, payload: dict[str, Any], copies: list[Path]) -> None:
        try:
            _write_with_copies(path, payload, copies)
        except UserError as error:  # raised in the training thread by the next save() or wait()
            self._error = error

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def copy_checkpoint(source: Path | str, target: Path | str) -> None:
    """target becomes a copy of the checkpoint just written to source, atomically and without writing it again.

    A hard link where the file system allows it (saving always writes a new file and renames it, so a later
    save of source leaves target as it was), else a byte copy with fsync.
    """
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as file:
                os.fsync(file.fileno())
        os.replace(tmp, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint {target} ({error.strerror}): free disk space or pick "
                        "another --checkpoint-dir") from None


def infer_model_args(state_dict: dict[str, torch.Tensor], source: Path | str) -> dict[str, Any]:
    """Architecture from the weights themselves, so plain state_dicts need no --classes/--bilinear."""
    try:
        return {
            "n_channels": int(state_dict["inc.double_conv.0.weight"].shape[1]),
            "n_classes": int(state_dict["outc.conv.weight"].shape[0]),
            "bilinear": "up1.up.weight" not in state_dict,
        }
    except (KeyError, AttributeError, IndexError):
        raise UserError(f"{source} is not a U-Net checkpoint (no inc/outc weights)") from None


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read our checkpoints and plain reference state_dicts into one shape: model, model_args, mask_values, ..."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: train one with train.py or pass --model PATH")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0][:160]
        raise UserError(f"refusing to load {path}: it holds Python objects, not just tensors ({reason})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} is not a readable checkpoint ({reason}): it may be truncated") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a U-Net checkpoint (it holds a {type(data).__name__})")
    if "model" in data and "model_args" in data:
        checkpoint = dict(data)
    else:  # a reference-style plain state_dict, maybe with mask_values
        state_dict = {k: v for k, v in data.items() if k != "mask_values"}
        checkpoint = {"model": state_dict, "model_args": infer_model_args(state_dict, path)}
        if "mask_values" in data:
            checkpoint["mask_values"] = data["mask_values"]
    checkpoint.setdefault("mask_values", None)
    checkpoint["source"] = str(path)
    return checkpoint


def default_mask_values(n_classes: int) -> list[MaskValue]:
    """What the reference assumed for checkpoints without mask_values: 0/1 for binary, else 0..n-1."""
    return [0, 1] if n_classes <= 2 else list(range(n_classes))


def model_from_checkpoint(
    checkpoint: dict[str, Any], n_classes: int | None = None, bilinear: bool | None = None
) -> UNet:
    """Rebuild the UNet and load its weights; flags may restate, never contradict, the weights."""
    args = dict(checkpoint["model_args"])
    source = checkpoint.get("source", "checkpoint")
    if n_classes is not None and n_classes != args["n_classes"]:
        raise UserError(f"--classes is {n_classes} but {source} has {args['n_classes']} classes: "
                        f"use --classes {args['n_classes']}")
    if bilinear is not None and bilinear != args["bilinear"]:
        raise UserError(f"{source} was trained {'with' if args['bilinear'] else 'without'} --bilinear: "
                        f"{'add' if args['bilinear'] else 'drop'} the flag")
    model = UNet(**args)
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:200]
        raise UserError(f"{source} does not fit the U-Net layout ({first})") from None
    mask_values = checkpoint.get("mask_values")
    model.mask_values = list(mask_values) if mask_values is not None else default_mask_values(args["n_classes"])
    return model


def load_model(
    path: Path | str, device: torch.device, n_classes: int | None = None, bilinear: bool | None = None
) -> tuple[UNet, dict[str, Any]]:
    """A checkpoint's model on the device in eval mode, plus the checkpoint (for scale, args, ...)."""
    from .device import memory_format

    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, n_classes=n_classes, bilinear=bilinear)
    model.to(device, memory_format=memory_format(device)).eval()
    return model, checkpoint


def inference_scale(checkpoint: dict[str, Any], requested: float | None) -> float:
    """--scale if given, else the scale the model was trained at, else the reference default 0.5."""
    if requested is not None:
        return requested
    return float(checkpoint.get("scale") or 0.5)
