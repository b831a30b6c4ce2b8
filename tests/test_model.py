"""UNet: the reference checkpoint layout, odd input sizes, activation checkpointing, the Up block's math."""

import copy
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unet import UNet
from unet.unet_parts import DoubleConv, Up

SETTINGS = ("c2_tconv", "c1_bilinear", "g1c3_tconv")


def tensor_of_shape(shape: list[int], generator: torch.Generator) -> torch.Tensor:
    if not shape:  # BatchNorm's num_batches_tracked
        return torch.tensor(int(torch.randint(1, 100, (1,), generator=generator)), dtype=torch.long)
    return torch.randn(shape, generator=generator)


@pytest.mark.parametrize("setting", SETTINGS)
def test_state_dict_keys_order_and_shapes_match_reference(reference_layouts, setting):
    layout = reference_layouts[setting]
    state_dict = UNet(**layout["constructor"]).state_dict()
    assert list(state_dict) == list(layout["state_dict"])
    assert {key: list(t.shape) for key, t in state_dict.items()} == layout["state_dict"]


@pytest.mark.parametrize("setting", SETTINGS)
def test_reference_shaped_state_dict_loads_strictly(reference_layouts, setting):
    layout = reference_layouts[setting]
    generator = torch.Generator().manual_seed(0)
    weights = {key: tensor_of_shape(shape, generator) for key, shape in layout["state_dict"].items()}
    model = UNet(**layout["constructor"])
    result = model.load_state_dict(weights, strict=True)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    loaded = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key


@pytest.mark.parametrize("bilinear", [False, True], ids=["tconv", "bilinear"])
@pytest.mark.parametrize(("shape", "n_classes"), [((1, 3, 37, 53), 2), ((2, 1, 33, 65), 3)])
def test_odd_sized_input_keeps_height_and_width(shape, n_classes, bilinear):
    torch.manual_seed(0)
    model = UNet(n_channels=shape[1], n_classes=n_classes, bilinear=bilinear).eval()
    with torch.no_grad():
        out = model(torch.rand(shape))
    assert out.shape == (shape[0], n_classes, shape[2], shape[3])
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_constructor_arguments_are_readable_attributes():
    model = UNet(n_channels=1, n_classes=3, bilinear=True)
    assert (model.n_channels, model.n_classes, model.bilinear) == (1, 3, True)
    assert UNet(3, 2).bilinear is False
    assert model.checkpointing is False


@pytest.mark.parametrize("bilinear", [False, True], ids=["tconv", "bilinear"])
@pytest.mark.parametrize("base_channels", [8, 16, 32])
def test_a_narrower_unet_has_the_classic_keys_with_every_width_scaled(base_channels, bilinear):
    """base_channels changes the widths only: the same keys in the same order, each convolution's channels
    scaled by base_channels / 64, and so about (base_channels / 64)^2 of the parameters."""
    classic = UNet(3, 2, bilinear).state_dict()
    narrow = UNet(3, 2, bilinear, base_channels=base_channels)
    assert narrow.base_channels == base_channels and UNet(3, 2).base_channels == 64
    weights = narrow.state_dict()
    assert list(weights) == list(classic)
    ratio = 64 // base_channels
    for key, value in classic.items():
        scaled = [side // ratio if side >= 64 and index < 2 else side for index, side in enumerate(value.shape)]
        assert list(weights[key].shape) == scaled, key  # the input channels (3) and classes (2) stay
    count = sum(p.numel() for p in narrow.parameters())
    assert count / sum(v.numel() for k, v in classic.items() if not k.endswith(BATCHNORM_BUFFERS)) \
        == pytest.approx(1 / ratio ** 2, rel=0.05)
    with torch.no_grad():
        assert narrow.eval()(torch.rand(2, 3, 37, 53)).shape == (2, 2, 37, 53)


BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize(("kwargs", "complaint"), [
    ({"base_channels": 0}, "base_channels must be a whole number from 1 to 256, got 0"),
    ({"base_channels": 100000}, "base_channels must be a whole number from 1 to 256, got 100000"),
    ({"base_channels": 16.0}, "base_channels must be a whole number from 1 to 256, got 16.0"),
    ({"base_channels": True}, "base_channels must be a whole number from 1 to 256, got True"),
    ({"n_classes": "2"}, "n_classes must be a whole number of at least 1, got '2'"),
])
def test_sizes_that_would_build_a_model_that_cannot_be_saved_or_loaded_are_refused(kwargs, complaint):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        UNet(**{"n_channels": 3, "n_classes": 2, **kwargs})


def test_numpy_sizes_become_python_ints_so_that_checkpoints_load(tmp_path):
    from utils.checkpoint import load_checkpoint, save_checkpoint

    model = UNet(np.int64(3), np.int64(2), base_channels=np.int32(8))
    assert [type(v) for v in (model.n_channels, model.n_classes, model.base_channels)] == [int, int, int]
    save_checkpoint(tmp_path / "m.pth", model, [0, 1])
    assert load_checkpoint(tmp_path / "m.pth")["model_args"]["base_channels"] == 8


def test_mask_values_attribute_is_not_in_state_dict():
    model = UNet(3, 2)
    assert model.mask_values is None
    model.mask_values = [0, 255]
    keys = list(model.state_dict())
    assert not any("mask_values" in key for key in keys)
    assert len(keys) == 118


def _train_step(model: UNet, x: torch.Tensor, target: torch.Tensor) -> dict:
    """One forward/backward in train mode: saved-for-backward elements, output, gradients."""
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(x)
        loss = F.cross_entropy(out, target)
    loss.backward()
    return {
        "saved": saved[0],
        "out": out.detach(),
        "grads": {name: p.grad.clone() for name, p in model.named_parameters()},
    }


@pytest.fixture(scope="module")
def checkpointing_runs() -> dict:
    torch.manual_seed(0)
    base = UNet(n_channels=3, n_classes=2)
    x = torch.rand(2, 3, 21, 27)
    target = torch.randint(0, 2, (2, 21, 27))
    plain = copy.deepcopy(base)
    checkpointed = copy.deepcopy(base)
    assert checkpointed.use_checkpointing() is checkpointed
    toggled = copy.deepcopy(base).use_checkpointing().use_checkpointing(False)
    return {
        "plain": _train_step(plain, x, target),
        "checkpointed": _train_step(checkpointed, x, target),
        "toggled": _train_step(toggled, x, target),
        "flags": (plain.checkpointing, checkpointed.checkpointing, toggled.checkpointing),
        "buffers": (dict(plain.named_buffers()), dict(checkpointed.named_buffers())),
    }


def test_checkpointing_gives_the_same_output_and_gradients(checkpointing_runs):
    plain, checkpointed = checkpointing_runs["plain"], checkpointing_runs["checkpointed"]
    assert torch.allclose(plain["out"], checkpointed["out"], rtol=1e-6, atol=1e-7)
    assert plain["grads"].keys() == checkpointed["grads"].keys()
    assert all(grad.abs().sum() > 0 for grad in plain["grads"].values())
    for name, grad in plain["grads"].items():
        assert torch.allclose(grad, checkpointed["grads"][name], rtol=1e-5, atol=1e-7), name


def test_checkpointing_updates_batchnorm_statistics_once(checkpointing_runs):
    plain, checkpointed = checkpointing_runs["buffers"]
    assert plain.keys() == checkpointed.keys() and any("running_mean" in name for name in plain)
    for name, value in plain.items():
        assert torch.equal(value, checkpointed[name]), name  # recomputation must not count the batch twice


def test_checkpointing_saves_less_than_half_the_activations(checkpointing_runs):
    plain, checkpointed = checkpointing_runs["plain"]["saved"], checkpointing_runs["checkpointed"]["saved"]
    assert plain > 0
    assert checkpointed < 0.5 * plain


def test_use_checkpointing_false_restores_plain_behaviour(checkpointing_runs):
    assert checkpointing_runs["flags"] == (False, True, False)
    assert checkpointing_runs["toggled"]["saved"] == checkpointing_runs["plain"]["saved"]
    for name, grad in checkpointing_runs["plain"]["grads"].items():
        assert torch.equal(grad, checkpointing_runs["toggled"]["grads"][name]), name


def test_checkpointing_is_inactive_in_eval_mode():
    """Recomputing saves memory only when a backward pass follows a training forward pass."""
    torch.manual_seed(0)
    model = UNet(n_channels=1, n_classes=1, bilinear=True).eval()
    x = torch.rand(1, 1, 19, 23)
    with torch.no_grad():
        plain = model(x)
    calls = []
    checkpointed_forward = model._checkpointed_forward
    model._checkpointed_forward = lambda inputs: calls.append(model.training) or checkpointed_forward(inputs)
    model.use_checkpointing()
    with torch.no_grad():
        assert torch.equal(model(x), plain)
    assert torch.equal(model(x), plain)  # eval mode with gradients (e.g. a saliency map): no recomputing either
    assert calls == []
    model.train()
    batch = torch.rand(2, 1, 32, 32)  # BatchNorm trains on more than one value per channel
    with torch.no_grad():
        model(batch)
    assert calls == []
    model(batch).sum().backward()
    assert calls == [True]


@pytest.mark.parametrize("bilinear", [False, True])
def test_the_model_scripts_like_the_reference_and_gives_the_same_output(bilinear, tmp_path):
    """Found by a review: deployment code that runs torch.jit.script on the reference's UNet failed on ours."""
    torch.manual_seed(0)
    model = UNet(n_channels=3, n_classes=2, bilinear=bilinear).use_checkpointing().eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        torch.jit.save(torch.jit.script(model), tmp_path / "unet.pt")
        scripted = torch.jit.load(tmp_path / "unet.pt")
    x = torch.rand(2, 3, 37, 45)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-5)
    scripted.train()  # found by a review: the checkpointed path, left out of the script, was called in training
    assert scripted(x).shape == (2, 2, 37, 45)


# --- the Up block against a hand-written version of the reference math ---------------------------------


def _randomize_batchnorm(module: torch.nn.Module, generator: torch.Generator) -> None:
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.randn(bn.num_features, generator=generator))
            bn.bias.data.copy_(torch.randn(bn.num_features, generator=generator))


def _manual_double_conv(block: DoubleConv, x: torch.Tensor) -> torch.Tensor:
    """(3x3 conv, no bias => eval-mode BN => ReLU) twice, written out."""
    layers = block.double_conv
    for conv, bn in ((layers[0], layers[1]), (layers[3], layers[4])):
        x = F.conv2d(x, conv.weight, padding=1)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        x = (x - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]
        x = x.clamp(min=0)
    return x


def _manual_upsample(up: torch.nn.Module, deeper: torch.Tensor, bilinear: bool) -> torch.Tensor:
    if bilinear:
        return F.interpolate(deeper, scale_factor=2, mode="bilinear", align_corners=True)
    # 2x2 stride-2 transposed conv: each input pixel writes a 2x2 patch weighted by W[c_in, c_out].
    b, _, h, w = deeper.shape
    patches = torch.einsum("bcij,copq->boipjq", deeper, up.weight)
    return patches.reshape(b, up.weight.shape[1], 2 * h, 2 * w) + up.bias[:, None, None]


def _manual_up(block: Up, deeper: torch.Tensor, skip: torch.Tensor, bilinear: bool) -> torch.Tensor:
    up = _manual_upsample(block.up, deeper, bilinear)
    diff_y, diff_x = skip.shape[2] - up.shape[2], skip.shape[3] - up.shape[3]
    top, left = diff_y // 2, diff_x // 2  # the smaller half left/top, the rest right/bottom
    padded = torch.zeros(up.shape[0], up.shape[1], skip.shape[2], skip.shape[3])
    padded[:, :, top:top + up.shape[2], left:left + up.shape[3]] = up
    return _manual_double_conv(block.conv, torch.cat([skip, padded], dim=1))  # skip first


@pytest.mark.parametrize("bilinear", [False, True], ids=["tconv", "bilinear"])
@pytest.mark.parametrize("skip_size", [(5, 5), (7, 8), (4, 4)], ids=["5x5", "7x8", "4x4"])
def test_up_block_matches_reference_math(bilinear, skip_size):
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    block = Up(8, 4, bilinear=bilinear)
    _randomize_batchnorm(block, generator)
    block.eval()
    deeper = torch.randn(2, 4 if bilinear else 8, 2, 2, generator=generator)
    skip = torch.randn(2, 4, *skip_size, generator=generator)
    with torch.no_grad():
        actual = block(deeper, skip)
        expected = _manual_up(block, deeper, skip, bilinear)
    assert actual.shape == (2, 4, *skip_size)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_up_block_concatenates_skip_before_upsampled_map():
    """Guard for the test above: swapping the concatenation order must give a different result."""
    generator = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    block = Up(8, 4, bilinear=True).eval()
    deeper = torch.randn(1, 4, 2, 2, generator=generator)
    skip = torch.randn(1, 4, 5, 5, generator=generator)
    with torch.no_grad():
        up = F.pad(block.up(deeper), [0, 1, 0, 1])
        swapped = block.conv(torch.cat([up, skip], dim=1))
        assert not torch.allclose(block(deeper, skip), swapped, atol=1e-4)
        assert torch.allclose(block(deeper, skip), block.conv(torch.cat([skip, up], dim=1)))
