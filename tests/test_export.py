"""export.py: ONNX and TorchScript files that run without this repository and say how to read their output."""

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image

import export
from unet import UNet
from utils.checkpoint import load_model, save_checkpoint
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
COLOURS = [[0, 0, 0], [128, 0, 0]]


def images(*shape: int, seed: int = 1) -> torch.Tensor:
    """Float input as the model sees it: uint8 pixels / 255."""
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float() / 255


def with_batchnorm_statistics(model: UNet, seed: int) -> UNet:
    """BatchNorm statistics of one random batch, as training leaves them: logits of order 1 (an untrained
    model's are ~1e-3, too small for a tolerance to mean much), and eval mode differs from training mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    with torch.no_grad():
        model.train()(images(2, model.n_channels, 48, 64, seed=seed))
    return model.eval()


def run_export(*argv: str | Path) -> None:
    export.main(export.get_args_parser().parse_args([str(a) for a in argv]))


def pytorch_logits(checkpoint: Path, batch: torch.Tensor) -> torch.Tensor:
    model, _ = load_model(checkpoint, torch.device("cpu"))
    with torch.no_grad():
        return model(batch)


@pytest.fixture(scope="module")
def colour_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes with colour mask values, trained at scale 0.25, saved as train.py saves it; narrow, as the
    export is the same at any width (the classic width: test_reference_state_dict_exports...)."""
    path = tmp_path_factory.mktemp("colour") / "colour.pth"
    torch.manual_seed(0)
    save_checkpoint(path, with_batchnorm_statistics(UNet(3, 2, base_channels=16), seed=0), COLOURS, scale=0.25)
    return path


@pytest.fixture(scope="module")
def onnx_file(colour_checkpoint: Path) -> Path:
    path = colour_checkpoint.with_name("unet.onnx")
    run_export("-m", colour_checkpoint, "-o", path)  # the format comes from the suffix
    return path


@pytest.fixture(scope="module")
def onnx_session(onnx_file: Path):
    """Run by onnxruntime, as a deployment would, with no torch involved."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])


def test_onnx_matches_pytorch_at_other_sizes_and_batches(onnx_session, colour_checkpoint: Path) -> None:
    session = onnx_session
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", ["batch", 3, "height", "width"])]
    for shape in [(2, 3, 75, 113), (1, 3, 40, 56)]:  # neither is the export size 2x3x64x96; 75x113 pads in Up
        batch = images(*shape)
        (logits,) = session.run(["logits"], {"image": batch.numpy()})
        expected = pytorch_logits(colour_checkpoint, batch)
        assert logits.shape == (shape[0], 2, *shape[2:])
        assert abs(torch.from_numpy(logits) - expected).max().item() < 1e-4


def test_onnx_carries_metadata_and_opset(onnx_file: Path, onnx_session) -> None:
    import onnx

    metadata = {k: json.loads(v) for k, v in onnx_session.get_modelmeta().custom_metadata_map.items()}
    assert metadata["n_classes"] == 2 and metadata["n_channels"] == 3 and metadata["base_channels"] == 16
    assert metadata["mask_values"] == COLOURS
    assert metadata["scale"] == 0.25
    assert metadata["input_divisor"] == 255 and metadata["input_colour"] == "RGB"
    assert (metadata["activation"], metadata["decision"]) == ("softmax", "argmax")
    assert metadata["source"] == "colour.pth"
    model = onnx.load(str(onnx_file), load_external_data=False)
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
        ("", export.DEFAULT_OPSET)]


def test_torchscript_runs_and_reads_metadata_without_this_repository(tmp_path: Path) -> None:
    checkpoint = tmp_path / "binary.pth"
    torch.manual_seed(1)
    save_checkpoint(checkpoint, with_batchnorm_statistics(UNet(3, 1, base_channels=16), seed=1), [0, 255])  # no scale
    run_export("-m", checkpoint, "-o", tmp_path / "unet.pt")
    batch = images(2, 3, 37, 53)
    torch.save(batch, tmp_path / "input.pt")
    consumer = textwrap.dedent("""
        import importlib.util, json, sys, torch
        assert importlib.util.find_spec("unet") is None and importlib.util.find_spec("utils") is None
        extra = {"metadata.json": ""}
        model = torch.jit.load("unet.pt", _extra_files=extra)
        torch.save(model(torch.load("input.pt")).detach(), "output.pt")
        assert not any(name.split(".")[0] in ("unet", "utils", "export") for name in sys.modules)
        print(extra["metadata.json"].decode())
    """)
    # -I: no PYTHONPATH, no current folder on sys.path; the folder holds only the exported files.
    result = subprocess.run([sys.executable, "-I", "-c", consumer], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    metadata = json.loads(result.stdout.strip().splitlines()[-1])
    assert metadata["n_classes"] == 1 and metadata["mask_values"] == [0, 255]
    assert (metadata["activation"], metadata["decision"]) == ("sigmoid", "sigmoid > 0.5")
    assert metadata["scale"] == 0.5  # the reference default, as predict.py would use
    logits = torch.load(tmp_path / "output.pt")
    assert logits.shape == (2, 1, 37, 53)
    assert abs(logits - pytorch_logits(checkpoint, batch)).max().item() < 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("ignore_index, written", [(None, [0, 255]), (255, [0, 1])])
def test_metadata_says_the_values_predict_py_writes(tmp_path: Path, ignore_index: int | None,
                                                     written: list[int]) -> None:
    """Found by a review: the metadata gave 0/1 models' mask_values [0, 1], while predict.py writes their masks
    0/255 (0/1 where 255 means "not labelled"), and nothing told a consumer which. Followed here as the metadata
    says, the exported file gives predict.py's mask pixel for pixel."""
    checkpoint = tmp_path / "binary.pth"
    torch.manual_seed(3)
    save_checkpoint(checkpoint, with_batchnorm_statistics(UNet(3, 2, base_channels=16), seed=3), [0, 1],
                    scale=1.0, args={"ignore_index": ignore_index})
    run_export("-m", checkpoint, "-o", tmp_path / "unet.pt")
    pixels = (images(1, 3, 48, 80, seed=4)[0] * 255).round().to(torch.uint8)
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(tmp_path / "car.png")
    assert run_script("predict.py", "-m", checkpoint, "-i", tmp_path / "car.png", "-o", tmp_path / "mask.png",
                      "--precision", "fp32", "--device", "cpu", cwd=REPO).returncode == 0
    extra = {export.METADATA_FILE: ""}
    model = torch.jit.load(tmp_path / "unet.pt", _extra_files=extra)
    metadata = json.loads(extra[export.METADATA_FILE])
    assert metadata["mask_values"] == [0, 1] and metadata["written_values"] == written
    assert "bicubic" in metadata["input_resize"] and "written_values" in metadata["usage"]
    with torch.no_grad():
        classes = model(pixels[None].float() / metadata["input_divisor"]).argmax(1)[0].numpy()
    expected = np.array(metadata["written_values"])[classes]
    assert 0 < (expected > 0).mean() < 1  # both classes present: the comparison means something
    assert np.array_equal(np.array(Image.open(tmp_path / "mask.png")), expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_reference_state_dict_exports_with_inferred_architecture(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    checkpoint = tmp_path / "reference.pth"
    torch.manual_seed(2)
    torch.save(with_batchnorm_statistics(UNet(3, 3, bilinear=True), seed=2).state_dict(), checkpoint)
    run_export("-m", checkpoint, "-o", tmp_path / "reference.ts", "--scale", "1")
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"wrote {tmp_path / 'reference.ts'} (TorchScript") and "\n" not in printed
    assert "3 classes (softmax, argmax), mask values [0, 1, 2], scale 1.0" in printed
    extra = {export.METADATA_FILE: ""}
    model = torch.jit.load(tmp_path / "reference.ts", _extra_files=extra)
    metadata = json.loads(extra[export.METADATA_FILE])
    assert metadata["bilinear"] is True and metadata["mask_values"] == [0, 1, 2] and metadata["scale"] == 1.0
    assert metadata["base_channels"] == 64
    batch = images(1, 3, 75, 113)
    assert abs(model(batch) - pytorch_logits(checkpoint, batch)).max().item() < 1e-4


def test_missing_checkpoint_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "export.py"), "-m", "missing.pth", "-o", "unet.onnx"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: checkpoint missing.pth does not exist: give --model the path of one (train.py writes "
        "checkpoints/last.pth and best.pth)"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("argv", "message"), [
    (["-o", "unet.bin"], r"cannot tell the format of unet\.bin: end it in \.onnx, \.pt or \.ts"),
    (["-o", "unet.pt", "--format", "onnx"], r"unet\.pt is a TorchScript file name"),
    (["-o", "unet.onnx", "--opset", "17"], r"--opset 17 is not supported: use 18 to"),
    (["-o", "unet.pt", "--scale", "-1"], r"--scale must be above 0 \(the image's size times it\), got -1"),
    (["-o", "unet.pt", "--scale", "nan"], r"--scale must be above 0 .*, got nan"),
])
def test_flag_mistakes_are_user_errors(argv: list[str], message: str, colour_checkpoint: Path) -> None:
    with pytest.raises(UserError, match=message):
        run_export("-m", colour_checkpoint, *argv)


def test_unknown_format_is_refused_by_the_parser(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export.get_args_parser().parse_args(["-o", "unet.onnx", "--format", "tflite"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


def test_missing_onnx_packages_name_the_install_command(colour_checkpoint: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # find_spec reports it as not installed
    with pytest.raises(UserError, match="needs onnxscript, not installed here: pip install onnx onnxscript"):
        run_export("-m", colour_checkpoint, "-o", tmp_path / "unet.onnx")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder_is_a_user_error(colour_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot make the folder .*file for --output \(.*file is a file, "
                                        r"not a folder\): pick "):
        run_export("-m", colour_checkpoint, "-o", tmp_path / "file" / "unet.pt")
    (tmp_path / "models").mkdir()
    with pytest.raises(UserError, match=r"--output .*models is a folder: give a file name"):
        run_export("-m", colour_checkpoint, "-o", tmp_path / "models", "--format", "torchscript")


def test_failed_export_keeps_the_previous_file_and_leaves_no_temporary(
        colour_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "unet.pt"
    with zipfile.ZipFile(output, "w") as archive:  # what an earlier TorchScript export looks like to export.py
        archive.writestr("unet/code/__torch__.py", "previous export")
    before = output.read_bytes()

    def fail_halfway(model, example, metadata, file) -> None:
        file.write(b"half a model")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export, "save_torchscript", fail_halfway)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        run_export("-m", colour_checkpoint, "-o", output)
    assert output.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["unet.pt"]


def test_output_may_not_overwrite_the_checkpoint(colour_checkpoint: Path) -> None:
    with pytest.raises(UserError, match="is the checkpoint itself"):
        run_export("-m", colour_checkpoint, "-o", colour_checkpoint, "--format", "torchscript")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_an_export_replaces_an_earlier_export_but_never_a_checkpoint(colour_checkpoint: Path, tmp_path: Path) -> None:
    """Found by a review: `-o other_run.pt` silently replaced a training checkpoint with a TorchScript file."""
    checkpoint = tmp_path / "best.pt"
    shutil.copy(colour_checkpoint, checkpoint)
    before = checkpoint.read_bytes()
    with pytest.raises(UserError, match=r"--output .*best.pt exists and is a checkpoint, not an export"):
        run_export("-m", colour_checkpoint, "-o", checkpoint)
    assert checkpoint.read_bytes() == before
    export = tmp_path / "unet.pt"
    run_export("-m", colour_checkpoint, "-o", export, "--scale", "0.5")
    run_export("-m", colour_checkpoint, "-o", export)  # an export again: replaced
    extra = {"metadata.json": ""}
    torch.jit.load(export, _extra_files=extra)
    assert json.loads(extra["metadata.json"])["scale"] == 0.25  # the checkpoint's, not the first export's 0.5


def test_only_an_earlier_export_is_replaced_and_a_failed_start_leaves_no_folder(
        colour_checkpoint: Path, onnx_file: Path, tmp_path: Path) -> None:
    """Found by a review: any file that was not a checkpoint (notes, a photo) was silently overwritten, and a
    missing checkpoint left the new --output folder behind."""
    notes, photo = tmp_path / "notes.pt", tmp_path / "photo.onnx"
    notes.write_text("my notes")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo, format="JPEG")
    for target in (notes, photo):
        before = target.read_bytes()
        with pytest.raises(UserError, match=rf"--output .*{target.name} exists and is not an ONNX or TorchScript "
                                            "export: pick another file name"):
            run_export("-m", colour_checkpoint, "-o", target)
        assert target.read_bytes() == before
    assert export.existing_output_problem(onnx_file) is None  # an earlier ONNX export may be replaced
    assert export.existing_output_problem(tmp_path / "absent.onnx") is None
    with pytest.raises(UserError, match="nope.pth"):
        run_export("-m", tmp_path / "nope.pth", "-o", tmp_path / "new" / "unet.pt")
    assert not (tmp_path / "new").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.pt", "photo.onnx"]
