"""Checkpoints: our format and plain reference state_dicts, safe loading, atomic saving, RNG state."""

import copy
import os
import pathlib
import pickle
import random
import resource
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from unet import UNet
from utils.checkpoint import (
    CheckpointWriter,
    check_training_state,
    checkpoint_from_data,
    copy_checkpoint,
    default_mask_values,
    inference_scale,
    load_checkpoint,
    load_model,
    model_args,
    model_from_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    unwrap_model,
)
from utils.errors import UserError


class FakeDDP(nn.Module):
    """Like DistributedDataParallel: the real model is `.module`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


class FakeCompiled(nn.Module):
    """Like torch.compile's OptimizedModule: the real model is `._orig_mod`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._orig_mod = module


class TouchOnUnpickle:
    """A malicious payload: unpickling it calls Path.touch(marker)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class ExecOnUnpickle(TouchOnUnpickle):
    """Arbitrary code: unpickling it runs exec() on a source string that writes the marker."""

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def draw_random_numbers() -> tuple:
    return torch.rand(4), np.random.rand(4), random.random()


def assert_same_draws(first: tuple, second: tuple) -> None:
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


def set_running_stats(model: nn.Module, seed: int) -> None:
    """Non-default BatchNorm buffers, so that a checkpoint that lost them would show."""
    generator = torch.Generator().manual_seed(seed)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)


def outputs(model: UNet, seed: int = 0) -> torch.Tensor:
    """Outputs in one memory layout (load_model may pick channels_last, whose kernels round differently)."""
    x = torch.rand(1, model.n_channels, 19, 23, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()(x)


@pytest.fixture
def ckpt_dir(tmp_path):
    """tmp_path, with the (tens of MB) checkpoint files removed afterwards."""
    yield tmp_path
    for path in tmp_path.rglob("*.pth"):
        if path.is_file():
            path.unlink()


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """One checkpoint written by save_checkpoint from a DDP-like wrapper, with extras and RNG state."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = UNet(n_channels=1, n_classes=3, bilinear=True)
    set_running_stats(model, seed=1)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    state = rng_state()
    expected_draws = draw_random_numbers()
    path = folder / "run.pth"
    save_checkpoint(path, FakeDDP(model), [0, 10, 20], scale=0.5, epoch=3, best_dice=0.75,
                    args={"data": pathlib.Path("data/imgs"), "size": (32, 48), "amp": True}, rng=state)
    yield {"path": path, "model": model, "expected_draws": expected_draws}
    path.unlink(missing_ok=True)


# --- our format -------------------------------------------------------------------------------------


def test_saved_checkpoint_rebuilds_a_model_with_identical_outputs(saved_run):
    checkpoint = load_checkpoint(saved_run["path"])
    rebuilt = model_from_checkpoint(checkpoint)
    assert (rebuilt.n_channels, rebuilt.n_classes, rebuilt.bilinear) == (1, 3, True)
    assert torch.equal(outputs(rebuilt), outputs(saved_run["model"]))
    assert rebuilt.mask_values == [0, 10, 20]


def test_checkpoint_carries_mask_values_model_args_and_extras(saved_run):
    checkpoint = load_checkpoint(saved_run["path"])
    assert checkpoint["format"] == 1
    assert checkpoint["model_args"] == {"n_channels": 1, "n_classes": 3, "bilinear": True, "base_channels": 64}
    assert checkpoint["mask_values"] == [0, 10, 20]
    assert (checkpoint["scale"], checkpoint["epoch"], checkpoint["best_dice"]) == (0.5, 3, 0.75)
    assert checkpoint["args"] == {"data": "data/imgs", "size": [32, 48], "amp": True}  # plain types only
    assert checkpoint["source"] == str(saved_run["path"])


def test_a_narrow_model_keeps_its_width_and_checkpoints_from_before_the_width_existed_are_classic(ckpt_dir):
    torch.manual_seed(0)
    narrow = UNet(n_channels=3, n_classes=2, base_channels=16)
    save_checkpoint(ckpt_dir / "narrow.pth", narrow, [0, 255])
    checkpoint = load_checkpoint(ckpt_dir / "narrow.pth")
    assert checkpoint["model_args"]["base_channels"] == 16
    rebuilt = model_from_checkpoint(checkpoint)
    assert rebuilt.base_channels == 16 and torch.equal(outputs(rebuilt), outputs(narrow))

    classic = UNet(n_channels=3, n_classes=2)
    save_checkpoint(ckpt_dir / "older.pth", classic, [0, 255])
    older = torch.load(ckpt_dir / "older.pth", weights_only=True)
    del older["model_args"]["base_channels"]  # as this project wrote them before the flag
    torch.save(older, ckpt_dir / "older.pth")
    checkpoint = load_checkpoint(ckpt_dir / "older.pth")
    assert checkpoint["model_args"]["base_channels"] == 64
    assert torch.equal(outputs(model_from_checkpoint(checkpoint)), outputs(classic))
    edited = torch.load(ckpt_dir / "narrow.pth", weights_only=True)
    del edited["model_args"]["base_channels"]  # a file put together by hand: the width is read off the weights
    checkpoint = checkpoint_from_data(edited, "edited.pth")
    assert checkpoint["model_args"]["base_channels"] == 16
    assert torch.equal(outputs(model_from_checkpoint(checkpoint)), outputs(narrow))


def test_weights_of_another_width_than_declared_are_refused_naming_both(ckpt_dir):
    save_checkpoint(ckpt_dir / "lying.pth", UNet(n_channels=3, n_classes=2, base_channels=16), [0, 1])
    checkpoint = torch.load(ckpt_dir / "lying.pth", weights_only=True)
    checkpoint["model_args"]["base_channels"] = 32
    torch.save(checkpoint, ckpt_dir / "lying.pth")
    with pytest.raises(UserError, match=r"lying.pth does not fit the U-Net layout UNet\(n_channels=3, n_classes=2, "
                                        r"bilinear=False, base_channels=32\): 'inc.double_conv.0.weight' has shape "
                                        r"\[16, 3, 3, 3\], the layout needs \[32, 3, 3, 3\]"):
        load_checkpoint(ckpt_dir / "lying.pth")


def test_checkpoint_of_wrapped_model_has_the_plain_unet_keys(saved_run):
    checkpoint = load_checkpoint(saved_run["path"])
    assert list(checkpoint["model"]) == list(UNet(1, 3, bilinear=True).state_dict())


def test_save_leaves_no_temporary_file(saved_run):
    assert [p.name for p in saved_run["path"].parent.iterdir()] == ["run.pth"]


def test_rng_state_restored_from_checkpoint_repeats_the_draws(saved_run):
    checkpoint = load_checkpoint(saved_run["path"])  # weights_only=True inside
    draw_random_numbers()  # move all generators on
    restore_rng_state(checkpoint["rng"])
    assert_same_draws(draw_random_numbers(), saved_run["expected_draws"])


def test_copied_checkpoint_keeps_its_content_when_the_source_is_saved_again(ckpt_dir):
    model = UNet(n_channels=1, n_classes=2)
    save_checkpoint(ckpt_dir / "last.pth", model, [0, 1], epoch=1)
    copy_checkpoint(ckpt_dir / "last.pth", ckpt_dir / "best.pth")
    save_checkpoint(ckpt_dir / "last.pth", model, [0, 1], epoch=2)
    assert load_checkpoint(ckpt_dir / "best.pth")["epoch"] == 1
    assert load_checkpoint(ckpt_dir / "last.pth")["epoch"] == 2
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.pth", "last.pth"]


def test_background_writer_saves_the_state_of_the_moment_save_was_called(ckpt_dir):
    model = UNet(n_channels=1, n_classes=2)
    expected = {key: value.clone() for key, value in model.state_dict().items()}
    writer = CheckpointWriter()
    writer.save(ckpt_dir / "last.pth", model, [0, 1], [ckpt_dir / "best.pth"], epoch=1)
    with torch.no_grad():
        for parameter in model.parameters():  # the next optimizer step, racing the write
            parameter.add_(1.0)
    writer.wait()
    for name in ("last.pth", "best.pth"):
        saved = load_checkpoint(ckpt_dir / name)["model"]
        assert all(torch.equal(saved[key], value) for key, value in expected.items()), name


def test_background_writer_raises_a_failed_write_at_the_next_wait(ckpt_dir):
    blocker = ckpt_dir / "not_a_folder"
    blocker.write_text("a file where the checkpoint folder should be")
    writer = CheckpointWriter()
    writer.save(blocker / "last.pth", UNet(n_channels=1, n_classes=2), [0, 1])
    with pytest.raises(UserError, match="cannot write checkpoint"):
        writer.wait()
    writer.wait()  # reported once


def test_a_checkpoint_cut_short_by_a_full_disk_is_called_that(ckpt_dir, monkeypatch):
    """Found by a review: a disk that filled during torch.save gave its zip writer's "unexpected pos ..." only."""
    def short_write(payload, file):  # noqa: ANN001 - what PyTorch raises when the disk takes fewer bytes than sent
        file.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 142876800 vs 142876692")

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(UserError, match=r"cannot write checkpoint .*last.pth \(the disk is full: the file came out "
                                        r"short; [\d,]+ MiB free without it\): free disk space or pick another "
                                        r"--checkpoint-dir"):
        save_checkpoint(ckpt_dir / "last.pth", UNet(n_channels=1, n_classes=2), [0, 1])
    assert not list(ckpt_dir.iterdir())  # no partial file left


def test_foreground_writer_raises_a_failed_write_at_once(ckpt_dir):
    blocker = ckpt_dir / "not_a_folder"
    blocker.write_text("a file where the checkpoint folder should be")
    writer = CheckpointWriter(background=False)
    with pytest.raises(UserError, match="cannot write checkpoint"):
        writer.save(blocker / "last.pth", UNet(n_channels=1, n_classes=2), [0, 1])
    writer.save(ckpt_dir / "last.pth", UNet(n_channels=1, n_classes=2), [0, 1], [ckpt_dir / "best.pth"], epoch=3)
    assert load_checkpoint(ckpt_dir / "best.pth")["epoch"] == 3


def test_load_model_returns_eval_model_and_checkpoint(saved_run):
    model, checkpoint = load_model(saved_run["path"], torch.device("cpu"))
    assert not model.training
    assert checkpoint["scale"] == 0.5
    assert torch.equal(outputs(model), outputs(saved_run["model"]))


# --- plain reference state_dicts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_channels", "n_classes", "bilinear", "base_channels", "mask_values"),
    [(3, 1, False, 64, [0, 255]), (1, 3, False, 16, [0, 10, 20]), (3, 1, True, 64, [0, 1]),
     (1, 3, True, 8, [0, 128, 255])],
    ids=["tconv-1class", "tconv-3class-narrow", "bilinear-1class", "bilinear-3class-narrow"],
)
def test_plain_state_dict_with_mask_values_infers_architecture(ckpt_dir, n_channels, n_classes, bilinear,
                                                               base_channels, mask_values):
    torch.manual_seed(0)
    model = UNet(n_channels, n_classes, bilinear, base_channels)
    set_running_stats(model, seed=2)
    path = ckpt_dir / "reference.pth"
    torch.save({**model.state_dict(), "mask_values": mask_values}, path)
    checkpoint = load_checkpoint(path)
    expected_args = {"n_channels": n_channels, "n_classes": n_classes, "bilinear": bilinear,
                     "base_channels": base_channels}
    assert checkpoint["model_args"] == expected_args
    assert checkpoint["mask_values"] == mask_values
    assert "mask_values" not in checkpoint["model"]
    rebuilt = model_from_checkpoint(checkpoint)
    assert rebuilt.mask_values == mask_values
    assert torch.equal(outputs(rebuilt), outputs(model))


@pytest.fixture(scope="module")
def plain_two_class_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "unet_carvana.pth"
    torch.manual_seed(0)
    torch.save(UNet(n_channels=3, n_classes=2, bilinear=True).state_dict(), path)
    yield path
    path.unlink(missing_ok=True)


def test_plain_state_dict_without_mask_values_gets_0_1_for_two_classes(plain_two_class_file):
    checkpoint = load_checkpoint(plain_two_class_file)
    assert checkpoint["mask_values"] is None
    model = model_from_checkpoint(checkpoint)
    assert (model.n_channels, model.n_classes, model.bilinear) == (3, 2, True)
    assert model.mask_values == [0, 1]


def test_a_model_with_more_classes_than_mask_values_gets_a_value_for_each(ckpt_dir):
    """Found by a review: a --classes 3 run on 0/1 masks stored two values, and predict.py crashed on class 2."""
    path = ckpt_dir / "three_classes.pth"
    torch.save({**UNet(3, 3).state_dict(), "mask_values": [0, 255]}, path)
    assert model_from_checkpoint(load_checkpoint(path)).mask_values == [0, 255, 1]


def test_more_mask_values_than_classes_are_refused(ckpt_dir):
    path = ckpt_dir / "two_classes.pth"
    torch.save({**UNet(3, 2).state_dict(), "mask_values": [0, 127, 255]}, path)
    with pytest.raises(UserError) as error:
        model_from_checkpoint(load_checkpoint(path))
    assert str(error.value) == (f"{path} lists 3 mask values for a model of 2 classes, which cannot predict them "
                                "all: fix its mask_values entry, or drop it")


def test_default_mask_values_by_class_count():
    assert default_mask_values(1) == [0, 1]
    assert default_mask_values(2) == [0, 1]
    assert default_mask_values(4) == [0, 1, 2, 3]


def test_flags_restating_the_weights_are_accepted(plain_two_class_file):
    model = model_from_checkpoint(load_checkpoint(plain_two_class_file), n_classes=2, bilinear=True)
    assert model.n_classes == 2


@pytest.mark.parametrize(
    ("flags", "flag_name"), [({"n_classes": 3}, "--classes"), ({"bilinear": False}, "--bilinear")]
)
def test_flags_contradicting_the_weights_raise_user_error(plain_two_class_file, flags, flag_name):
    with pytest.raises(UserError) as error:
        model_from_checkpoint(load_checkpoint(plain_two_class_file), **flags)
    assert flag_name in str(error.value) and str(plain_two_class_file) in str(error.value)


def test_weights_that_do_not_fit_the_layout_raise_user_error():
    state_dict = UNet(1, 2).state_dict()
    del state_dict["up4.conv.double_conv.4.running_var"]
    checkpoint = {"model": state_dict, "model_args": {"n_channels": 1, "n_classes": 2, "bilinear": False},
                  "source": "broken.pth"}
    with pytest.raises(UserError, match="broken.pth does not fit"):
        model_from_checkpoint(checkpoint)


# --- refusing bad files -----------------------------------------------------------------------------


def write_zip_archive(path: pathlib.Path, payload: object) -> None:
    torch.save({"inc.double_conv.0.weight": torch.zeros(64, 3, 3, 3), "payload": payload}, path)


def write_legacy_archive(path: pathlib.Path, payload: object) -> None:
    torch.save({"inc.double_conv.0.weight": torch.zeros(64, 3, 3, 3), "payload": payload}, path,
               _use_new_zipfile_serialization=False)


def write_raw_pickle(path: pathlib.Path, payload: object) -> None:
    with open(path, "wb") as file:
        pickle.dump(payload, file)


def unsafe_load(path: pathlib.Path) -> None:
    """What an unsafe loader would do: torch.load(weights_only=False), or pickle.load for a raw pickle."""
    try:
        torch.load(path, weights_only=False)
    except Exception:  # the legacy reader takes the payload's result for a magic number; it ran before that
        pass


@pytest.mark.parametrize("payload_type", [TouchOnUnpickle, ExecOnUnpickle], ids=["call", "exec"])
@pytest.mark.parametrize("write", [write_zip_archive, write_legacy_archive, write_raw_pickle],
                         ids=["torch-zip", "torch-legacy", "raw-pickle"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, write, payload_type):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    write(path, payload_type(marker))
    with pytest.raises(UserError, match="refusing to load .*evil.pth: it holds pickled Python objects"):
        load_checkpoint(path)
    assert not marker.exists()
    # The payload is live: an unsafe load does run it (proof that the refusal above mattered).
    unsafe_load(path)
    assert marker.exists()


def test_refusal_names_what_the_payload_needs_and_says_nothing_ran(tmp_path):
    write_zip_archive(tmp_path / "evil.pth", ExecOnUnpickle(tmp_path / "MARKER"))
    with pytest.raises(UserError) as error:
        load_checkpoint(tmp_path / "evil.pth")
    message = str(error.value)
    assert "it needs exec" in message and "nothing in it was run" in message
    assert "\n" not in message and "\x1b" not in message  # one plain line, no torch terminal colours


def test_truncated_checkpoint_raises_user_error_naming_it(saved_run, tmp_path):
    data = saved_run["path"].read_bytes()
    for size in (0, 100, len(data) // 2, len(data) - 16):
        path = tmp_path / f"cut_{size}.pth"
        path.write_bytes(data[:size])
        with pytest.raises(UserError) as error:
            load_checkpoint(path)
        assert str(path) in str(error.value)
        said = str(error.value).replace(str(path), "")  # the test's folder name has "truncated" in it
        assert ("the file is empty" if size == 0 else "it may be truncated") in said
        assert "\n" not in said
        path.unlink()


def test_a_readers_message_is_cut_to_its_first_sentence():
    """Found by a review: torch's text for a truncated legacy file was cut mid-sentence ('there is a high')."""
    from utils.checkpoint import _first_sentence

    assert _first_sentence("Invalid magic number; corrupt file? This happens when a file was cut.\nMore") == \
        "Invalid magic number; corrupt file?"
    assert _first_sentence("failed finding central directory") == "failed finding central directory"
    assert _first_sentence("word " * 100, limit=20) == "word word word word..."


@pytest.mark.parametrize(("name", "content", "said"), [
    ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "is not a PyTorch checkpoint (it is a PNG image)"),
    ("unet.onnx", b"\x08\x08\x12\x07pytorch" + bytes(64), "is not a PyTorch checkpoint (it is an ONNX model"),
    ("notes.pth", b"{}\n", "is not a PyTorch checkpoint (neither a zip archive nor a pickle)"),
])
def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path, name, content, said):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=r"pass the \.pth file train\.py wrote") as error:
        load_checkpoint(tmp_path / name)
    assert f"{tmp_path / name} {said}" in str(error.value)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated, still what export.py writes
def test_a_torchscript_file_is_named_as_one(tmp_path):
    torch.jit.save(torch.jit.trace(nn.Conv2d(3, 2, 1), torch.zeros(1, 3, 4, 4)), tmp_path / "unet.ts")
    with pytest.raises(UserError, match=r"unet\.ts is a TorchScript model, as export\.py writes, not a checkpoint"):
        load_checkpoint(tmp_path / "unet.ts")


def test_missing_checkpoint_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.pth does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


def test_files_that_are_not_unet_checkpoints_raise_user_error(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(UserError, match="not a U-Net checkpoint"):
        load_checkpoint(tmp_path / "tensor.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="other.pth is not a U-Net checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


# --- checking the weights against the architecture -------------------------------------------------


def reference_weights(layout: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict built from the reference's key/shape list, as a user's file would hold it."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) if shape else torch.tensor(7)
            for key, shape in layout["state_dict"].items()}


@pytest.mark.parametrize("with_mask_values", [False, True], ids=["plain", "mask_values"])
@pytest.mark.parametrize("setting", ["c2_tconv", "c1_bilinear", "g1c3_tconv"])
def test_reference_layout_files_load_and_rebuild(ckpt_dir, reference_layouts, setting, with_mask_values):
    layout = reference_layouts[setting]
    weights = reference_weights(layout)
    path = ckpt_dir / "reference.pth"
    torch.save({**weights, "mask_values": [0, 255]} if with_mask_values else weights, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint["model_args"] == {**layout["constructor"], "base_channels": 64}  # the classic width
    model = model_from_checkpoint(checkpoint)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in weights.items())


def write_reference_file(path: pathlib.Path, state_dict: dict) -> pathlib.Path:
    torch.save({**state_dict, "mask_values": [0, 1]}, path)
    return path


@pytest.fixture(scope="module")
def two_class_weights():
    return UNet(n_channels=3, n_classes=2).state_dict()


def test_missing_key_is_refused_naming_it(ckpt_dir, two_class_weights):
    weights = dict(two_class_weights)
    del weights["up4.conv.double_conv.4.running_var"], weights["up4.conv.double_conv.4.running_mean"]
    path = write_reference_file(ckpt_dir / "short.pth", weights)
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "lacks 'up4.conv.double_conv.4.running_mean' (and 1 more)" in message
    assert "UNet(n_channels=3, n_classes=2, bilinear=False)" in message


def test_wrong_shape_is_refused_naming_the_key_and_both_shapes(ckpt_dir, two_class_weights):
    weights = dict(two_class_weights)
    weights["down2.maxpool_conv.1.double_conv.3.weight"] = torch.zeros(256, 256, 5, 5)
    path = write_reference_file(ckpt_dir / "wide.pth", weights)
    with pytest.raises(UserError, match=r"'down2.maxpool_conv.1.double_conv.3.weight' has shape \[256, 256, 5, 5\], "
                                        r"the layout needs \[256, 256, 3, 3\]"):
        load_checkpoint(path)


def test_extra_key_is_refused_naming_it(ckpt_dir, two_class_weights):
    path = write_reference_file(ckpt_dir / "extra.pth", {**two_class_weights, "head.weight": torch.zeros(2)})
    with pytest.raises(UserError, match=r"extra.pth does not fit .*'head.weight' is not part of it"):
        load_checkpoint(path)


def test_non_tensor_and_integer_weights_are_refused(ckpt_dir, two_class_weights):
    path = write_reference_file(ckpt_dir / "list.pth", {**two_class_weights, "outc.conv.bias": [0.0, 0.0]})
    with pytest.raises(UserError, match="'outc.conv.bias' is a list, not a tensor"):
        load_checkpoint(path)
    weights = {**two_class_weights, "inc.double_conv.1.weight": torch.ones(64, dtype=torch.int32)}
    path = write_reference_file(ckpt_dir / "ints.pth", weights)
    with pytest.raises(UserError, match="'inc.double_conv.1.weight' holds torch.int32 values where floating-point"):
        load_checkpoint(path)


def test_half_precision_weights_load(ckpt_dir, two_class_weights):
    weights = {key: value.half() if value.is_floating_point() else value for key, value in two_class_weights.items()}
    model = model_from_checkpoint(load_checkpoint(write_reference_file(ckpt_dir / "half.pth", weights)))
    assert model.outc.conv.weight.dtype == torch.float32
    loaded = model.state_dict()
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[key], value.to(loaded[key].dtype)) for key, value in weights.items())


def test_weights_saved_under_state_dict_load_and_a_unet_inside_another_module_is_named(ckpt_dir, two_class_weights):
    """Found by a review: {"state_dict": ..., "epoch": ...}, as many training scripts save, was "not a U-Net
    checkpoint"; so was a Lightning-style module holding the U-Net as self.model, without the fix."""
    path = ckpt_dir / "state_dict.pth"
    torch.save({"state_dict": two_class_weights, "epoch": 7}, path)
    model = model_from_checkpoint(load_checkpoint(path))
    assert all(torch.equal(model.state_dict()[key], value) for key, value in two_class_weights.items())
    nested = ckpt_dir / "nested.pth"
    torch.save({"state_dict": {f"model.{key}": value for key, value in two_class_weights.items()}}, nested)
    with pytest.raises(UserError, match=r"nested\.pth holds a U-Net inside another module \(its weights are named "
                                        r"'model\.inc\.\.\.'\): save that part's own state_dict \(e\.g\. "
                                        r"torch\.save\(module\.model\.state_dict\(\), 'unet\.pth'\)\)"):
        load_checkpoint(nested)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_weights_saved_from_a_ddp_or_compiled_model_load(ckpt_dir, two_class_weights, prefix):
    """Users save model.state_dict() of the wrapper they trained: the same weights under prefixed names."""
    path = write_reference_file(ckpt_dir / "wrapped.pth", {prefix + k: v for k, v in two_class_weights.items()})
    model = model_from_checkpoint(load_checkpoint(path))
    assert model.state_dict().keys() == two_class_weights.keys()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in two_class_weights.items())
    assert model.mask_values == [0, 1]


def test_weights_partly_under_a_wrapper_name_are_refused_with_the_fix(ckpt_dir, two_class_weights):
    weights = {("module." + k if k.startswith("inc.") else k): v for k, v in two_class_weights.items()}
    path = write_reference_file(ckpt_dir / "mixed.pth", weights)
    with pytest.raises(UserError, match=r"wrapped model \('module.inc.double_conv.0.weight'\): save the plain"):
        load_checkpoint(path)


@pytest.mark.parametrize(("entry", "said"), [
    ({"mask_values": [[0, 0, 0], 255]}, "mask_values is [[0, 0, 0], 255], not a list of labels (whole numbers) or "
                                        "of r, g, b colours (0 to 255): fix or drop the entry"),
    ({"mask_values": [0, "5"]}, "mask_values is [0, '5'], not a list of labels"),
    ({"mask_values": [0, 0.5]}, "mask_values is [0, 0.5], not a list of labels"),
    ({"mask_values": []}, "mask_values is [], not a list of labels"),
    ({"mask_values": [[0, 0], [1, 1]]}, "mask_values is [[0, 0], [1, 1]], not a list of labels"),
    ({"mask_values": [[0, 0, 0], [0, 0, 300]]}, "mask_values is [[0, 0, 0], [0, 0, 300]], not a list of labels"),
    ({"mask_values": [[0, 0, 0], [0, 0, -1]]}, "mask_values is [[0, 0, 0], [0, 0, -1]], not a list of labels"),
    ({"mask_values": [0, 0]}, "mask_values [0, 0] repeats a value, so two classes would be written alike: fix or "
                              "drop the entry"),
    ({"mask_palette": "abc"}, "mask_palette is 'abc', not a list of up to 256 r, g, b triples (whole numbers 0 to "
                              "255): fix or drop the entry"),
    ({"mask_palette": [1000] * 768}, "mask_palette is [1000, 1000,"),
    ({"mask_palette": [0, 0]}, "mask_palette is [0, 0], not a list of up to 256 r, g, b triples"),
    ({"args": {"binarize": "foo"}}, "args['binarize'] is 'foo', not a threshold (a whole number of 0 or more): fix "
                                    "or drop the entry"),
    ({"args": {"ignore_index": "255"}}, "args['ignore_index'] is '255', not a mask value (a whole number)"),
])
def test_metadata_that_would_write_wrong_masks_is_refused_in_one_line(ckpt_dir, entry, said):
    """Found by a review: such entries crashed the mask writer, or wrote every class alike, or wrapped -1 to 255."""
    path = ckpt_dir / "edited.pth"
    save_checkpoint(path, UNet(n_channels=3, n_classes=2), [0, 255])
    checkpoint = torch.load(path, weights_only=True)
    checkpoint.update(entry)
    torch.save(checkpoint, path)
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: {said}")


def test_weights_under_model_without_model_args_load_like_a_plain_state_dict(ckpt_dir):
    """{"model": state_dict, "epoch": 3} is how many users save; the architecture is read off the weights."""
    model = UNet(n_channels=1, n_classes=3, bilinear=True)
    path = ckpt_dir / "user_saved.pth"
    torch.save({"model": model.state_dict(), "epoch": 3, "mask_values": [0, 9, 20]}, path)
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    assert (rebuilt.n_channels, rebuilt.n_classes, rebuilt.bilinear) == (1, 3, True)
    assert rebuilt.mask_values == [0, 9, 20]
    assert all(torch.equal(rebuilt.state_dict()[key], value) for key, value in model.state_dict().items())


def test_labels_beyond_an_image_file_load_and_are_refused_only_by_the_mask_writer(ckpt_dir):
    """Found by a review: .npy masks train with labels like 70000 or -5, and their own checkpoints must resume and
    evaluate; only writing a mask image cannot hold them."""
    from utils.mask_encoding import encoding_table

    path = ckpt_dir / "npy_labels.pth"
    save_checkpoint(path, UNet(n_channels=3, n_classes=3), [-5, 0, 70000])
    assert model_from_checkpoint(load_checkpoint(path)).mask_values == [-5, 0, 70000]
    with pytest.raises(UserError) as error:
        encoding_table([-5, 0, 70000])
    assert str(error.value) == ("the model's mask values [-5, 0, 70000] include -5, which no 8- or 16-bit mask image "
                                "can hold: train on masks with labels from 0 to 65535 to predict mask files")
    # probabilities and the CSV need no mask image: predict.py --no-save writes them for such a model
    from conftest import run_script
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(ckpt_dir / "image.png")
    result = run_script("predict.py", "-m", path, "-i", "image.png", "-o", "out.png", "--no-save", "--save-probs",
                        "--csv", "scores.csv", "--scale", "1", cwd=ckpt_dir)
    assert result.returncode == 0, result.stderr
    assert np.load(ckpt_dir / "out_probs.npy").shape == (3, 32, 32) and not (ckpt_dir / "out.png").exists()
    header, row = (ckpt_dir / "scores.csv").read_text().splitlines()
    assert header.split(",")[-3:] == ["fraction_0", "fraction_1", "fraction_2"] and len(row.split(",")) == 7


def test_whole_number_mask_values_of_other_types_are_read_as_ints(ckpt_dir, two_class_weights):
    for stored, read in (([0.0, 255.0], [0, 255]), ([False, True], [0, 1]), ((0, 7), [0, 7]),
                         ([[0.0, 0.0, 0.0], [255.0, 0.0, 0.0]], [[0, 0, 0], [255, 0, 0]])):
        path = ckpt_dir / "typed.pth"
        torch.save({**two_class_weights, "mask_values": stored}, path)
        assert load_checkpoint(path)["mask_values"] == read


def test_declared_architecture_that_contradicts_the_weights_is_refused(ckpt_dir):
    path = ckpt_dir / "lying.pth"
    save_checkpoint(path, UNet(n_channels=1, n_classes=2, bilinear=True), [0, 1])
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model_args"]["bilinear"] = False
    torch.save(checkpoint, path)
    with pytest.raises(UserError, match=r"lying.pth does not fit .*bilinear=False\): it lacks 'up1.up.weight'"):
        load_checkpoint(path)


@pytest.mark.parametrize(("entry", "value", "complaint"), [
    ("model_args", {"n_channels": 3, "n_classes": "2", "bilinear": False}, "n_classes is '2', not a positive"),
    ("model_args", [3, 2, False], "model_args is [3, 2, False]"),
    ("model_args", {"n_channels": 3, "n_classes": 2, "bilinear": False, "base_channels": 0},
     "base_channels is 0, not a positive"),
    ("model_args", {"n_channels": 3, "n_classes": 2, "bilinear": False, "base_channels": 2**40},
     "base_channels is 1099511627776, more than the 256 a U-Net is built with"),
    ("model", [1, 2], "its weights are a list, not a state_dict"),
    ("mask_values", "0,255", "mask_values is '0,255', not a list"),
    ("scale", -1.0, "scale is -1.0, not a positive number: fix or drop the entry (e.g. del checkpoint['scale'], "
                    "then torch.save it again)"),  # not "or pass --scale", read before --scale (a message audit)
    ("format", 99, "format 99; this code reads format 1"),
    ("wandb_run", 5, "wandb_run is 5, not a wandb run id"),
    ("epoch_loss", [1.5], "epoch_loss is [1.5], not the loss sum of the epoch's batches so far (a number)"),
    ("epoch_loss", [2.9, float("nan")], "epoch_loss is [2.9, nan], not the loss sum"),
    ("epoch_loss", True, "epoch_loss is True, not the loss sum"),
])
def test_malformed_entries_are_one_line_naming_the_entry(ckpt_dir, entry, value, complaint):
    path = ckpt_dir / "odd.pth"
    save_checkpoint(path, UNet(n_channels=1, n_classes=2, bilinear=True), [0, 1], scale=0.5)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint[entry] = value
    torch.save(checkpoint, path)
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and complaint in str(error.value)


def test_nan_weights_load_with_a_warning_naming_the_key(ckpt_dir, two_class_weights, capsys):
    weights = {**two_class_weights, "up3.conv.double_conv.0.weight": torch.full((128, 256, 3, 3), float("nan"))}
    load_checkpoint(write_reference_file(ckpt_dir / "diverged.pth", weights))
    assert "'up3.conv.double_conv.0.weight' holds NaN or infinite values" in capsys.readouterr().err


# --- the training state that resuming reads ----------------------------------------------------------


@pytest.fixture(scope="module")
def training_state():
    """What train.py saves: AdamW after one step (so its moments exist), cosine schedule, scaler, RNG."""
    torch.manual_seed(0)
    model = UNet(n_channels=1, n_classes=2, bilinear=True)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    model(torch.rand(2, 1, 16, 16)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "epoch": 2, "step": 20,
                   "best_dice": 0.5, "rng": rng_state()}


@pytest.fixture(scope="module")
def resumable_file(tmp_path_factory, training_state):
    model, state = training_state
    path = tmp_path_factory.mktemp("resume") / "last.pth"
    save_checkpoint(path, model, [0, 1], **state)
    yield path
    path.unlink(missing_ok=True)


def test_training_state_written_by_training_passes(resumable_file):
    check_training_state(load_checkpoint(resumable_file), resumable_file)


def test_weights_only_file_is_refused_for_resume(plain_two_class_file):
    with pytest.raises(UserError, match="holds weights only, no training state: use --load"):
        check_training_state(load_checkpoint(plain_two_class_file), plain_two_class_file)


@pytest.fixture(scope="module")
def resumable_state(resumable_file):
    return load_checkpoint(resumable_file)


@pytest.mark.parametrize(("change", "complaint"), [
    (lambda c: c.pop("scheduler"), "lacks the training state entry 'scheduler'"),
    (lambda c: c.update(epoch="3"), "training state 'epoch' is '3', not a non-negative int"),
    (lambda c: c.update(step=-1), "training state 'step' is -1, not a non-negative int"),
    (lambda c: c.update(best_dice=None), "training state 'best_dice' is None, not a number"),
    (lambda c: c.update(epoch_batches=2.5), "training state 'epoch_batches' is 2.5, not a non-negative int"),
    (lambda c: c.update(scaler=[]), "training state 'scaler' is a list, not a dict"),
    (lambda c: c.update(validation_images="a.png"), "'validation_images' is 'a.png', not a list of names"),
    (lambda c: c.update(training_images=-2), "training state 'training_images' is -2, not a non-negative int"),
    (lambda c: c["rng"].pop("numpy"), "'rng' lacks the python/numpy/torch generator states"),
    (lambda c: c["optimizer"].pop("param_groups"), "'optimizer' is not an optimizer state_dict"),
    (lambda c: c["optimizer"]["param_groups"][0]["params"].pop(), "optimizer state covers 55 parameters"),
    (lambda c: c["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)),
     "optimizer 'exp_avg' of 'inc.double_conv.0.weight' has shape [3], the parameter [64, 1, 3, 3]"),
    (lambda c: c["optimizer"]["state"][0].update(exp_avg_sq=torch.full((64, 1, 3, 3), float("nan"))),
     "optimizer 'exp_avg_sq' of 'inc.double_conv.0.weight' holds NaN or infinite values"),
], ids=["missing", "epoch-str", "negative-step", "best-none", "epoch-batches", "scaler-list", "validation-names",
        "training-count", "rng", "optimizer-shape", "parameter-count", "moment-shape", "moment-nan"])
def test_malformed_training_state_is_one_line_naming_the_entry(resumable_file, resumable_state, change, complaint):
    checkpoint = copy.deepcopy(resumable_state)
    change(checkpoint)
    with pytest.raises(UserError) as error:
        check_training_state(checkpoint, resumable_file)
    assert str(resumable_file) in str(error.value) and complaint in str(error.value)
    assert f"--load {resumable_file}" in str(error.value)


def test_non_finite_weights_are_refused_for_resume(resumable_state):
    """Resuming them would only spread NaN and save it over last.pth (predict.py and --load only warn)."""
    checkpoint = copy.deepcopy(resumable_state)
    checkpoint["model"]["outc.conv.bias"][0] = float("inf")
    with pytest.raises(UserError, match="last.pth: weight 'outc.conv.bias' holds NaN or infinite values, so training "
                                        "cannot go on from it: resume from best.pth or an epoch_N.pth"):
        check_training_state(checkpoint, "last.pth")


def test_optimizer_state_of_another_architecture_is_refused(resumable_state):
    other = torch.optim.AdamW(UNet(n_channels=1, n_classes=2, bilinear=False).parameters()).state_dict()
    checkpoint = {**resumable_state, "optimizer": other}
    with pytest.raises(UserError, match=r"covers 64 parameters, UNet\(n_channels=1, n_classes=2, bilinear=True\) "
                                        r"has 56"):
        check_training_state(checkpoint, "last.pth")


# --- unwrap_model -----------------------------------------------------------------------------------


def test_unwrap_model_finds_the_unet_in_wrappers():
    net = UNet(1, 1, bilinear=True)
    assert unwrap_model(net) is net
    assert unwrap_model(FakeDDP(net)) is net
    assert unwrap_model(FakeCompiled(net)) is net
    assert unwrap_model(FakeDDP(FakeCompiled(net))) is net
    assert model_args(FakeCompiled(FakeDDP(net))) == {"n_channels": 1, "n_classes": 1, "bilinear": True,
                                                      "base_channels": 64}


def test_unwrap_model_refuses_modules_without_a_unet():
    with pytest.raises(TypeError, match="Linear does not wrap a UNet"):
        unwrap_model(nn.Linear(2, 2))
    with pytest.raises(TypeError):
        unwrap_model(FakeDDP(nn.Linear(2, 2)))


# --- atomic saving ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_unet():
    torch.manual_seed(0)
    return UNet(n_channels=1, n_classes=1, bilinear=True)


def test_save_into_new_folder_creates_it_and_leaves_only_the_file(ckpt_dir, small_unet):
    path = ckpt_dir / "nested" / "deeper" / "best.pth"
    save_checkpoint(path, small_unet, [0, 255])
    assert [p.name for p in path.parent.iterdir()] == ["best.pth"]
    assert load_checkpoint(path)["mask_values"] == [0, 255]


def test_save_replaces_an_existing_checkpoint(ckpt_dir, small_unet):
    path = ckpt_dir / "last.pth"
    save_checkpoint(path, small_unet, [0, 1], epoch=1)
    save_checkpoint(path, small_unet, [0, 1], epoch=2)
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in ckpt_dir.iterdir()] == ["last.pth"]


def test_save_under_an_image_name_is_refused_and_the_image_kept(ckpt_dir, small_unet):
    """A notebook slip (save_checkpoint("photo.png", ...)) must not replace the photo; .pt stays allowed."""
    photo = ckpt_dir / "photo.PNG"
    photo.write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match=r"photo\.PNG: that is an image's name; give a name ending in \.pth"):
        save_checkpoint(photo, small_unet, [0, 1])
    assert photo.read_bytes() == b"\x89PNG not really"
    with pytest.raises(UserError, match="that is an image's name"):  # a phone's photo, which the tools do not read
        save_checkpoint(ckpt_dir / "IMG_0001.HEIC", small_unet, [0, 1])
    save_checkpoint(ckpt_dir / "model.pt", small_unet, [0, 1])
    assert load_checkpoint(ckpt_dir / "model.pt")["mask_values"] == [0, 1]


def test_save_onto_a_directory_raises_user_error_and_cleans_up(ckpt_dir, small_unet):
    target = ckpt_dir / "best.pth"
    target.mkdir()
    with pytest.raises(UserError, match="cannot write checkpoint"):
        save_checkpoint(target, small_unet, [0, 1])
    assert [p.name for p in ckpt_dir.iterdir()] == ["best.pth"]
    assert target.is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_save_into_read_only_folder_raises_user_error(ckpt_dir, small_unet):
    folder = ckpt_dir / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write checkpoint"):
            save_checkpoint(folder / "best.pth", small_unet, [0, 1])
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_save_where_the_folder_is_a_file_raises_user_error(ckpt_dir, small_unet):
    (ckpt_dir / "checkpoints").write_text("not a folder")
    with pytest.raises(UserError, match="cannot write checkpoint"):
        save_checkpoint(ckpt_dir / "checkpoints" / "best.pth", small_unet, [0, 1])


def test_failed_write_raises_user_error_and_leaves_no_temporary_file(ckpt_dir, small_unet):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # writes past 1 MiB fail like a full disk
    try:
        with pytest.raises(UserError, match="cannot write checkpoint"):
            save_checkpoint(ckpt_dir / "best.pth", small_unet, [0, 1])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        leftovers = sorted(p.name for p in ckpt_dir.iterdir())
        for path in ckpt_dir.iterdir():
            path.unlink()
    assert leftovers == []


# --- RNG state --------------------------------------------------------------------------------------


def test_rng_state_round_trip_repeats_torch_numpy_and_python_draws():
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    state = rng_state()
    first = draw_random_numbers()
    restore_rng_state(state)
    assert_same_draws(draw_random_numbers(), first)


def test_rng_state_survives_weights_only_save_and_load(tmp_path):
    torch.manual_seed(8)
    np.random.seed(8)
    random.seed(8)
    torch.save(rng_state(), tmp_path / "rng.pt")
    first = draw_random_numbers()
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert_same_draws(draw_random_numbers(), first)


def test_inference_scale_prefers_flag_then_checkpoint_then_half():
    assert inference_scale({"scale": 0.25}, 1.0) == 1.0
    assert inference_scale({"scale": 0.25}, None) == 0.25
    assert inference_scale({}, None) == 0.5


def test_resume_keeps_the_runs_settings_and_names_each_flag_it_overrides(tmp_path: pathlib.Path) -> None:
    import train

    resumed = {"model_args": {"n_classes": 3, "n_channels": 3, "bilinear": False, "base_channels": 64},
               "scale": 0.25,
               "args": {"batch_size": 4, "binarize": False, "ignore_index": None, "class_weights": None,
                        "augment": "light"}}
    args = train.get_args_parser().parse_args(["--batch-size", "8", "--scale", "0.25", "--classes", "3"])
    lines = train.keep_run_settings(args, resumed, tmp_path / "last.pth")
    assert args.batch_size == 4 and args.scale == 0.25 and args.classes == 3
    assert lines == [f"note: {tmp_path / 'last.pth'} continues with --batch-size 4; --batch-size 8 is ignored "
                     "(start a new run to change it)"]  # flags left at their defaults, or equal, pass silently
    args = train.get_args_parser().parse_args(["--crop", "32", "--ignore-index", "255", "--bilinear"])
    assert train.keep_run_settings(args, {**resumed, "args": {**resumed["args"], "crop": None}}, tmp_path / "l.pth") \
        == [f"note: {tmp_path / 'l.pth'} continues {said}; {typed} is ignored (start a new run to change it)"
            for said, typed in (("without --bilinear", "--bilinear"), ("without --ignore-index", "--ignore-index 255"),
                                ("without --crop", "--crop 32x32"))]  # not "--crop None" (a message audit)


def test_resume_keeps_the_runs_width(tmp_path: pathlib.Path) -> None:
    import train

    resumed = {"model_args": {"n_classes": 2, "n_channels": 3, "bilinear": False, "base_channels": 16}, "args": {}}
    args = train.get_args_parser().parse_args([])
    assert train.keep_run_settings(args, resumed, tmp_path / "last.pth") == [] and args.base_channels == 16
    args = train.get_args_parser().parse_args(["--base-channels", "32"])
    assert train.keep_run_settings(args, resumed, tmp_path / "last.pth") == [
        f"note: {tmp_path / 'last.pth'} continues with --base-channels 16; --base-channels 32 is ignored (start a "
        "new run to change it)"]
    assert args.base_channels == 16


def test_resume_takes_seed_and_augmentation_left_out_and_names_a_flag_typed_at_its_default(
        tmp_path: pathlib.Path) -> None:
    """Found by a review: `--resume auto -e 10` (the README's example) went on with seed 0 and light augmentation
    instead of the run's 7 and strong, without a word; a typed --scale 0.5 against a run at 1.0 got no note."""
    import train

    resumed = {"model_args": {"n_classes": 2, "n_channels": 3, "bilinear": False, "base_channels": 64},
               "scale": 1.0,
               "args": {"batch_size": 2, "binarize": None, "ignore_index": None, "class_weights": None,
                        "seed": 7, "augment": "strong", "grad_clip": 0.5}}
    args = train.get_args_parser().parse_args(["--resume", "auto", "-e", "10"])
    assert train.keep_run_settings(args, resumed, tmp_path / "last.pth") == []
    assert (args.seed, args.augment, args.grad_clip, args.scale, args.epochs) == (7, "strong", 0.5, 1.0, 10)
    args = train.get_args_parser().parse_args(["--resume", "auto", "--scale", "0.5", "--seed", "7"])
    assert train.keep_run_settings(args, resumed, tmp_path / "last.pth") == [
        f"note: {tmp_path / 'last.pth'} continues with --scale 1.0; --scale 0.5 is ignored (start a new run to "
        "change it)"]  # the typed seed equals the run's: nothing to say


def test_a_run_saved_before_augmentation_existed_resumes_without_it_and_says_so(tmp_path: pathlib.Path) -> None:
    """Found by a review of old runs: a first-day run (its args hold no 'augment', it had none) resumed with
    today's default light augmentation, without a word."""
    import train

    resumed = {"model_args": {"n_classes": 2, "n_channels": 3, "bilinear": False, "base_channels": 64},
               "scale": 0.5, "args": {"batch_size": 2, "seed": 0, "grad_clip": 1.0}}
    last = tmp_path / "last.pth"
    args = train.get_args_parser().parse_args(["--resume", "auto"])
    assert train.keep_run_settings(args, resumed, last) == [
        f"note: {last} was written by a version without --augment: it continues as it trained, with --augment none"]
    assert args.augment == "none"
    args = train.get_args_parser().parse_args(["--resume", "auto", "--augment", "strong"])
    assert train.keep_run_settings(args, resumed, last) == [
        f"note: {last} continues with --augment none; --augment strong is ignored (start a new run to change it)"]
    args = train.get_args_parser().parse_args(["--resume", "auto"])
    assert train.keep_run_settings(args, {**resumed, "args": {**resumed["args"], "augment": "light"}}, last) == []
    assert args.augment == "light"  # today's runs: as saved
    cropped = {**resumed, "args": {**resumed["args"], "augment": "light", "crop": [32, 32]}}  # before baee070
    args = train.get_args_parser().parse_args(["--resume", "auto"])
    assert train.keep_run_settings(args, cropped, last) == [
        f"note: {last} was written by a version without --crop-foreground: it continues as it trained, with "
        "--crop-foreground 0.0"] and args.crop_foreground == 0.0  # windows anywhere, as then (a code review)
    args = train.get_args_parser().parse_args(["--resume", "auto"])
    assert train.keep_run_settings(args, {**resumed, "args": {**resumed["args"], "augment": "light"}}, last) == []
    assert args.crop_foreground == 0.0  # without --crop it decides nothing: set, not said


def test_resume_keeps_the_runs_save_every_and_keep_epochs_unless_typed(tmp_path: pathlib.Path) -> None:
    """Found by a review: `--resume auto` after a SIGKILL went on without the run's --save-every 1 and
    --keep-epochs, without a word: the next kill lost a whole epoch, and no more epoch_N.pth were kept."""
    import train

    resumed = {"model_args": {"n_classes": 2, "n_channels": 3, "bilinear": False, "base_channels": 64},
               "scale": 0.5, "args": {"batch_size": 1, "save_every": "1", "keep_epochs": True, "augment": "light"}}
    last = tmp_path / "last.pth"
    args = train.get_args_parser().parse_args(["--resume", "auto"])
    assert train.keep_run_settings(args, resumed, last) == [
        f"note: {last} goes on with its own --save-every 1 (give --save-every to change it, 0 to stop)",
        f"note: {last} goes on with its own --keep-epochs (give --no-keep-epochs to stop keeping each epoch)"]
    assert (args.save_every, args.keep_epochs) == ("1", True)
    args = train.get_args_parser().parse_args(["--resume", "auto", "--save-every", "15m", "--no-keep-epochs"])
    assert train.keep_run_settings(args, resumed, last) == [] and (args.save_every, args.keep_epochs) == ("15m", False)
    args = train.get_args_parser().parse_args(["--resume", "auto", "--save-every", "0"])  # found by a review
    assert train.keep_run_settings(args, resumed, last)[-1].endswith("--keep-epochs (give --no-keep-epochs to stop "
                                                                     "keeping each epoch)")
    assert args.save_every == "0" and train.parse_save_every(args.save_every) == (None, None)
    resumed["args"]["save_every"] = "often"  # hand-edited: left out, not an error about a flag not typed
    args = train.get_args_parser().parse_args(["--resume", "auto"])
    assert len(train.keep_run_settings(args, resumed, last)) == 1 and args.save_every is None


def test_resume_keeps_the_runs_max_bad_steps_unless_typed(tmp_path: pathlib.Path) -> None:
    """Found in the 14th session: a resumed run fell back to the default 20 and would train on through 19 bad
    steps in a row that its run had been told to stop at 3."""
    import train

    resumed = {"model_args": {"n_classes": 2, "n_channels": 3, "bilinear": False, "base_channels": 64},
               "scale": 0.5,
               "args": {"batch_size": 1, "epochs": 5, "max_bad_steps": 3, "augment": "light"}}
    args = train.get_args_parser().parse_args(["--resume", "auto"])
    assert train.keep_run_settings(args, resumed, tmp_path / "last.pth") == [
        f"note: {tmp_path / 'last.pth'} goes on with its own --epochs 5 (give --epochs to train longer or shorter)",
        f"note: {tmp_path / 'last.pth'} goes on with its own --max-bad-steps 3 (give --max-bad-steps to change it)"]
    assert args.max_bad_steps == 3
    args = train.get_args_parser().parse_args(["--resume", "auto", "--max-bad-steps", "20"])
    notes = train.keep_run_settings(args, resumed, tmp_path / "last.pth")
    assert not [note for note in notes if "max-bad-steps" in note]  # typed, also at its default
    assert args.max_bad_steps == 20


@pytest.mark.parametrize(("stored", "given", "kept"), [(True, [], 0), (True, ["--binarize"], 0), (False, [], None),
                                                       (127, ["--binarize", "127"], 127)])
def test_resume_reads_binarize_as_stored_also_the_true_false_of_older_checkpoints(
        tmp_path: pathlib.Path, stored: bool | int, given: list[str], kept: int | None) -> None:
    import train

    resumed = {"model_args": {"n_classes": 2, "n_channels": 3, "bilinear": False, "base_channels": 64},
               "scale": 0.5,
               "args": {"batch_size": 1, "binarize": stored, "ignore_index": None, "class_weights": None,
                        "augment": "light"}}
    args = train.get_args_parser().parse_args(["--batch-size", "1", *given])
    assert train.keep_run_settings(args, resumed, tmp_path / "last.pth") == []  # the same setting: no note
    assert args.binarize == kept


def test_a_loaded_model_carries_the_palette_predict_writes_and_export_lists(tmp_path: pathlib.Path) -> None:
    """Found by a review: a checkpoint's short palette (two entries for five classes) reached the hub model and the
    export metadata as stored, and a consumer's PNG made with it cut classes 2-4 (a 1-bit PNG)."""
    import export

    save_checkpoint(tmp_path / "run.pth", UNet(3, 5), [0, 1, 2], mask_palette=[0, 0, 0, 255, 0, 0])
    model, checkpoint = load_model(tmp_path / "run.pth", torch.device("cpu"))
    assert model.mask_values == [0, 1, 2, 3, 4] and len(model.mask_palette) == 768
    colours = {tuple(model.mask_palette[3 * value: 3 * value + 3]) for value in model.mask_values}
    assert len(colours) == 5 and model.mask_palette[:6] == [0, 0, 0, 255, 0, 0]
    assert export.export_metadata(model, checkpoint, 0.5)["mask_palette"] == model.mask_palette


def test_resume_keeps_a_runs_full_precision_unless_typed(tmp_path: pathlib.Path) -> None:
    """Found by a review: a run trained with --precision fp32 went on in bf16 after `--resume auto` on a CPU
    with bf16, without a word; precisions picked by the machine (auto, bf16, fp16) still follow the machine."""
    import train

    resumed = {"model_args": {"n_classes": 2, "n_channels": 3, "bilinear": False, "base_channels": 64},
               "scale": 0.5, "args": {"batch_size": 1, "precision": "fp32", "augment": "light"}}
    last = tmp_path / "last.pth"
    args = train.get_args_parser().parse_args(["--resume", "auto"])
    assert train.keep_run_settings(args, resumed, last) == [
        f"note: {last} goes on with its own --precision fp32 (give --precision auto or --amp to change it)"]
    assert args.precision == "fp32"
    for typed in (["--precision", "auto"], ["--amp"]):  # --amp: the fix train.py's out-of-memory message gives
        args = train.get_args_parser().parse_args(["--resume", "auto", *typed])
        assert train.keep_run_settings(args, resumed, last) == [] and args.precision == "auto"
    resumed["args"]["precision"] = "bf16"  # a GPU's choice: a CPU resume picks its own
    args = train.get_args_parser().parse_args(["--resume", "auto"])
    assert train.keep_run_settings(args, resumed, last) == [] and args.precision == "auto"


def test_a_tiny_file_declaring_a_huge_model_is_refused_before_any_allocation(tmp_path) -> None:
    """Found by a review of untrusted files: tensors saved as torch.zeros(()).expand(shape) store one value, so a
    37 KB file declaring n_channels 10**8 (or the widest U-Net) made every script allocate gigabytes and fail with
    an allocation traceback."""
    model = UNet(3, 2, base_channels=8)
    state = {key: (torch.zeros((), dtype=value.dtype).expand(value.shape) if key == "inc.double_conv.0.weight"
                   else value) for key, value in model.state_dict().items()}
    torch.save({"model": state, "model_args": {"n_channels": 3, "n_classes": 2, "bilinear": False,
                                               "base_channels": 8}, "mask_values": [0, 1]}, tmp_path / "tiny.pth")
    with pytest.raises(UserError, match=r"'inc.double_conv.0.weight' holds fewer values than its shape \[8, 3, 3, 3\] "
                                        r"\(one value repeated\): it was not saved from a trained model"):
        load_model(tmp_path / "tiny.pth", torch.device("cpu"))
    sparse = {**model.state_dict(), "outc.conv.bias": model.state_dict()["outc.conv.bias"].to_sparse()}
    torch.save({**sparse, "mask_values": [0, 1]}, tmp_path / "sparse.pth")  # found by the code review: a traceback
    with warnings.catch_warnings(), pytest.raises(
            UserError, match=r"'outc.conv.bias' is a sparse tensor \(torch.sparse_coo\): re-save the weights dense"):
        warnings.filterwarnings("ignore", "Validating sparse", UserWarning)  # torch 2.14's own note on loading one
        load_model(tmp_path / "sparse.pth", torch.device("cpu"))
    save_checkpoint(tmp_path / "many.pth", UNet(3, 2, base_channels=8), [0, 1])
    checkpoint = torch.load(tmp_path / "many.pth", weights_only=True)
    checkpoint["model_args"]["n_classes"] = 50_000_000
    torch.save(checkpoint, tmp_path / "many.pth")
    with pytest.raises(UserError, match="model_args n_classes is 50000000, more than the 65536 mask values"):
        load_model(tmp_path / "many.pth", torch.device("cpu"))


@pytest.mark.parametrize(("entry", "value", "complaint"), [
    ("scale", float("inf"), "scale is inf, not a positive number"),
    ("mask_values", [0, 10**40], "mask_values is .*, not a list of labels"),
])
def test_metadata_that_would_fail_later_is_refused_when_read(tmp_path, entry: str, value, complaint: str) -> None:
    """Found by a review of untrusted files: scale inf was an OverflowError in every reader (and written into
    exports), a label of 10**40 one in the mask encoding."""
    save_checkpoint(tmp_path / "m.pth", UNet(3, 2, base_channels=8), [0, 1], scale=0.5)
    checkpoint = torch.load(tmp_path / "m.pth", weights_only=True)
    checkpoint[entry] = value
    torch.save(checkpoint, tmp_path / "m.pth")
    with pytest.raises(UserError, match=complaint):
        load_model(tmp_path / "m.pth", torch.device("cpu"))


def test_save_checkpoint_takes_numpy_values_and_refuses_what_would_not_load(ckpt_dir) -> None:
    """Found by a notebook review: save_checkpoint(..., list(np.unique(mask)), scale=np.float64(0.5)) wrote
    mask_values as text and a numpy scale, and the file was then refused by every reader."""
    net = UNet(3, 2, base_channels=4)
    path = ckpt_dir / "numpy.pth"
    save_checkpoint(path, net, list(np.unique(np.array([0, 255, 255], np.uint8))), scale=np.float64(0.5),
                    args={"ignore_index": np.int64(7)})
    model, checkpoint = load_model(path, "cpu")  # a device by name, too
    assert model.mask_values == [0, 255] and type(model.mask_values[0]) is int
    assert checkpoint["scale"] == 0.5 and type(checkpoint["scale"]) is float and model.ignore_value == 7
    for values, extra, complaint in (([0, 0], {}, "repeats a value"),
                                     ([0.0, 0.5], {}, "not a list of labels"),
                                     ([0, 1, 2], {}, "lists 3 mask values for a model of 2 classes"),
                                     ([0, 1], {"scale": 0}, "scale is 0, not a positive number")):
        with pytest.raises(UserError, match=complaint):
            save_checkpoint(ckpt_dir / "refused.pth", net, values, **extra)
        assert not (ckpt_dir / "refused.pth").exists()


def test_models_are_float32_whatever_default_dtype_a_notebook_set(ckpt_dir) -> None:
    """Found by a notebook review: after torch.set_default_dtype(torch.float64), load_model and hub models were
    float64, and predict.py, evaluate.py, train.py and export.py failed deep inside torch."""
    import hubconf

    save_checkpoint(ckpt_dir / "m.pth", UNet(3, 2, base_channels=4), [0, 1])
    torch.set_default_dtype(torch.float64)
    try:
        model, _ = load_model(ckpt_dir / "m.pth", torch.device("cpu"))
        assert next(model.parameters()).dtype == torch.float32
        assert next(hubconf.unet(base_channels=4).parameters()).dtype == torch.float32
        assert next(hubconf.unet_carvana().parameters()).dtype == torch.float32
    finally:
        torch.set_default_dtype(torch.float32)
    with pytest.raises(ValueError, match="pretrained must be True or False, got 'no'"):
        hubconf.unet_carvana(pretrained="no")


def test_the_readme_recipe_hands_our_checkpoint_to_the_reference_loading_code(ckpt_dir) -> None:
    """Found by an outputs review: the reference's own code (pop mask_values, load_state_dict) failed on our dict."""
    model = UNet(n_channels=3, n_classes=3, bilinear=True).eval()
    save_checkpoint(ckpt_dir / "best.pth", model, [0, 128, 255], scale=0.5, epoch=2)
    checkpoint = torch.load(ckpt_dir / "best.pth", weights_only=True)  # the README's two lines
    torch.save({**checkpoint["model"], "mask_values": checkpoint["mask_values"]}, ckpt_dir / "for_reference.pth")
    state_dict = torch.load(ckpt_dir / "for_reference.pth")  # what the reference's predict.py does
    mask_values = state_dict.pop("mask_values", [0, 1])
    reference = UNet(n_channels=3, n_classes=3, bilinear=True)
    reference.load_state_dict(state_dict)  # strict: every key of the reference's layout, nothing else
    assert mask_values == [0, 128, 255]
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(reference.eval()(x), model(x), rtol=0, atol=0)



def test_a_run_that_learnt_nothing_is_told_what_was_seen_and_what_to_try() -> None:
    """Found by a review: small sets trained at the defaults to a Dice of 0.08, or predicted one class everywhere
    (0.0242 every epoch), and the run ended with best.pth saved and not a word."""
    import train

    args = train.get_args_parser().parse_args(["-e", "5"])  # lr 1e-4 and no --batchnorm-images: the defaults
    assert train.learning_warning([0.0242, 0.0242, 0.0242, 0.0242, 0.0242], 0.0242, args, 20) == (
        "warning: the validation Dice was 0.0242 in each of 5 epochs: the model predicts the same whatever the image "
        "(one class everywhere?); it made 20 steps in all: try more epochs (-e 20, or --resume auto -e 20 to go on), "
        "a higher --learning-rate (1e-3) or --batchnorm-images 16")
    assert train.learning_warning([0.0, 0.0, 0.0, 0.0, 0.0846], 0.0846, args, 20).startswith(
        "warning: the best validation Dice is 0.0846: the model finds next to nothing yet; it made 20 steps in all")
    tuned = train.get_args_parser().parse_args(["-l", "1e-3", "--batchnorm-images", "8", "-e", "40"])
    assert train.learning_warning([0.0, 0.01], 0.01, tuned, 4000) == (
        "warning: the best validation Dice is 0.0100: the model finds next to nothing yet; it made 4000 steps in "
        "all: try more epochs (-e) or a smaller --batch-size")
    assert train.learning_warning([0.6, 0.85, 0.9], 0.9, args, 20) is None  # it learnt
    assert train.learning_warning([0.93, 0.93, 0.93], 0.93, args, 20) is None  # settled, not stuck
    assert train.learning_warning([0.3, 0.3], 0.3, args, 20) is None  # two epochs say little
    # a code review: a converged run extended at the end of its schedule holds still, and once scored higher
    assert train.learning_warning([0.4521] * 3, 0.4521, args, 5000, from_start=False) is None
    assert train.learning_warning([0.4521, 0.4521, 0.4521], 0.83, args, 5000) is None


def test_the_runs_last_line_names_best_pths_epoch_and_dice(tmp_path: pathlib.Path) -> None:
    import train

    assert train.best_said(tmp_path / "best.pth") == ""  # none kept (no validation)
    save_checkpoint(tmp_path / "best.pth", UNet(3, 2, base_channels=8), [0, 1], epoch=22, val_dice=0.95721)
    assert train.best_said(tmp_path / "best.pth") == "; best.pth: epoch 22, validation Dice 0.9572"
    save_checkpoint(tmp_path / "best.pth", UNet(3, 2, base_channels=8), [0, 1], val_dice=0.5)  # saved elsewhere
    assert train.best_said(tmp_path / "best.pth") == "; best.pth: validation Dice 0.5000"
