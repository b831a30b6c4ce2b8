"""What only a GPU can check: fp16 with the gradient scaler, bf16, torch.compile, checkpointing, channels_last.

Skipped without CUDA (CI and the development machine); run by bench/gpu_check.sh on a GPU machine.
"""

import pytest
import torch

from train import train_step
from unet import UNet
from utils.device import Precision, choose_precision, memory_format
from utils.dice_score import segmentation_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def disc_batch(device: torch.device, batch: int = 4, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs on noise: learnable in a few steps."""
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(24, size - 24, (batch, 2), generator=generator)
    masks = torch.stack([((yy - cy) ** 2 + (xx - cx) ** 2 < 256).long() for cy, cx in centres.tolist()])
    images = torch.rand(batch, 3, size, size, generator=generator) * 0.3 + masks[:, None] * 0.6
    return (images.to(device).contiguous(memory_format=memory_format(device)), masks.to(device))


def train_steps(model: torch.nn.Module, precision: Precision, steps: int = 25) -> list[float]:
    """train.py's own step (train_step), repeated on one batch."""
    device = torch.device("cuda")
    images, masks = disc_batch(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_grad_scaler)
    return [train_step(model, images, masks, optimizer, scaler, precision, grad_clip=1.0)[0].item()
            for _ in range(steps)]


def fresh_model(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(3, 2).cuda().to(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16+scaler", "bf16"])
def test_mixed_precision_training_is_finite_and_learns(dtype: torch.dtype) -> None:
    losses = train_steps(fresh_model(), Precision("cuda", dtype))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]


def test_auto_precision_on_this_gpu_is_bf16_when_supported() -> None:
    precision = choose_precision(torch.device("cuda"))
    assert precision.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None)


def test_compiled_model_matches_eager_and_trains() -> None:
    precision = Precision("cuda", torch.bfloat16)
    eager = train_steps(fresh_model(), precision, steps=2)
    compiled = train_steps(torch.compile(fresh_model()), precision)
    assert compiled[0] == pytest.approx(eager[0], rel=2e-2)  # same weights, same batch: same first loss
    assert compiled[-1] < 0.5 * compiled[0]


def test_checkpointing_gives_the_same_gradients_on_cuda() -> None:
    plain, checkpointed = fresh_model(), fresh_model()
    checkpointed.use_checkpointing(True)
    images, masks = disc_batch(torch.device("cuda"))
    for model in (plain, checkpointed):
        segmentation_loss(model(images), masks).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4, msg=name)  # cuDNN may sum in any order
