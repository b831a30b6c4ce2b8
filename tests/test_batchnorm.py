"""BatchNorm statistics recomputed at the end of each epoch (utils/batchnorm.py, train.py --batchnorm-images)."""

from pathlib import Path

import pytest
import torch
from conftest import NARROW_UNET, disc_mask, random_rgb, write_image
from torch import nn

import train
from utils.batchnorm import calibration_keys, recalibrate_batchnorm
from utils.checkpoint import load_checkpoint
from utils.device import choose_precision

CPU = torch.device("cpu")
FP32 = choose_precision(CPU, precision="fp32")


def conv_bn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    model[1].running_mean.fill_(5.0)  # stale statistics, far from anything the batches give
    model[1].running_var.fill_(9.0)
    return model.eval()


def uint8_batches(count: int, size: int = 2) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [{"image": torch.randint(0, 256, (size, 3, 8, 10), dtype=torch.uint8, generator=generator)}
            for _ in range(count)]


def test_recalibration_replaces_the_running_statistics_by_their_mean_over_the_batches() -> None:
    model = conv_bn()
    batches = uint8_batches(3)
    with torch.no_grad():  # what each batch's normalisation uses in training mode, by hand
        outputs = [model[0](batch["image"].float() / 255) for batch in batches]
    means = torch.stack([output.mean((0, 2, 3)) for output in outputs]).mean(0)
    variances = torch.stack([output.var((0, 2, 3), unbiased=True) for output in outputs]).mean(0)

    assert recalibrate_batchnorm(model, batches, CPU, FP32) == 6
    torch.testing.assert_close(model[1].running_mean, means)
    torch.testing.assert_close(model[1].running_var, variances)
    assert model[1].momentum == 0.1 and not model.training  # the layer's settings and the model's mode restored
    assert not any(parameter.grad is not None for parameter in model.parameters())


def test_a_pass_without_images_keeps_the_previous_statistics() -> None:
    model = conv_bn()
    assert recalibrate_batchnorm(model, [{"skipped": ["a.png: unreadable"]}], CPU, FP32) == 0
    assert torch.equal(model[1].running_mean, torch.full((4,), 5.0))
    assert torch.equal(model[1].running_var, torch.full((4,), 9.0))


@pytest.mark.parametrize(("train_size", "images", "batch_size", "count"), [
    (4580, 32, 16, 32),
    (4580, 32, 5, 35),  # rounded up to whole batches
    (57, 32, 8, 32),
    (20, 32, 8, 20),  # at most the training set
    (100, 0, 4, 0),  # --batchnorm-images 0, the default
])
def test_calibration_takes_whole_batches_of_the_same_items_every_time(
        train_size: int, images: int, batch_size: int, count: int) -> None:
    keys = calibration_keys(train_size, images, batch_size, seed=7)
    assert len(keys) == count
    assert len({index for index, _ in keys}) == count and all(0 <= index < train_size for index, _ in keys)
    assert len({seed for _, seed in keys}) == count  # each window, flip and zoom its own, the same every epoch
    assert keys == calibration_keys(train_size, images, batch_size, seed=7)  # and in every process
    assert count in (0, train_size) or keys != calibration_keys(train_size, images, batch_size, seed=8)


def test_train_recomputes_the_statistics_each_epoch_and_leaves_the_training_alone(tmp_path: Path) -> None:
    for i in range(12):
        write_image(tmp_path / "imgs" / f"img{i}.png", random_rgb(i))
        write_image(tmp_path / "masks" / f"img{i}.png", disc_mask())
    runs = {}
    for images in ("0", "3"):  # the default, and 3 images
        train.main(train.get_args_parser().parse_args([
            "--imgs", str(tmp_path / "imgs"), "--masks", str(tmp_path / "masks"), "--scale", "1", "--epochs", "2",
            "--batch-size", "2", "--validation", "20", "--workers", "0", "--wandb", "disabled",
            "--learning-rate", "1e-3", "--checkpoint-dir", str(tmp_path / images), "--batchnorm-images", images,
            "--keep-epochs", *NARROW_UNET]))
        runs[images] = load_checkpoint(tmp_path / images / "last.pth")["model"]
    # each epoch's: the first epoch's checkpoint holds statistics recomputed at its end too
    assert load_checkpoint(tmp_path / "3" / "epoch_1.pth")["model"]["inc.double_conv.1.num_batches_tracked"] == 2

    kept, recomputed = runs["0"], runs["3"]
    assert kept["inc.double_conv.1.num_batches_tracked"] == 2 * 5  # 10 training images in batches of 2, 2 epochs
    assert recomputed["inc.double_conv.1.num_batches_tracked"] == 2  # 3 calibration images asked for: 2 batches of 2
    assert not torch.allclose(kept["inc.double_conv.1.running_var"], recomputed["inc.double_conv.1.running_var"])
    for name, value in kept.items():  # the weights do not depend on it: only the statistics do
        if "running_" not in name and "num_batches_tracked" not in name:
            assert torch.equal(value, recomputed[name]), name
