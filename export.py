"""Export a trained U-Net to ONNX or TorchScript, to run without this repository.

    python export.py -m checkpoints/best.pth -o unet.onnx          # ONNX, dynamic batch/height/width
    python export.py -m checkpoints/best.pth -o unet.pt            # TorchScript (traced)
    python export.py -m MODEL.pth -o unet.onnx --opset 18 --scale 0.5

The file carries what is needed to use its output (classes, mask values, scale, input normalisation,
activation): ONNX as metadata_props (every value a JSON string), TorchScript as metadata.json in the
archive's extra files. Input: float32 NCHW, pixels / 255. Output: logits, at the input's size.
"""

import argparse
import importlib.util
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from utils.atomic_files import atomic_path, check_output_file
from utils.checkpoint import inference_scale, load_model
from utils.data_loading import where
from utils.device import float32_default
from utils.errors import UserError, as_parsed, counted, run_cli
from utils.inference import DEFAULT_MASK_THRESHOLD
from utils.mask_encoding import MaskValue, encoding_table

FORMATS = ("onnx", "torchscript")
FORMAT_OF_SUFFIX = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}
DEFAULT_OPSET = 20  # run by onnxruntime 1.17 and later
MIN_OPSET = 18  # the torch.export-based exporter's lowest; asked for less, it silently writes 18
METADATA_FILE = "metadata.json"  # the TorchScript extra file
# The traced example: batch 2 so that torch.export keeps the batch symbolic (it specialises sizes 0 and 1).
EXAMPLE_BATCH, EXAMPLE_HEIGHT, EXAMPLE_WIDTH = 2, 64, 96


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a checkpoint to ONNX or TorchScript, with its metadata.")
    parser.add_argument("--model", "-m", default="MODEL.pth", metavar="FILE",
                        help="checkpoint: ours or a reference state_dict (default MODEL.pth)")
    parser.add_argument("--output", "-o", required=True, metavar="FILE",
                        help="file to write: .onnx for ONNX, .pt or .ts for TorchScript")
    parser.add_argument("--format", "-f", choices=FORMATS, default=None,
                        help="onnx or torchscript (default: from the --output suffix)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX operator set, {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    parser.add_argument("--scale", "-s", type=float, default=None,
                        help="scale to record in the metadata (default: the scale the model was trained at, "
                             "else 0.5)")
    return parser


def existing_output_problem(path: Path) -> str | None:
    """Why an existing --output must not be replaced, or None: only an earlier export (a TorchScript archive, an
    ONNX model) is, so that `-o best.pt` or `-o notes.onnx` never replaces a run's weights or a user's file."""
    if not path.is_file():
        return None
    with open(path, "rb") as file:
        head = file.read(4)
    if head.startswith(b"\x80"):
        return "a checkpoint, not an export"
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "not an ONNX or TorchScript export"
        if any("/code/" in name or name.endswith("constants.pkl") for name in names):
            return None  # TorchScript
        return "a checkpoint, not an export"  # torch.save's zip without TorchScript's code
    if is_onnx_model(path):
        return None
    return "not an ONNX or TorchScript export"


def is_onnx_model(path: Path) -> bool:
    """An ONNX ModelProto with a graph (its weights not read); without onnx installed, none is recognised."""
    if importlib.util.find_spec("onnx") is None:
        return False
    import onnx

    try:
        return len(onnx.load_model(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # protobuf's DecodeError and others: not a model
        return False


def choose_format(output: Path, requested: str | None) -> str:
    """--format, else the one the output suffix names; a suffix naming the other format is a mistake."""
    implied = FORMAT_OF_SUFFIX.get(output.suffix.lower())
    if requested is None:
        if implied is None:
            raise UserError(f"cannot tell the format of {output}: end it in .onnx, .pt or .ts, or pass --format")
        return implied
    if implied is not None and implied != requested:
        named = {"onnx": "an ONNX", "torchscript": "a TorchScript"}[implied]
        raise UserError(f"--format {requested} but {output} is {named} file name: "
                        f"rename it or use --format {implied}")
    return requested


def require_onnx_exporter(opset: int) -> None:
    """torch.onnx needs onnx and onnxscript, optional here: check before spending time on the model."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}, not installed here: pip install onnx onnxscript")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UserError(f"--opset {opset} is not supported: use {MIN_OPSET} to {newest} (onnx {onnx.__version__})")


def plain_mask_values(values: list[MaskValue]) -> list[MaskValue]:
    return [[int(c) for c in value] if isinstance(value, (list, tuple)) else int(value) for value in values]


def written_values(model: nn.Module) -> list[MaskValue] | None:
    """The pixel value predict.py writes for each class (0/1 masks as 0/255), or None where no mask file can hold
    the model's values (an old checkpoint's negative labels)."""
    try:
        return plain_mask_values(encoding_table(model.mask_values, model.ignore_value).tolist())
    except UserError:
        return None


def export_metadata(model: nn.Module, checkpoint: dict[str, Any], scale: float) -> dict[str, Any]:
    """What a consumer needs to prepare an image and to turn the logits into a mask like predict.py writes."""
    one_class = model.n_classes == 1
    return {
        "n_channels": model.n_channels,
        "n_classes": model.n_classes,
        "mask_values": plain_mask_values(model.mask_values),
        "written_values": written_values(model),
        "mask_palette": model.mask_palette,
        "scale": scale,
        "bilinear": model.bilinear,
        "base_channels": model.base_channels,
        "input_layout": "NCHW",
        "input_dtype": "float32",
        "input_colour": {1: "L", 3: "RGB", 4: "RGB+band"}.get(model.n_channels),  # the fourth as stored, not alpha
        "input_divisor": 255,
        "input_resize": "bicubic with antialiasing (torch's uint8 kernel; PIL's Image.BICUBIC differs by 1 in a "
                        "few pixels); predict.py decodes a JPEG at reduced size first when scale < 1 (PIL's "
                        "Image.draft to the scaled size), a small change of pixels",
        "input_from_16_bit_or_float": "each image's own range (min to max) stretched to 0..255 first; float images "
                                      "already within 0..1 only multiplied by 255",
        "output": "logits",
        "activation": "sigmoid" if one_class else "softmax",
        "decision": f"sigmoid > {DEFAULT_MASK_THRESHOLD}" if one_class else "argmax",
        "usage": "resize the image to int(scale * side) (see input_resize), divide uint8 pixels by input_divisor "
                 "(16-bit and float images: see input_from_16_bit_or_float); resize logits bilinearly to the image "
                 "size, take the decision; class i is the value mask_values[i] of the training masks, and "
                 "predict.py writes it as written_values[i] (0/1 masks as 0/255, so that they are visible)",
        "source": Path(checkpoint["source"]).name,
    }


def onnx_model_bytes(model: nn.Module, example: torch.Tensor, metadata: dict[str, Any], opset: int) -> bytes:
    """The torch.export-based exporter (the default since torch 2.9): batch, height and width stay symbolic."""
    from torch.export import Dim

    dynamic = {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, input_names=["image"],
                                output_names=["logits"], dynamic_shapes=(dynamic,), verbose=False)
    proto = program.model_proto
    proto.doc_string = "U-Net segmentation: logits from float32 NCHW images / 255; see metadata_props"
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto.SerializeToString()


def save_torchscript(model: nn.Module, example: torch.Tensor, metadata: dict[str, Any], file: BinaryIO) -> None:
    """Traced: tracing records the padding sizes in Up as shape arithmetic, so other input sizes run correctly."""
    with warnings.catch_warnings():
        # torch 2.14 marks TorchScript deprecated; it is still what `torch.jit.load` users need.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, file, _extra_files={METADATA_FILE: json.dumps(metadata)})


def write_atomically(path: Path, data: bytes) -> None:
    """A temporary file beside path, renamed over it when complete: never a half-written model, and the temporary
    file lives only for the write (the export's seconds of work happen in memory before it)."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror}): free disk space or pick another --output") from None


def describe(output: Path, export_format: str, opset: int, metadata: dict[str, Any]) -> str:
    """One line: what was written and how to read its output."""
    size = f"{output.stat().st_size / 2**20:.1f} MiB"
    kind = f"ONNX opset {opset}, dynamic batch/height/width" if export_format == "onnx" else "TorchScript, traced"
    palette = ", palette" if metadata["mask_palette"] else ""
    classes = counted(metadata["n_classes"], "class", "classes")
    return (f"wrote {output} ({kind}, {size}): {classes} ({metadata['activation']}, "
            f"{metadata['decision']}), mask values {metadata['mask_values']}{palette}, scale {metadata['scale']}, "
            f"{metadata['n_channels']}-channel float32 input = uint8 / {metadata['input_divisor']}")


def main(args: argparse.Namespace) -> int:
    args = as_parsed(args, get_args_parser())
    with float32_default():  # the model and its example input float32, whatever a notebook's default dtype
        return export_model(args)


def export_model(args: argparse.Namespace) -> int:
    """export.py's run: the checkpoint loaded, the model traced (TorchScript) or exported (ONNX) with its metadata,
    and written whole."""
    output = Path(args.output)
    export_format = choose_format(output, args.format)
    if where(output) == where(Path(args.model)):
        raise UserError(f"--output {output} is the checkpoint itself: pick another file name")
    if export_format == "onnx":
        require_onnx_exporter(args.opset)
    problem = existing_output_problem(output)
    if problem:
        raise UserError(f"--output {output} exists and is {problem}: pick another file name (an earlier export "
                        "there is replaced, any other file never)")
    model, checkpoint = load_model(args.model, torch.device("cpu"))
    check_output_file(output, "--output")  # after the checks that need no folder, before the export's work
    # Plain fp32 eval-mode weights: load_model's channels_last is a CPU speed choice, not part of the model.
    model = model.to(memory_format=torch.contiguous_format).float().eval()
    metadata = export_metadata(model, checkpoint, inference_scale(checkpoint, args.scale))
    example = torch.rand(EXAMPLE_BATCH, model.n_channels, EXAMPLE_HEIGHT, EXAMPLE_WIDTH,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if export_format == "onnx":
            data = onnx_model_bytes(model, example, metadata, args.opset)
        else:
            buffer = io.BytesIO()
            save_torchscript(model, example, metadata, buffer)
            data = buffer.getvalue()
    write_atomically(output, data)
    print(describe(output, export_format, args.opset, metadata))
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
