"""Tiled inference, test-time augmentation and the out-of-memory fallback (utils/tiling.py, utils/inference.py).

Tiled vs whole-image masks of a trained model: tests/test_real_nuclei.py (it has the trained model)."""

import builtins
import copy
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from unet import UNet
from utils.data_loading import load_scaled_image
from utils.device import Precision
from utils.errors import UserError
from utils.inference import (
    INFERENCE_BYTES_PER_PIXEL,
    UNKNOWN_RAM,
    InferenceOptions,
    available_ram,
    logits_to_classes,
    parse_tile,
    plan_tiles,
    predict_image,
    predict_logits,
)
from utils.tiling import MIN_WEIGHT, blend_weights, sliding_window, tile_starts

CPU = torch.device("cpu")
FP32 = Precision("cpu", None)


@pytest.mark.parametrize(("length", "tile", "overlap", "expected"), [
    (100, 40, 0.0, [0, 40, 60]),  # the last tile is flush with the edge, not padded past it
    (100, 40, 0.5, [0, 20, 40, 60]),
    (120, 40, 0.0, [0, 40, 80]),
    (30, 40, 0.25, [0]),  # a tile larger than the image shrinks to it
])
def test_tiles_cover_the_image_without_leaving_it(length: int, tile: int, overlap: float, expected: list) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts == expected
    size = min(tile, length)
    covered = torch.zeros(length, dtype=torch.bool)
    for start in starts:
        assert 0 <= start and start + size <= length
        covered[start:start + size] = True
    assert covered.all()


def test_blend_weights_peak_in_the_centre_and_never_vanish() -> None:
    weights = blend_weights(64, 48)
    assert weights.shape == (64, 48)
    assert weights.min() >= MIN_WEIGHT and weights.max() <= 1
    assert weights[32, 24] > weights[10, 24] > weights[0, 24]
    torch.testing.assert_close(weights, weights.flip(0).flip(1))


class Constant(nn.Module):
    """Logits that are the same everywhere: any blend must give them back."""

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        values = torch.tensor([0.3, -1.7, 2.9])[None, :, None, None]
        return values.expand(crops.shape[0], 3, *crops.shape[-2:]).clone()


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_blending_a_constant_gives_the_constant_at_every_pixel(overlap: float) -> None:
    image = torch.randint(0, 256, (3, 101, 77), dtype=torch.uint8)
    blended = sliding_window(Constant(), image, tile=32, overlap=overlap, batch_size=3)
    expected = torch.tensor([0.3, -1.7, 2.9])[:, None, None].expand(3, 101, 77)
    assert torch.equal(blended, expected)  # exactly: the blend is accumulated in float64


def test_where_tiles_overlap_the_nearer_centre_weighs_more() -> None:
    """The Gaussian blend, not a plain average: each tile says its own number; a pixel near the second tile's
    centre (and far from the first one's) gets mostly the second's; pixels halfway between them, half of each."""
    calls: list[int] = []

    def tile_number(crops: torch.Tensor) -> torch.Tensor:
        numbers = torch.arange(len(calls), len(calls) + len(crops), dtype=torch.float32)
        calls.extend(range(len(crops)))
        return numbers[:, None, None, None].expand(len(crops), 1, *crops.shape[-2:])

    blended = sliding_window(tile_number, torch.zeros(1, 64, 96), 64, overlap=0.5)[0]  # tiles at x 0 and 32
    assert len(calls) == 2
    assert blended[32, 20].item() == 0.0 and blended[32, 90].item() == 1.0  # one tile alone
    # halfway (x 47.5, centres at 31.5 and 63.5): pixels 47 and 48 mirror each other
    assert blended[32, 47].item() + blended[32, 48].item() == pytest.approx(1.0, abs=1e-6)
    assert blended[32, 60].item() > 0.9  # 4 px from the second's centre, 28 px from the first's: its weight
    weights = blend_weights(64, 64)
    second, first = weights[32, 60 - 32].item(), weights[32, 60].item()
    assert blended[32, 60].item() == pytest.approx(second / (first + second), abs=1e-6)


def test_overlap_zero_puts_each_tile_s_own_logits_back() -> None:
    """Without overlap every pixel has exactly one tile: the weights must cancel out, borders included."""
    image = torch.arange(2 * 64 * 96, dtype=torch.float32).reshape(2, 64, 96)
    blended = sliding_window(lambda crops: crops * 2, image, tile=32, overlap=0.0, batch_size=4)
    torch.testing.assert_close(blended, image * 2)


def pointwise_model(seed: int = 0) -> nn.Module:
    """A per-pixel model (1x1 convolutions): equivariant to flips and turns, and indifferent to tiling."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, 2, 1)).eval()


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_tiled_equals_whole_for_a_per_pixel_model(overlap: float) -> None:
    images = torch.randint(0, 256, (2, 3, 90, 130), dtype=torch.uint8)
    model = pointwise_model()
    whole = predict_logits(model, images, CPU, FP32)
    seen: list[tuple[int, int]] = []
    model.register_forward_pre_hook(lambda _, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    tiled = predict_logits(model, images, CPU, FP32, options=InferenceOptions(tile=64, overlap=overlap))
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)
    assert seen and set(seen) == {(64, 64)}  # it was tiled


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_an_image_of_many_tile_batches_shows_a_bar_the_others_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: an 8000x6000 image predicted in tiles on a CPU showed nothing for five minutes. (In a
    log rather than on a terminal, the bar is written once it lasts a minute: tests/test_progress.py.)"""
    model = pointwise_model()
    options = InferenceOptions(tile=64, overlap=0.0, tile_batch=1, progress=True)
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    predict_logits(model, torch.zeros(1, 3, 64, 64 * 20, dtype=torch.uint8), CPU, FP32, options=options)
    assert "tiles of 1280x64:   0%|          | 0/20 " in screen.getvalue()  # shown as it starts
    screen.seek(0)
    screen.truncate()
    predict_logits(model, torch.zeros(1, 3, 64, 64 * 15, dtype=torch.uint8), CPU, FP32, options=options)
    predict_logits(model, torch.zeros(1, 3, 64, 64 * 20, dtype=torch.uint8), CPU, FP32,
                   options=InferenceOptions(tile=64, overlap=0.0, tile_batch=1))  # validation's: never a bar
    assert screen.getvalue() == ""


@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_tta_of_an_equivariant_model_is_the_model(tta: str) -> None:
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8)
    model = pointwise_model(1)
    plain = predict_logits(model, images, CPU, FP32)
    augmented = predict_logits(model, images, CPU, FP32, options=InferenceOptions(tta=tta))
    torch.testing.assert_close(torch.softmax(augmented, 1), torch.softmax(plain, 1), rtol=1e-5, atol=1e-6)


class Ramp(nn.Module):
    """Foreground logit grows from left to right: not flip-equivariant, so flip TTA must average."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        width = images.shape[-1]
        ramp = torch.linspace(-3, 3, width).expand(images.shape[0], 1, images.shape[-2], width)
        return ramp.clone()


def test_flip_tta_averages_the_probabilities_of_both_views() -> None:
    images = torch.zeros(1, 3, 4, 9, dtype=torch.uint8)
    logits = predict_logits(Ramp(), images, CPU, FP32, options=InferenceOptions(tta="flip"))
    ramp = torch.linspace(-3, 3, 9)
    expected = (torch.sigmoid(ramp) + torch.sigmoid(ramp.flip(0))) / 2  # = 0.5 everywhere, by symmetry
    torch.testing.assert_close(torch.sigmoid(logits[0, 0]), expected.expand(4, 9), rtol=1e-5, atol=1e-6)


class TopLeftCorner(nn.Module):
    """Foreground only at the top-left pixel of what it is given: each of the 8 d4 views puts it in a corner."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.full((images.shape[0], 1, *images.shape[-2:]), -4.0)
        logits[..., 0, 0] = 4.0
        return logits


def test_d4_tta_averages_all_eight_views() -> None:
    logits = predict_logits(TopLeftCorner(), torch.zeros(1, 3, 6, 10, dtype=torch.uint8), CPU, FP32,
                            options=InferenceOptions(tta="d4"))
    probs = torch.sigmoid(logits[0, 0])
    high, low = torch.sigmoid(torch.tensor(4.0)), torch.sigmoid(torch.tensor(-4.0))
    corner = (2 * high + 6 * low) / 8  # each corner is the top left of two of the eight views (flip only: two)
    for row, column in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        torch.testing.assert_close(probs[row, column], corner, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs[2, 4], low, rtol=1e-5, atol=1e-6)


class OutOfMemoryAbove(nn.Module):
    """Wraps a model; raises CUDA's out-of-memory error for inputs above a pixel count, as a small GPU would."""

    def __init__(self, model: nn.Module, max_pixels: int):
        super().__init__()
        self.model, self.max_pixels, self.largest = model, max_pixels, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.shape[-2] * images.shape[-1]
        if pixels > self.max_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.largest = max(self.largest, pixels)
        return self.model(images)


def test_out_of_memory_falls_back_to_tiles_with_a_message() -> None:
    images = torch.randint(0, 256, (1, 3, 200, 300), dtype=torch.uint8)
    model = pointwise_model(2)
    limited = OutOfMemoryAbove(model, max_pixels=128 * 128)
    messages: list[str] = []
    logits = predict_logits(limited, images, CPU, FP32, options=InferenceOptions(tile="none"),
                            notify=messages.append)
    assert messages and messages[0].startswith("note: out of memory predicting 300x200 whole: using tiles of ")
    assert 0 < limited.largest <= 128 * 128
    torch.testing.assert_close(logits, predict_logits(model, images, CPU, FP32), rtol=1e-5, atol=1e-5)


def test_out_of_memory_even_for_the_smallest_tile_is_one_clear_error() -> None:
    limited = OutOfMemoryAbove(pointwise_model(), max_pixels=10)
    with pytest.raises(UserError, match="out of memory even with tiles"):
        predict_logits(limited, torch.zeros(1, 3, 200, 200, dtype=torch.uint8), CPU, FP32)


def test_auto_tiles_only_when_the_whole_image_does_not_fit() -> None:
    model = pointwise_model(3)
    images = torch.randint(0, 256, (1, 3, 160, 240), dtype=torch.uint8)
    per_pixel = INFERENCE_BYTES_PER_PIXEL["fp32"]
    roomy = InferenceOptions(tile="auto", max_memory=160 * 240 * per_pixel * 1.1 / 2**30)
    tight = InferenceOptions(tile="auto", max_memory=100 * 100 * per_pixel / 2**30)
    whole_only = OutOfMemoryAbove(model, max_pixels=160 * 240)
    messages: list[str] = []
    predict_logits(whole_only, images, CPU, FP32, options=roomy, notify=messages.append)
    assert whole_only.largest == 160 * 240 and messages == []
    tiles_only = OutOfMemoryAbove(model, max_pixels=100 * 100)
    predict_logits(tiles_only, images, CPU, FP32, options=tight, notify=messages.append)
    assert 0 < tiles_only.largest <= 100 * 100  # planned tiles, no out-of-memory detour, and said (a review)
    assert messages == ["note: 240x160 is predicted in tiles of 96: whole, it does not fit in the memory the "
                        "forward pass may use"]


def test_auto_tiles_count_the_width_of_the_model() -> None:
    """A model of a quarter of the classic width needs about a third of the memory per pixel (memory_share):
    it predicts whole where the classic one would be tiled."""
    images = torch.randint(0, 256, (1, 3, 160, 240), dtype=torch.uint8)
    quarter = InferenceOptions(tile="auto", max_memory=160 * 240 * INFERENCE_BYTES_PER_PIXEL["fp32"] * 0.35 / 2**30)
    for base_channels, whole in ((64, False), (16, True)):
        recorder = OutOfMemoryAbove(pointwise_model(2), max_pixels=160 * 240)
        recorder.base_channels = base_channels  # as a UNet of that width carries it
        predict_logits(recorder, images, CPU, FP32, options=quarter)
        assert (recorder.largest == 160 * 240) is whole, base_channels


def test_tile_plans_fit_the_budget() -> None:
    # --tile auto for a 1918x1280 image at scale 1 on a GPU with 2 GiB free (80% of it), in bf16
    budget = int(0.8 * 2 * 2**30) // INFERENCE_BYTES_PER_PIXEL["half"]
    side, batch = plan_tiles(budget, torch.device("cuda"))
    assert side % 16 == 0 and 512 <= side < 1280 and side * side * batch <= budget
    # an 8000x6000 image on a CPU with the 2 GiB cap: tiles of about a megapixel, one at a time
    side, batch = plan_tiles(2 * 2**30 // INFERENCE_BYTES_PER_PIXEL["half"], CPU)
    assert batch == 1 and side * side * INFERENCE_BYTES_PER_PIXEL["half"] <= 2 * 2**30 and side >= 1024
    # --tile N on a CPU: small tiles in batches of 256x256 pixels (one at a time took 2.3x as long), large ones alone
    assert plan_tiles(10**6, CPU, side=64) == (64, 16) and plan_tiles(10**6, CPU, side=512) == (512, 1)
    assert plan_tiles(64 * 64 * 3, CPU, side=64) == (64, 3)  # and never more than the memory holds
    assert plan_tiles(10**6, CPU, tile_batch=5, side=64) == (64, 5)  # --tile-batch decides when given


@pytest.mark.parametrize("text", ["100", "32", "big", "-16"])
def test_bad_tile_sizes_are_refused(text: str) -> None:
    with pytest.raises(UserError, match="--tile"):
        parse_tile(text)
    assert parse_tile("512") == 512 and parse_tile("auto") == "auto" and parse_tile("none") == "none"


@pytest.mark.parametrize("classes", [2, 3, 7])
def test_cpu_class_decision_is_argmax_with_its_ties_and_nan(classes: int) -> None:
    # logits_to_classes takes one pass per class on a CPU instead of argmax: it must give argmax's answer
    torch.manual_seed(classes)
    logits = torch.randint(-3, 4, (2, classes, 17, 23)).float()  # small integers: many ties
    logits[0, 1, 0, :4] = float("nan")
    logits[0, classes - 1, 0, 2:6] = float("nan")  # two NaNs at one pixel: the first wins, as in argmax
    logits[1, :, 3, 3] = float("nan")
    logits[1, 0, 4, 4] = float("nan")
    expected = logits.argmax(dim=1)
    found = logits_to_classes(logits)
    assert found.dtype == expected.dtype and torch.equal(found, expected)
    assert torch.equal(logits_to_classes(logits.contiguous(memory_format=torch.channels_last)), expected)


def test_available_ram_without_proc_meminfo_or_sysconf_is_a_modest_guess(monkeypatch):
    assert 0 < available_ram() < 2**50
    real_open = builtins.open

    def no_proc(path, *args, **kwargs):  # macOS and Windows have no /proc
        if str(path).startswith("/proc"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    physical = available_ram()  # macOS: the physical memory
    assert physical == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.delattr(os, "sysconf")  # Windows
    assert available_ram() == UNKNOWN_RAM


def small_unet() -> nn.Module:
    """An untrained U-Net with BatchNorm running statistics of its own, so that train and eval mode differ."""
    torch.manual_seed(0)
    model = UNet(3, 2).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def test_predict_image_takes_a_pil_image_an_array_or_a_tensor_as_predict_reads_the_file(tmp_path) -> None:
    model = small_unet()
    model.scale = 0.5
    pixels = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    scaled, (width, height) = load_scaled_image(tmp_path / "x.png", 0.5)
    logits = predict_logits(model, scaled[None], CPU, FP32, output_size=(height, width))
    with torch.no_grad():  # half the pixels of each class: a map that can be wrong
        model.outc.conv.bias[1] -= (logits[0, 1] - logits[0, 0]).median()
    expected = logits_to_classes(predict_logits(model, scaled[None], CPU, FP32, output_size=(height, width)))[0]
    assert expected.shape == (50, 70) and 0 < expected.float().mean() < 1
    for image in (Image.open(tmp_path / "x.png"), pixels, torch.from_numpy(pixels).permute(2, 0, 1)):
        assert torch.equal(predict_image(model, image, precision=FP32), expected), type(image)
    with pytest.raises(TypeError, match="a PIL image, a numpy array or a torch tensor, not a str"):
        predict_image(model, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match=r"predict_image runs float32 models, not torch.float64: call model.float"):
        predict_image(copy.deepcopy(model).double(), pixels)
    with pytest.raises(UserError, match="the ndarray image is 20x12: the U-Net needs at least 16 px"):
        predict_image(model, pixels[:12, :20], scale=1.0)
    with pytest.raises(UserError, match=r"cannot read the PIL image \(La pixels: .*\): convert it to a mode such as "
                                        "RGB or L first"):  # found by a review: "the Image image", "convert it to PNG"
        predict_image(model, Image.new("La", (32, 32)))


@pytest.mark.parametrize(("arguments", "complaint"), [
    ({"options": InferenceOptions(tta="Flip")}, "options.tta must be one of none, flip, d4, got 'Flip'"),
    ({"options": InferenceOptions(tile=8)}, "options.tile must be auto, none or a size in pixels, a multiple of 16 "
                                            "of at least 64, got 8"),
    ({"options": InferenceOptions(tile=50)}, "options.tile must be .*, got 50"),
    ({"options": InferenceOptions(overlap="0.5")}, "options.overlap must be a fraction .*, got '0.5'"),
    ({"options": "d4"}, "options must be an InferenceOptions .*, got 'd4'"),
    ({"threshold": 2}, "threshold must be a probability between 0 and 1, got 2"),
    ({"threshold": float("nan")}, "threshold must be a probability between 0 and 1, got nan"),
    ({"scale": "0.5"}, "scale must be None .* or a number above 0, got '0.5'"),
    ({"precision": "fp33"}, "precision must be None, one of auto, fp32, bf16, fp16 or a utils.device.Precision"),
])
def test_predict_image_names_a_wrong_argument_instead_of_running_something_else(arguments: dict,
                                                                                  complaint: str) -> None:
    """Found by a review: tta="Flip" silently ran all 8 d4 views, tile=8 was a max-pool traceback, threshold=2 an
    empty mask, scale="0.5" and precision="fp32" tracebacks."""
    with pytest.raises(UserError, match=complaint):
        predict_image(small_unet(), np.zeros((32, 32, 3), np.uint8), **arguments)


def test_predict_image_takes_the_precision_by_name_and_numpy_numbers() -> None:
    model, pixels = small_unet(), np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    assert torch.equal(predict_image(model, pixels, precision="fp32"), predict_image(model, pixels, precision=FP32))
    numpy_options = InferenceOptions(tile=np.int64(64), overlap=np.float32(0.5), tile_batch=np.int64(2))
    larger = np.random.default_rng(2).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    seen: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _, inputs: seen.append(tuple(inputs[0].shape)))
    python_options = InferenceOptions(64, 0.5, tile_batch=2)
    assert torch.equal(predict_image(model, larger, 1.0, precision=FP32, options=numpy_options),
                       predict_image(model, larger, 1.0, precision=FP32, options=python_options))
    # found by a review: a numpy tile size passed the checks, and then the image ran whole, untiled
    assert seen[:len(seen) // 2] == seen[len(seen) // 2:] and {shape[-2:] for shape in seen} == {(64, 64)}
    with pytest.raises(UserError, match="options.overlap must be .*, got False"):
        predict_image(model, pixels, options=InferenceOptions(overlap=False))


def test_predict_image_reads_the_scale_of_a_wrapped_model() -> None:
    """Found by a notebook review: DataParallel hides model.scale, and the image was read at the default 0.5."""
    model = nn.Conv2d(3, 2, 1).eval()  # class 1 where red is above half: read at another scale, noise differs
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1, 0] = 1.0
        model.bias.copy_(torch.tensor([0.0, -0.5]))
    model.scale = 1.0
    pixels = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    own = predict_image(model, pixels, precision=FP32)
    assert not torch.equal(own, predict_image(model, pixels, 0.5, precision=FP32))
    assert torch.equal(predict_image(nn.DataParallel(model), pixels, precision=FP32), own)


def test_a_model_in_training_mode_predicts_in_eval_mode_and_is_given_back_as_it_was() -> None:
    """Found by a review: hub models come back in training mode, and predicting with one used (and overwrote)
    the batch's BatchNorm statistics: 68% of the pixels changed class, and the model for good."""
    model = small_unet()
    images = torch.randint(0, 256, (1, 3, 32, 48), dtype=torch.uint8)
    expected = predict_logits(model, images, CPU, FP32)
    model.train()
    model.inc.eval()  # a part kept in eval mode by its user (frozen BatchNorm) stays so
    statistics = {name: buffer.clone() for name, buffer in model.named_buffers()}
    torch.testing.assert_close(predict_logits(model, images, CPU, FP32), expected, rtol=0, atol=0)
    assert all(torch.equal(buffer, statistics[name]) for name, buffer in model.named_buffers())
    assert model.training and model.down1.training and not model.inc.training


def test_float_images_are_refused_not_divided_by_255_again() -> None:
    images = torch.rand(1, 3, 32, 32)
    before = images.clone()
    with pytest.raises(TypeError, match=r"uint8 images \(0..255\).*not torch.float32"):
        predict_logits(small_unet(), images, CPU, FP32)
    assert torch.equal(images, before)  # and the caller's tensor left as it was


def test_batchnorm_folded_into_the_convolutions_computes_the_same_with_or_without_a_copy() -> None:
    from utils.inference import fuse_batchnorm

    torch.manual_seed(0)
    model = UNet(3, 2, base_channels=16)
    for module in model.modules():  # statistics of a trained model, not the identity of a new one
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    model.eval()
    images = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        expected = model(images)
        folded = fuse_batchnorm(model)
        assert folded is not model and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # left as it was
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert torch.allclose(folded(images), expected, atol=1e-4)
        same = fuse_batchnorm(model, in_place=True)
        assert same is model and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert torch.allclose(model(images), expected, atol=1e-4)
