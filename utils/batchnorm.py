"""BatchNorm statistics recomputed for the weights a model has now (train.py --batchnorm-images).

Training keeps BatchNorm's running mean and variance as moving averages (momentum 0.1) that start at 0 and 1 and
trail the weights by about ten steps. In a short run the weights move faster than that: after 8-48 steps the
saved model scored held-out Dice 0.00-0.42 with its running averages and 0.83-0.93 with the statistics
recomputed. Once the weights settle, the running averages (about 20 batches) are the better estimate: the
final models of full runs scored up to 0.05 lower recomputed on 8-16 images (bench/README.md, "BatchNorm
statistics"). Hence an option, not the default.
"""

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from .data_loading import model_input
from .device import Precision
from .sampling import item_seed


def calibration_keys(train_size: int, images: int, batch_size: int, seed: int) -> list[tuple[int, int]]:
    """The training items (utils.sampling.SeededItems keys: index and augmentation seed) that every epoch's
    recalibration reads: `images` of them rounded up to whole batches (the average weighs each batch the same),
    at most the whole training set. The same items each epoch and in every process, so that a resumed or
    distributed run ends each epoch with the statistics of an uninterrupted one. Each item has its own augmentation
    seed (that of an epoch 0, which training never reaches), so that the windows, flips and zooms vary."""
    count = min(train_size, -(-images // batch_size) * batch_size)
    chosen = torch.randperm(train_size, generator=torch.Generator().manual_seed(seed))[:count]
    return [(index, item_seed(seed, 0, 0, index)) for index in sorted(chosen.tolist())]


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[dict], device: torch.device,
                          precision: Precision) -> int:
    """Replace every BatchNorm layer's running statistics by their average over `batches` (loader batches
    of uint8 images, in training mode, without gradients); returns the number of images read. With no image
    (every file failed to load) the previous statistics are kept."""
    layers = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    previous = [{name: buffer.clone() for name, buffer in layer.named_buffers()} for layer in layers]
    seen = 0

    def inputs() -> Iterator[torch.Tensor]:
        nonlocal seen
        for batch in batches:
            if "image" in batch:  # a batch whose files all failed has none
                seen += batch["image"].shape[0]
                yield model_input(batch["image"], device)

    with precision.autocast():  # the precision the statistics are used in
        update_bn(inputs(), model)
    if seen == 0:
        for layer, buffers in zip(layers, previous):
            for name, buffer in layer.named_buffers():
                buffer.copy_(buffers[name])
    return seen
