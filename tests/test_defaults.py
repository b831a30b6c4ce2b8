"""Defaults chosen for the machine: precision, batch size, loader workers, compilation."""

import numpy as np
import pytest
import torch

import train
from utils import device as device_module
from utils.device import Precision, choose_precision, memory_format, should_compile
from utils.distributed import World
from utils.errors import UserError

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, amp, expected", [
    (True, False, torch.bfloat16),  # native bf16: the default without asking
    (False, False, None),  # no native bf16: full precision unless asked
    (False, True, torch.bfloat16),  # --amp on any CPU: bf16
    (True, True, torch.bfloat16),
])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, native, amp, expected):
    monkeypatch.setattr(device_module, "has_native_bf16", lambda device: native)
    assert choose_precision(CPU, amp).dtype == expected


def test_fp32_is_forced_even_with_native_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "has_native_bf16", lambda device: True)
    assert choose_precision(CPU, amp=True, precision="fp32").dtype is None


def test_fp16_on_cpu_is_refused():
    with pytest.raises(UserError, match="--precision fp16 needs a CUDA GPU"):
        choose_precision(CPU, precision="fp16")


def test_apple_mps_runs_in_full_precision_and_says_so_when_asked_for_less():
    mps = torch.device("mps")  # only its type is read: no Apple GPU needed
    assert choose_precision(mps).dtype is None
    assert choose_precision(mps, amp=True) == Precision("mps", None)  # not a CPU autocast that would do nothing
    for asked in ("bf16", "fp16"):
        with pytest.raises(UserError, match=f"--precision {asked} is not supported on Apple MPS"):
            choose_precision(mps, precision=asked)


def test_channels_last_on_cpu():
    assert memory_format(CPU) == torch.channels_last


@pytest.mark.parametrize("cores, local_size, expected_cpu, expected_cuda", [
    (2, 1, 1, 1), (16, 1, 2, 15), (64, 1, 8, 16), (64, 8, 1, 7),
])
def test_default_workers_per_device_and_processes(monkeypatch, cores, local_size, expected_cpu, expected_cuda):
    monkeypatch.setattr(train.os, "cpu_count", lambda: cores)
    world = World(local_size=local_size, size=local_size)
    assert train.default_workers(CPU, world) == expected_cpu
    assert train.default_workers(torch.device("cuda"), world) == expected_cuda


@pytest.mark.parametrize(("side", "expected"), [(1000, 4), (256, 4), (128, 4), (64, 4), (45, 8), (32, 16), (16, 16)])
def test_default_cpu_batch_size_grows_for_tiny_images(side, expected):
    """Found by a review of data sets of many small tiles: batches of 4 ran 32x32 tiles at half the speed of
    batches of 16, and to a lower held-out Dice in equal time; 64x64 tiles did better at 4 (bench/README.md)."""
    bf16 = Precision("cpu", torch.bfloat16)
    assert train.default_batch_size(CPU, bf16, side * side, checkpointing=False) == expected


@pytest.mark.parametrize(("side", "scale", "expected"), [(1918, 0.5, 1), (512, 1.0, 1), (256, 1.0, 4), (64, 0.5, 64),
                                                          (32, 1.0, 64), (100, 1.0, 16)])
def test_default_prediction_batch_fills_the_cpu_batch_pixels(tmp_path, side, scale, expected):
    from PIL import Image

    from utils.inference import default_prediction_batch

    path = tmp_path / "first.png"
    Image.new("RGB", (side, side)).save(path)
    assert default_prediction_batch(CPU, [path], scale) == expected
    assert default_prediction_batch(torch.device("cuda"), [path], scale) == 16
    np.save(tmp_path / "first.npy", np.zeros((side, side, 3), np.uint8))  # arrays: the size from the shape
    assert default_prediction_batch(CPU, [tmp_path / "first.npy"], scale) == expected
    np.save(tmp_path / "first.npy", np.zeros((3, side, side), np.float32))  # channels first, as tensors are saved
    assert default_prediction_batch(CPU, [tmp_path / "first.npy"], scale) == expected
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert default_prediction_batch(CPU, [tmp_path / "broken.png"], scale) == 1  # said when its turn comes
    assert default_prediction_batch(CPU, [tmp_path / "broken.png", path], scale) == expected


def test_default_prediction_batch_follows_the_largest_images_of_a_folder(tmp_path):
    """A folder of tiles with a few large photos among them: 64 photos at once would hold gigabytes."""
    from PIL import Image

    from utils.inference import default_prediction_batch

    tile, photo = tmp_path / "tile.png", tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(tile)
    Image.new("RGB", (1024, 768)).save(photo)
    assert default_prediction_batch(CPU, [tile] * 1000, 1.0) == 64
    assert default_prediction_batch(CPU, [tile] * 999 + [photo], 1.0) == 1  # the last is among the 256 read
    assert default_prediction_batch(CPU, [tile] * 500 + [photo] * 40 + [tile] * 500, 1.0) == 1


@pytest.mark.parametrize("free_gib, dtype, checkpointing, expected", [
    (80, torch.bfloat16, False, 16),  # Carvana at scale 0.5 on an H100: the cap
    (8, torch.bfloat16, False, 2),  # 4.5 KB x 614k px = 2.6 GiB per image: 70% of 8 GiB holds 2, not 4
    (8, None, False, 1),
    (24, torch.bfloat16, False, 4),
    (24, None, False, 2),
    (8, torch.bfloat16, True, 8),
])
def test_default_batch_size_on_gpu_fits_free_memory(monkeypatch, free_gib, dtype, checkpointing, expected):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free_gib * 2**30, 80 * 2**30))
    pixels = 959 * 640
    batch = train.default_batch_size(torch.device("cuda"), Precision("cuda", dtype), pixels, checkpointing)
    assert batch == expected
    per_pixel = train.BYTES_PER_PIXEL["checkpointed" if checkpointing else "fp32" if dtype is None else "half"]
    assert batch == 1 or batch * pixels * per_pixel <= 0.7 * free_gib * 2**30


def test_default_batch_size_on_gpu_counts_the_width_of_the_model(monkeypatch):
    """The feature maps are proportional to --base-channels, the input and outputs are not: a quarter of the width
    needs about a third of the memory (utils.inference.memory_share) and fits twice the batch here, twice the width
    one image."""
    from utils.inference import memory_share

    free = 8 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 80 * 2**30))
    cuda, bf16, pixels = torch.device("cuda"), Precision("cuda", torch.bfloat16), 959 * 640
    assert train.default_batch_size(cuda, bf16, pixels, False) == 2
    assert train.default_batch_size(cuda, bf16, pixels, False, base_channels=16) == 4
    assert train.default_batch_size(cuda, bf16, pixels, False, base_channels=128) == 1
    per_image = pixels * train.BYTES_PER_PIXEL["half"] * memory_share(16)
    assert 4 * per_image <= 0.7 * free < 8 * per_image
    assert memory_share(64) == 1 and memory_share(16) == pytest.approx(0.325) and memory_share(1) > 0.1


@pytest.mark.parametrize("choice, device, expected", [
    ("auto", "cpu", False), ("auto", "cuda", True), ("on", "cpu", True), ("off", "cuda", False),
])
def test_compile_choice(choice, device, expected):
    assert should_compile(choice, torch.device(device)) is expected


@pytest.mark.parametrize("choice, images, expected", [
    ("auto", 1, False), ("auto", 999, False), ("auto", 1000, True), ("on", 1, True), ("off", 5000, False),
])
def test_prediction_compiles_by_default_only_when_the_images_pay_it_back(choice, images, expected):
    assert should_compile(choice, torch.device("cuda"), images) is expected
    assert not should_compile("auto", torch.device("cpu"), images)


def test_training_compiles_by_default_only_for_runs_long_enough_to_pay_it_back():
    from utils.device import COMPILE_MIN_TRAINING_IMAGES

    cuda = torch.device("cuda")
    assert COMPILE_MIN_TRAINING_IMAGES == 15000
    assert not should_compile("auto", cuda, 32 * 6, COMPILE_MIN_TRAINING_IMAGES)  # make demo
    assert should_compile("auto", cuda, 4579 * 5, COMPILE_MIN_TRAINING_IMAGES)  # Carvana, 5 epochs
    assert should_compile("on", cuda, 8, COMPILE_MIN_TRAINING_IMAGES)


@pytest.mark.parametrize("waits, workers, writers, cores, hint", [
    ((4.0, 1.0, 0.5), 2, 8, 16, "try --workers 4"),  # decoding 40%: more workers, cores to spare
    ((4.0, 1.0, 0.5), 15, 8, 16, None),  # decoding 40% but every core already decodes: no advice
    ((0.5, 1.0, 3.0), 8, 8, 16, "try --writers 16"),  # writing 30%
    ((0.5, 6.0, 0.5), 8, 8, 16, None),  # the GPU is the limit: nothing to raise
    ((3.0, 0.0, 0.0), 0, 1, 4, "try --workers 1"),
])
def test_prediction_summary_names_the_flag_that_would_help(waits, workers, writers, cores, hint):
    from predict import LoopWaits, speed_summary

    line = speed_summary(100, 10.0, LoopWaits(*waits), True, workers, writers, cores)
    assert line.startswith("predicted 100 images in 10.0 s (10.00 images/s); waited ")
    assert f"{waits[0] / 10:.0%} for decoding (--workers {workers})" in line
    assert f"{waits[1] / 10:.0%} for the GPU" in line
    assert ("try --" in line) == (hint is not None) and (hint is None or line.endswith(hint))


def test_prediction_summary_tells_the_start_from_the_steady_rate():
    from predict import LoopWaits, speed_summary

    line = speed_summary(160, 10.0, LoopWaits(), True, 8, 8, 16, first_batch=(4.0, 16))  # compiled: a slow start
    assert line.startswith("predicted 160 images in 10.0 s (16.00 images/s; 24.00 after the first batch, at 4.0 s); ")
    assert "after the first batch" not in speed_summary(20, 2.0, LoopWaits(), True, 8, 8, 16, first_batch=(1.0, 16))
    # A first batch of unreadable files only (none predicted), then one image: no second batch to speak of
    one = speed_summary(1, 0.6, LoopWaits(0.0, 0.0, 0.2), False, 1, 1, 2, first_batch=(0.0, 0))
    assert "after the first batch" not in one and "try --" not in one


def test_prediction_summary_on_a_cpu_leaves_the_gpu_out():
    from predict import LoopWaits, speed_summary

    line = speed_summary(3, 2.0, LoopWaits(0.1, 0.0, 0.2), False, 1, 1, 2)
    assert "GPU" not in line and "5% for decoding (--workers 1), 10% for writing (--writers 1)" in line


@pytest.mark.parametrize("method", [None, "sums", "scatter"])
@pytest.mark.parametrize("n_classes", [2, 5])
def test_class_counts_agree_with_numpy_whatever_the_method(method, n_classes):
    from utils.mask_writer import class_counts

    classes = torch.randint(0, n_classes, (3, 17, 23), generator=torch.Generator().manual_seed(n_classes))
    classes[1] = 0  # an image with one class only: the other counts are zero, not missing
    counts = class_counts(classes, n_classes, method)
    expected = [np.bincount(image.ravel(), minlength=n_classes) for image in classes.numpy()]
    assert counts.dtype == torch.int64 and counts.tolist() == [list(row) for row in expected]


@pytest.mark.parametrize(("batch", "crop", "largest", "expected"), [
    (4, None, 1918 * 1280, 4),  # whole images train and validate in the same batches
    (16, (512, 512), 1024 * 1024, 4),  # a quarter of each image per window: 4 whole images hold the same pixels
    (8, (512, 512), 1918 * 1280, 1),  # fewer pixels than one image: one at a time
    (4, (512, 512), 256 * 256, 4),  # images smaller than the window: never more than the training batch
])
def test_validation_batches_with_crops_hold_the_pixels_of_a_training_batch(batch, crop, largest, expected) -> None:
    assert train.validation_batch_size(batch, crop, largest) == expected


def test_amp_on_a_gpu_without_bf16_is_fp16_with_a_gradient_scaler(monkeypatch):
    """Pre-Ampere GPUs (a T4, a V100): --amp is fp16, which needs the scaler against underflow."""
    monkeypatch.setattr(device_module, "has_native_bf16", lambda device: False)
    cuda = torch.device("cuda")
    amp = choose_precision(cuda, amp=True)
    assert amp.dtype == torch.float16 and amp.needs_grad_scaler
    assert choose_precision(cuda).dtype is None  # no --amp: full precision there
    monkeypatch.setattr(device_module, "has_native_bf16", lambda device: True)
    assert choose_precision(cuda).dtype == torch.bfloat16 and not choose_precision(cuda).needs_grad_scaler


def test_channels_last_on_cuda_and_cpu_only():
    """Tensor cores and oneDNN want channels_last; MPS keeps the default layout."""
    assert memory_format(torch.device("cuda")) is torch.channels_last
    assert memory_format(CPU) is torch.channels_last
    assert memory_format(torch.device("mps")) is torch.contiguous_format


def test_under_torchrun_cuda_means_the_process_s_own_gpu(monkeypatch):
    """torchrun starts one process per GPU: --device cuda (or the default) is cuda:LOCAL_RANK, not cuda:0 for all."""
    from utils.device import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert choose_device("cuda") == torch.device("cuda", 2)
    assert choose_device(None) == torch.device("cuda", 2)
    assert choose_device("cuda:1") == torch.device("cuda", 1)  # a GPU named is that GPU
