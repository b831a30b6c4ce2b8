"""The U-Net, assembled so that forward() reads like the architecture figure."""

import operator
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .unet_parts import DoubleConv, Down, OutConv, Up

CLASSIC_BASE_CHANNELS = 64  # the classic U-Net's first block, and every reference checkpoint's
MAX_BASE_CHANNELS = 256  # 4x the classic: 497M parameters, 2 GB of fp32 weights; wider is a typo, not a model
MIN_SIDE = 16  # pixels a side the input needs: four 2x2 poolings, below this the deepest feature map vanishes
LONE_IMAGE_MIN_SIDE = 2 * MIN_SIDE  # below it on both sides, the deepest map is 1x1: one value per channel,
# too few for BatchNorm to train on when the image is alone in its batch


def whole_number(name: str, value: object, highest: int | None = None) -> int:
    """An int of at least 1 (numpy's too, never a bool), at most `highest`: the sizes a UNet is built with, checked
    wherever they come from, so that a model that cannot be saved and loaded is never built."""
    try:
        number = None if isinstance(value, bool) or type(value).__name__ == "bool_" else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < 1 or (highest is not None and number > highest):
        rule = f"from 1 to {highest}" if highest is not None else "of at least 1"
        raise ValueError(f"{name} must be a whole number {rule}, got {value!r}")
    return number


@contextmanager
def _batchnorm_stats_frozen(block: nn.Module) -> Iterator[None]:
    """Recomputing a checkpointed block must not update BatchNorm running statistics a second time."""
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


class UNet(nn.Module):
    def __init__(self, n_channels: int, n_classes: int, bilinear: bool = False,
                 base_channels: int = CLASSIC_BASE_CHANNELS):
        """base_channels: feature maps of the first block, doubled at each level down. Parameters and compute
        grow with its square: 32 has about a quarter of the classic 64's 31M parameters."""
        super().__init__()
        self.n_channels = n_channels = whole_number("n_channels", n_channels)
        self.n_classes = n_classes = whole_number("n_classes", n_classes)
        self.bilinear = bilinear
        self.base_channels = base_channels = whole_number("base_channels", base_channels, MAX_BASE_CHANNELS)
        self.checkpointing = False
        # set when loaded from a checkpoint, to read its output; not part of state_dict
        self.mask_values: list | None = None  # class i is written as mask_values[i]
        self.mask_palette: list | None = None  # the palette of palette masks
        self.scale: float | None = None  # the scale it was trained at: images are resized by it first
        self.ignore_value: int | None = None  # the masks' "not labelled" value (--ignore-index): never written

        factor = 2 if bilinear else 1
        c = base_channels
        self.inc = DoubleConv(n_channels, c)
        self.down1 = Down(c, 2 * c)
        self.down2 = Down(2 * c, 4 * c)
        self.down3 = Down(4 * c, 8 * c)
        self.down4 = Down(8 * c, 16 * c // factor)
        self.up1 = Up(16 * c, 8 * c // factor, bilinear)
        self.up2 = Up(8 * c, 4 * c // factor, bilinear)
        self.up3 = Up(4 * c, 2 * c // factor, bilinear)
        self.up4 = Up(2 * c, c, bilinear)
        self.outc = OutConv(c, n_classes)

    def use_checkpointing(self, enabled: bool = True) -> "UNet":
        """Recompute block activations in backward: less memory for about a third more compute."""
        self.checkpointing = enabled
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return self._checkpointed_forward(x)
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)

    @torch.jit.unused  # a training-only path: the rest of the model still scripts, as the reference's does
    def _checkpointed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """forward() with each block wrapped, not replaced, which keeps the state_dict keys of checkpoints."""

        def run(block: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
            return checkpoint(block, *inputs, use_reentrant=False,
                              context_fn=lambda: (nullcontext(), _batchnorm_stats_frozen(block)))

        skips = []
        for block in (self.inc, self.down1, self.down2, self.down3, self.down4):
            x = run(block, x)
            skips.append(x)
        skips.pop()  # the deepest map goes up, not across
        for block in (self.up1, self.up2, self.up3, self.up4):
            x = run(block, x, skips.pop())
        return self.outc(x)
