"""The checkpoint is the contract: one function writes it, one reads it, everything else goes through them.

Our checkpoints are self-describing dicts (weights, model_args, mask_values, scale, run args, training
state). Plain reference state_dicts (optionally with a "mask_values" key) load too: their architecture is
read off the tensor shapes. Files are always read with weights_only=True, so loading never runs code, and
every key, shape and dtype is checked against that architecture before use, so a bad file is one line naming
the file, the first offending entry and the fix (check_training_state does the same for what resuming reads).
"""

import contextlib
import functools
import math
import os
import pickle
import random
import re
import shutil
import sys
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unet import CLASSIC_BASE_CHANNELS, MAX_BASE_CHANNELS, UNet

from .atomic_files import TEMPORARY_NAME, atomic_path, written_path
from .data_loading import IMAGE_SUFFIXES, UNREAD_IMAGE_SUFFIXES, repeats_values
from .device import memory_format
from .errors import UserError, check_flag, counted
from .mask_encoding import MAX_CLASSES, MaskValue, complete_mask_values, full_palette
from .run_log import CURVES_PNG, METRICS_CSV

FORMAT_VERSION = 1
INT64_MAX = 2**63 - 1  # the largest label an array of masks holds


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
    return {"n_channels": net.n_channels, "n_classes": net.n_classes, "bilinear": net.bilinear,
            "base_channels": net.base_channels}


def _plain(value: Any) -> Any:
    """Run arguments and metadata as the built-in types that weights_only loading accepts: numpy and 0-d torch
    numbers as Python's (np.unique of a mask gives numpy labels), anything else unknown as its text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        return value.item()
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
    payload = {
        "format": FORMAT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "model_args": model_args(model),
        "mask_values": _plain(mask_values),
        **{key: (_plain(value) if key in PLAIN_ENTRIES else value) for key, value in extra.items()},
    }
    # what load_checkpoint would refuse, refused now: a file that cannot be read back is no save
    _check_metadata(dict(payload), "the checkpoint to save")
    n_classes = payload["model_args"]["n_classes"]
    if payload["mask_values"] is not None and len(payload["mask_values"]) > max(n_classes, 2):
        raise UserError(f"the checkpoint to save lists {len(payload['mask_values'])} mask values for a model of "
                        f"{counted(n_classes, 'class', 'classes')}: give one value per class")
    return payload


# checkpoint entries of plain values (numbers, text, lists of them): numpy and torch numbers saved as Python's
PLAIN_ENTRIES = ("args", "scale", "mask_palette", "epoch", "step", "epoch_batches", "best_dice", "val_dice",
                 "epoch_loss", "training_images", "validation_images", "processes", "data_folders")


def remove_unfinished_saves(folder: Path | str) -> list[tuple[str, int]]:
    """Delete the temporary files of checkpoint saves (and of the run's logs) that a killed run left unfinished
    (each up to a checkpoint's size); the checkpoints themselves were never touched by them. Call it holding the
    folder's RunLock, so that no other run's save is in progress. Returns each removed file's name (a path, beside
    a link's target) and size.

    A checkpoint that is a link (last.pth kept on another disk) is saved beside the file it links to
    (atomic_path), so its unfinished saves are looked for there too, for that file's name only."""
    places: list[tuple[Path, str | None]] = [(Path(folder), None)]  # (folder, the one target name, or any .pth)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.name.endswith(".pth") and entry.is_symlink():
                target = written_path(Path(entry.path))
                places.append((target.parent, target.name))
    removed = []
    for place, only in places:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(place):
                unfinished = TEMPORARY_NAME.match(entry.name)
                ours = unfinished and (unfinished["target"].endswith(".pth") or only is None and unfinished["target"]
                                       in (METRICS_CSV, CURVES_PNG))  # the run's logs too (a concurrency review)
                if ours and only in (None, unfinished["target"]) and entry.is_file(follow_symlinks=False):
                    size = entry.stat().st_size
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed.append((entry.name if only is None else entry.path, size))
    return removed


def write_checkpoint(path: Path | str, payload: dict[str, Any]) -> None:
    """Write atomically (temporary file, fsync, rename): a crash leaves the old file or the new one."""
    path = Path(path)
    if path.suffix.lower() in (*IMAGE_SUFFIXES, *UNREAD_IMAGE_SUFFIXES) and path.suffix.lower() != ".pt":  # .pt: both
        raise UserError(f"cannot write checkpoint {path}: that is an image's name; give a name ending in .pth")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0][:120]
        if isinstance(error, RuntimeError) and "unexpected pos" in str(error):  # its zip writer's short write
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(path.parent).free
                reason = f"the disk is full: the file came out short; {free / 2**20:,.0f} MiB free without it"
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
    save of source leaves target as it was), else a byte copy with fsync. A source that is a symbolic link (last.pth
    kept on another disk) is copied from the file it links to: a hard link to the link itself would follow every
    later save through it.
    """
    source, target = Path(os.path.realpath(source)), Path(target)
    try:
        with atomic_path(target) as tmp:
            tmp.unlink(missing_ok=True)
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
                with open(tmp, "rb+") as file:
                    os.fsync(file.fileno())
    except OSError as error:
        raise UserError(f"cannot write checkpoint {target} ({error.strerror}): free disk space or pick "
                        "another --checkpoint-dir") from None


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def unwrapped(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The plain UNet's keys of a state_dict saved from a DDP or compiled model (module.inc..., _orig_mod.inc...):
    the weights are the same, only the wrapper's name prefixes them."""
    while state_dict and all(isinstance(key, str) for key in state_dict):
        prefix = next((p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in state_dict)), None)
        if prefix is None:
            break
        state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def infer_model_args(state_dict: dict[str, torch.Tensor], source: Path | str) -> dict[str, Any]:
    """Architecture from the weights themselves, so plain state_dicts need no --classes/--bilinear."""
    try:
        return {
            "n_channels": int(state_dict["inc.double_conv.0.weight"].shape[1]),
            "n_classes": int(state_dict["outc.conv.weight"].shape[0]),
            "bilinear": "up1.up.weight" not in state_dict,
            "base_channels": _inferred_width(state_dict),
        }
    except (KeyError, AttributeError, IndexError, TypeError):
        wrapped = next((key for key in state_dict if str(key).startswith(WRAPPER_PREFIXES)), None)
        if wrapped is not None:
            raise UserError(f"{source} holds the weights of a wrapped model ('{wrapped}'): save the plain "
                            "UNet's state_dict (model.module or model._orig_mod)") from None
        nested = next((str(key)[:-len("inc.double_conv.0.weight")] for key in state_dict
                       if str(key).endswith(".inc.double_conv.0.weight")), None)
        if nested is not None:  # the U-Net as a part of a larger module (a Lightning module's self.model, say)
            raise UserError(f"{source} holds a U-Net inside another module (its weights are named '{nested}inc...'): "
                            f"save that part's own state_dict (e.g. torch.save(module.{nested.rstrip('.')}"
                            ".state_dict(), 'unet.pth'))") from None
        raise UserError(f"{source} is not a U-Net checkpoint (no inc/outc weights)") from None


def _inferred_width(state_dict: Any) -> int | None:
    """The width the weights were built with (for plain state_dicts, and our files' model_args of before
    base_channels); None where the first convolution's weight is missing or not one."""
    weight = state_dict.get("inc.double_conv.0.weight") if isinstance(state_dict, dict) else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 4 else None


def _layout_name(args: dict[str, Any]) -> str:
    width = f", base_channels={args['base_channels']}" if args["base_channels"] != CLASSIC_BASE_CHANNELS else ""
    return (f"UNet(n_channels={args['n_channels']}, n_classes={args['n_classes']}, bilinear={args['bilinear']}"
            f"{width})")


@functools.lru_cache(maxsize=8)
def _unet_layout(n_channels: int, n_classes: int, bilinear: bool,
                 base_channels: int) -> tuple[dict[str, tuple], tuple[str, ...]]:
    """(state_dict key -> (shape, dtype), parameter names in optimizer order), from a meta-device UNet: ~10 ms."""
    with torch.device("meta"):
        net = UNet(n_channels, n_classes, bilinear, base_channels)
    weights = {key: (tuple(value.shape), value.dtype) for key, value in net.state_dict().items()}
    return weights, tuple(name for name, _ in net.named_parameters())


def check_model_args(args: Any, source: Path | str) -> dict[str, Any]:
    """model_args as UNet(**args) needs them: positive ints for the sizes, a bool for bilinear. Without
    base_channels (a dict put together by hand and given to model_from_checkpoint; checkpoint_from_data reads it
    off the weights first), the classic width."""
    fix = "the file is damaged or was not written by train.py"
    if isinstance(args, dict) and set(args) == {"n_channels", "n_classes", "bilinear"}:
        args = {**args, "base_channels": CLASSIC_BASE_CHANNELS}
    if not isinstance(args, dict) or set(args) != {"n_channels", "n_classes", "bilinear", "base_channels"}:
        raise UserError(f"{source}: model_args is {_clipped(args)}, not n_channels/n_classes/bilinear/"
                        f"base_channels: {fix}")
    for name in ("n_channels", "n_classes", "base_channels"):
        if type(args[name]) is not int or args[name] < 1:
            raise UserError(f"{source}: model_args {name} is {_clipped(args[name])}, not a positive integer: {fix}")
    if args["n_classes"] > MAX_CLASSES:
        raise UserError(f"{source}: model_args n_classes is {args['n_classes']}, more than the {MAX_CLASSES} mask "
                        f"values a 16-bit mask holds: {fix}")
    if args["base_channels"] > MAX_BASE_CHANNELS:
        raise UserError(f"{source}: model_args base_channels is {args['base_channels']}, more than the "
                        f"{MAX_BASE_CHANNELS} a U-Net is built with: {fix}")
    if not isinstance(args["bilinear"], bool):
        raise UserError(f"{source}: model_args bilinear is {args['bilinear']!r}, not True/False: {fix}")
    return dict(args)


def check_state_dict(state_dict: Any, args: dict[str, Any], source: Path | str) -> None:
    """Refuse, before load_state_dict, weights that do not fit the declared U-Net: one line naming the first key."""
    layout = _layout_name(args)
    prefix = f"{source} does not fit the U-Net layout {layout}:"
    if not isinstance(state_dict, dict):
        raise UserError(f"{prefix} its weights are a {type(state_dict).__name__}, not a state_dict: "
                        "the file is damaged or was not written by train.py")
    expected, _ = _unet_layout(**args)
    missing = [key for key in expected if key not in state_dict]
    if missing:
        raise UserError(f"{prefix} it lacks '{missing[0]}'{_more(missing)}: it is incomplete or from another "
                        "model; use a checkpoint saved from this U-Net")
    unexpected = [key for key in state_dict if key not in expected]
    if unexpected:
        hint = "save the plain UNet's state_dict, not a wrapper's" if str(unexpected[0]).startswith(WRAPPER_PREFIXES) \
            else "it is from another model; use a checkpoint saved from this U-Net"
        raise UserError(f"{prefix} '{unexpected[0]}'{_more(unexpected)} is not part of it: {hint}")
    for key, (shape, dtype) in expected.items():
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{prefix} '{key}' is a {type(value).__name__}, not a tensor: the file is damaged or "
                            "not a state_dict; re-save it with torch.save(model.state_dict(), ...)")
        if tuple(value.shape) != shape:
            raise UserError(f"{prefix} '{key}' has shape {list(value.shape)}, the layout needs {list(shape)}: the "
                            "weights come from a differently built U-Net; use a checkpoint of this layout")
        if value.layout != torch.strided:
            raise UserError(f"{prefix} '{key}' is a sparse tensor ({value.layout}): re-save the weights dense "
                            "(tensor.to_dense())")
        if repeats_values(value):
            raise UserError(f"{prefix} '{key}' holds fewer values than its shape {list(shape)} (one value repeated): "
                            "it was not saved from a trained model; use a checkpoint written by training")
        if value.dtype.is_floating_point != dtype.is_floating_point or value.is_complex() or value.dtype == torch.bool:
            kind = "floating-point" if dtype.is_floating_point else "integer"
            raise UserError(f"{prefix} '{key}' holds {value.dtype} values where {kind} ones belong: re-save the "
                            "weights as saved by training (model.float().state_dict())")


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def first_non_finite(tensors: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, or None."""
    for key, value in tensors.items():
        # One norm per tensor (~10 ms for all 31M weights; torch.isfinite(...).all() took ~0.8 s on 2 cores); a norm
        # that overflows is confirmed element by element.
        if (isinstance(value, torch.Tensor) and value.is_floating_point()
                and not torch.linalg.vector_norm(value.float()).isfinite() and not torch.isfinite(value).all()):
            return key
    return None


def warn_non_finite(state_dict: dict[str, torch.Tensor], source: Path | str) -> None:
    """NaN/inf weights are legal data (a diverged run) but predict nothing useful: say so, load anyway."""
    key = first_non_finite(state_dict)
    if key is not None:
        print(f"warning: {source}: '{key}' holds NaN or infinite values (did training diverge?): its "
              "predictions will be meaningless", file=sys.stderr)


def _check_metadata(checkpoint: dict[str, Any], source: Path | str) -> None:
    """The non-tensor entries that predict/evaluate/train read, so that a bad one fails here and not later."""
    version = checkpoint.get("format", FORMAT_VERSION)
    if type(version) is not int or version > FORMAT_VERSION:
        raise UserError(f"{source} has checkpoint format {version!r}; this code reads format {FORMAT_VERSION}: "
                        "update this repository")
    checkpoint["mask_values"] = _checked_mask_values(checkpoint.get("mask_values"), source)
    palette = checkpoint.get("mask_palette")
    if palette is not None and not (isinstance(palette, list) and len(palette) % 3 == 0 and len(palette) <= 768
                                    and all(_whole(c, 255) is not None for c in palette)):
        raise UserError(f"{source}: mask_palette is {_clipped(palette)}, not a list of up to 256 r, g, b triples "
                        "(whole numbers 0 to 255): fix or drop the entry")
    scalar = (int, float)
    scale = checkpoint.get("scale")
    if scale is not None and (not isinstance(scale, scalar) or isinstance(scale, bool) or not 0 < scale < math.inf):
        raise UserError(f"{source}: scale is {scale!r}, not a positive number: fix or drop the entry (e.g. del "
                        "checkpoint['scale'], then torch.save it again)")
    loss = checkpoint.get("epoch_loss")  # NaN or infinite too: an uninterrupted run records that as well
    if loss is not None and (not isinstance(loss, (int, float)) or isinstance(loss, bool)):
        raise UserError(f"{source}: epoch_loss is {_clipped(loss)}, not the loss sum of the epoch's batches so far "
                        "(a number): fix or drop the entry")
    if checkpoint.get("wandb_run") is not None and not isinstance(checkpoint["wandb_run"], str):
        raise UserError(f"{source}: wandb_run is {_clipped(checkpoint['wandb_run'])}, not a wandb run id: fix or drop "
                        "the entry")
    if not isinstance(checkpoint.get("args", {}), dict):
        raise UserError(f"{source}: args is a {type(checkpoint['args']).__name__}, not a dict: the file is damaged")
    run_args = checkpoint.get("args", {})
    for name, rule, ok in (
        ("binarize", "a threshold (a whole number of 0 or more)",
         lambda v: isinstance(v, bool) or _whole(v, math.inf) is not None),
        ("ignore_index", "a mask value (a whole number)", lambda v: type(v) is int),
    ):  # how evaluate.py reads the masks
        if run_args.get(name) is not None and not ok(run_args[name]):
            raise UserError(f"{source}: args['{name}'] is {run_args[name]!r}, not {rule}: fix or drop the entry")


def _whole(value: Any, top: float, bottom: float = 0) -> int | None:
    """value as an int when it is a whole number from bottom to top (bools and integral floats included), else
    None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return int(value) if isinstance(value, int) and bottom <= value <= top else None


def _checked_mask_values(values: Any, source: Path | str) -> list[MaskValue] | None:
    """mask_values as masks can hold them: distinct whole-number labels or distinct colours (3 or 4 channels of 0
    to 255), as ints; a wrong entry would write wrong masks or crash the writer. (Labels beyond what an image file
    holds, from .npy masks, are legal here: predict.py's writer refuses them, evaluate.py scores them.)"""
    if values is None:
        return None
    checked: list | None = None
    if isinstance(values, (list, tuple)) and values:
        if all(isinstance(v, (list, tuple)) and len(v) in (3, 4) and len(v) == len(values[0]) for v in values):
            checked = [[_whole(c, 255) for c in v] for v in values]
            checked = checked if all(c is not None for v in checked for c in v) else None
        else:
            checked = [_whole(v, INT64_MAX, -INT64_MAX - 1) for v in values]  # numpy and torch hold them
            checked = checked if None not in checked else None
    if checked is None:
        raise UserError(f"{source}: mask_values is {_clipped(values)}, not a list of labels (whole numbers) or of "
                        "r, g, b colours (0 to 255): fix or drop the entry")
    if len({repr(v) for v in checked}) < len(checked):
        raise UserError(f"{source}: mask_values {_clipped(values)} repeats a value, so two classes would be written "
                        "alike: fix or drop the entry")
    return checked


def _read(path: Path, map_location: str | torch.device) -> Any:
    """torch.load with weights_only=True: tensors and plain data only; a pickled code payload is never run."""
    with open(path, "rb") as file:
        head = file.read(8)
    fix = "pass the .pth file train.py wrote, or a state_dict saved with torch.save"
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive; older torch, a pickle
        what = "it is an ONNX model, as export.py writes" if path.suffix == ".onnx" else _what_it_is(head)
        raise UserError(f"{path} is not a PyTorch checkpoint ({what}): {fix}")
    try:
        with warnings.catch_warnings():  # a raw pickle draws a protocol warning before our refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        detail = f"it needs {found.group(1)}" if found else "it uses pickle instructions beyond plain data"
        raise UserError(f"refusing to load {path}: it holds pickled Python objects, not just tensors ({detail}); "
                        "nothing in it was run. If you trust its source, re-save only the weights with "
                        "torch.save(model.state_dict(), ...)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        if "TorchScript" in str(error):
            raise UserError(f"{path} is a TorchScript model, as export.py writes, not a checkpoint: {fix}") from None
        reason = _first_sentence(str(error)) or type(error).__name__
        raise UserError(f"{path} is not a readable checkpoint ({reason}): it may be truncated") from None


def _first_sentence(text: str, limit: int = 160) -> str:
    """torch's messages run to several sentences and lines: the first, cut at a word if it is still long."""
    first = re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0].rstrip(".")
    return first if len(first) <= limit else first[:limit].rsplit(" ", 1)[0] + "..."


def _what_it_is(head: bytes) -> str:
    """A few words on a file that is not a checkpoint, from its first bytes."""
    if not head:
        return "the file is empty"
    known = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
             b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image", b"BM": "a BMP image",
             b"\x93NUMPY": "a NumPy array"}
    found = next((kind for magic, kind in known.items() if head.startswith(magic)), None)
    return f"it is {found}" if found else "neither a zip archive nor a pickle"


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu", flag: str = "--model"
                    ) -> dict[str, Any]:
    """The one reader: every checkpoint, ours or a plain reference state_dict, comes back checked, in one shape.

    Returns model (state_dict), model_args, mask_values (None when the file has none), source, and the rest of
    our format's entries. The weights are checked against the declared (ours) or inferred (plain) architecture;
    resume also calls check_training_state. flag: how the user named the file, for the message when it is missing.
    """
    path = Path(path)
    if path.is_dir():
        inside = ", ".join(sorted(child.name for child in path.glob("*.pth"))[:3])
        raise UserError(f"{flag} {path} is a folder: give a checkpoint file in it"
                        + (f" ({inside})" if inside else " (train.py writes last.pth and best.pth)"))
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give {flag} the path of one (train.py writes "
                        "checkpoints/last.pth and best.pth)")
    return checkpoint_from_data(_read(path, map_location), path)


def saved_score(path: Path | str) -> tuple[float, int | None] | None:
    """A training checkpoint's validation Dice and epoch, its tensors left on disk (mmap); None when the file is
    unreadable or holds no score."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return float(saved.get("val_dice")), saved.get("epoch")
    except Exception:  # noqa: BLE001 - whatever the file is, it has no score to keep
        return None


def checkpoint_from_data(data: object, source: Path | str) -> dict[str, Any]:
    """load_checkpoint's checks and shape for what a checkpoint file held (or a dict a program loaded itself);
    source names it in messages. The given dict is left as it was."""
    if not isinstance(data, dict):
        raise UserError(f"{source} is not a U-Net checkpoint (it holds a {type(data).__name__})")
    if "model" in data and "model_args" in data:
        checkpoint = dict(data)
        args = checkpoint["model_args"]
        if isinstance(args, dict) and "base_channels" not in args:  # written before the width was a setting
            width = _inferred_width(checkpoint["model"])
            checkpoint["model_args"] = {**args, "base_channels": width} if width else args
    else:  # a reference-style plain state_dict, maybe with mask_values, or one saved as {"model": ..., "epoch": ...}
        # the weights under "model", or under "state_dict" as many training scripts (and Lightning) save them
        weights = next((data[key] for key in ("model", "state_dict") if isinstance(data.get(key), dict)), data)
        state_dict = unwrapped({k: v for k, v in weights.items() if k != "mask_values"})
        checkpoint = {"model": state_dict, "model_args": infer_model_args(state_dict, source)}
        if "mask_values" in data:
            checkpoint["mask_values"] = data["mask_values"]
    checkpoint["model_args"] = check_model_args(checkpoint["model_args"], source)
    check_state_dict(checkpoint["model"], checkpoint["model_args"], source)
    _check_metadata(checkpoint, source)
    warn_non_finite(checkpoint["model"], source)
    checkpoint.setdefault("mask_values", None)
    checkpoint["source"] = str(source)
    return checkpoint


TRAINING_STATE = ("optimizer", "scheduler", "scaler", "epoch", "step", "best_dice", "rng")


def optimizer_state_for(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved optimizer state with this optimizer's kernel choice (fused, foreach), which follows the machine, not
    the run: a run saved before train.py used the fused kernel (or on a device without it) stepped otherwise, and
    GradScaler and the non-finite guard then handed the unfused kernel the fused one's flags."""
    kernel = {key: optimizer.defaults[key] for key in ("fused", "foreach") if key in optimizer.defaults}
    return {**saved, "param_groups": [{**group, **kernel} for group in saved["param_groups"]]}


def check_training_state(checkpoint: dict[str, Any], path: Path | str) -> None:
    """What resuming reads, checked before any of it is used: a bad file is one line, not a KeyError in train.py.

    checkpoint comes from load_checkpoint (its weights are checked there). The optimizer state must belong to
    this model: as many parameters, and finite moment tensors shaped like them; and the weights must be finite.
    """
    if "optimizer" not in checkpoint:
        raise UserError(f"{path} holds weights only, no training state: use --load to start from it")
    fix = f"the file is damaged or from another program; start from its weights with --load {path}"
    missing = [key for key in TRAINING_STATE if key not in checkpoint]
    if missing:
        raise UserError(f"{path} lacks the training state entry '{missing[0]}'{_more(missing)}: {fix}")
    kinds = {"optimizer": dict, "scheduler": dict, "scaler": dict, "rng": dict, "epoch": int, "step": int,
             "best_dice": (int, float)}
    for key, kind in kinds.items():
        value = checkpoint[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (key in ("epoch", "step") and value < 0):
            raise UserError(f"{path}: training state '{key}' is {_short(value)}, not a "
                            f"{'non-negative ' if key in ('epoch', 'step') else ''}"
                            f"{getattr(kind, '__name__', 'number')}: {fix}")
    batches = checkpoint.get("epoch_batches", 0)  # optional: saved in the middle of an epoch
    if type(batches) is not int or batches < 0:
        raise UserError(f"{path}: training state 'epoch_batches' is {_short(batches)}, not a non-negative int: {fix}")
    names, count = checkpoint.get("validation_images", []), checkpoint.get("training_images", 0)  # optional
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise UserError(f"{path}: training state 'validation_images' is {_short(names)}, not a list of names: {fix}")
    if type(count) is not int or count < 0:
        raise UserError(f"{path}: training state 'training_images' is {_short(count)}, not a non-negative int: {fix}")
    rng = checkpoint["rng"]
    numpy_state = rng.get("numpy", {}).get("state") if isinstance(rng.get("numpy"), dict) else None
    if not (isinstance(rng.get("python"), (list, tuple)) and isinstance(rng.get("torch"), torch.Tensor)
            and isinstance(numpy_state, dict) and isinstance(numpy_state.get("key"), torch.Tensor)):
        raise UserError(f"{path}: training state 'rng' lacks the python/numpy/torch generator states: {fix}")
    _check_optimizer_state(checkpoint["optimizer"], checkpoint["model_args"], path, fix)
    bad = first_non_finite(checkpoint["model"])
    if bad is not None:  # resuming would only spread them; the NaN guard saves the last good state instead
        raise UserError(f"{path}: weight '{bad}' holds NaN or infinite values, so training cannot go on from it: "
                        "resume from best.pth or an epoch_N.pth of the run, or start a new run")


def _check_optimizer_state(state: dict[str, Any], args: dict[str, Any], path: Path | str, fix: str) -> None:
    groups = state.get("param_groups")
    if not isinstance(state.get("state"), dict) or not isinstance(groups, list) or not all(
            isinstance(group, dict) and isinstance(group.get("params"), list) for group in groups):
        raise UserError(f"{path}: training state 'optimizer' is not an optimizer state_dict (state, param_groups): "
                        f"{fix}")
    weights, parameter_names = _unet_layout(**args)
    ids = [index for group in groups for index in group["params"]]
    if len(ids) != len(parameter_names):
        raise UserError(f"{path}: the optimizer state covers {len(ids)} parameters, {_layout_name(args)} has "
                        f"{len(parameter_names)}: {fix}")
    position = {index: n for n, index in enumerate(ids)}
    for index, moments in state["state"].items():
        if index not in position or not isinstance(moments, dict):
            raise UserError(f"{path}: the optimizer state has an entry for unknown parameter {index!r}: {fix}")
        name = parameter_names[position[index]]
        for moment, value in moments.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != weights[name][0]:
                raise UserError(f"{path}: optimizer '{moment}' of '{name}' has shape {list(value.shape)}, the "
                                f"parameter {list(weights[name][0])}: {fix}")
        bad = first_non_finite(moments)
        if bad is not None:  # a damaged file: resuming would write NaN weights over last.pth
            raise UserError(f"{path}: optimizer '{bad}' of '{name}' holds NaN or infinite values: {fix}")


def _clipped(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list, torch.Tensor)) else f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


def default_mask_values(n_classes: int) -> list[MaskValue]:
    """What the reference assumed for checkpoints without mask_values: 0/1 for binary, else 0..n-1."""
    return [0, 1] if n_classes <= 2 else list(range(n_classes))


def model_from_checkpoint(
    checkpoint: dict[str, Any], n_classes: int | None = None, bilinear: bool | None = None
) -> UNet:
    """Rebuild the UNet and load its weights; flags may restate, never contradict, the weights."""
    source = checkpoint.get("source", "checkpoint")
    args = check_model_args(checkpoint["model_args"], source)
    if n_classes is not None and n_classes != args["n_classes"]:
        raise UserError(f"--classes is {n_classes} but {source} has "
                        f"{counted(args['n_classes'], 'class', 'classes')}: "
                        f"use --classes {args['n_classes']}")
    if bilinear is not None and bilinear != args["bilinear"]:
        raise UserError(f"{source} was trained {'with' if args['bilinear'] else 'without'} --bilinear: "
                        f"{'add' if args['bilinear'] else 'drop'} the flag")
    check_state_dict(checkpoint["model"], args, source)
    model = UNet(**args).float()  # float32 whatever torch.set_default_dtype a notebook chose
    try:  # the checks above should leave nothing for strict loading to find
        model.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:200]
        raise UserError(f"{source} does not fit the U-Net layout ({first})") from None
    mask_values = checkpoint.get("mask_values")
    if mask_values is None:
        mask_values = default_mask_values(args["n_classes"])
    if len(mask_values) > max(args["n_classes"], 2):
        raise UserError(f"{source} lists {len(mask_values)} mask values for a model of {args['n_classes']} classes, "
                        "which cannot predict them all: fix its mask_values entry, or drop it")
    ignored = (checkpoint.get("args") or {}).get("ignore_index")
    model.mask_values = complete_mask_values(mask_values, args["n_classes"], avoid=ignored)
    palette = checkpoint.get("mask_palette")  # as predict.py writes it: 256 entries, a colour per class
    model.mask_palette = full_palette(palette, model.mask_values) if palette else None
    model.scale = checkpoint.get("scale")
    model.ignore_value = ignored
    return model


def load_model(
    path: Path | str, device: torch.device | str, n_classes: int | None = None, bilinear: bool | None = None
) -> tuple[UNet, dict[str, Any]]:
    """A checkpoint's model on the device ("cpu" or a torch.device) in eval mode, plus the checkpoint (for scale,
    args, ...)."""
    device = torch.device(device)
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, n_classes=n_classes, bilinear=bilinear)
    model.to(device, memory_format=memory_format(device)).eval()
    return model, checkpoint


def check_scale_flag(scale: float | None) -> None:
    """predict.py, evaluate.py and export.py's --scale (None: the checkpoint's)."""
    check_flag("--scale", scale, scale is None or 0 < scale < math.inf, "above 0 (the image's size times it)")


def inference_scale(checkpoint: dict[str, Any], requested: float | None) -> float:
    """--scale if given (checked), else the scale the model was trained at, else the reference default 0.5."""
    if requested is not None:
        check_scale_flag(requested)
        return requested
    return float(checkpoint.get("scale") or 0.5)
