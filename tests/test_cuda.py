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


def test_out_of_memory_on_cuda_falls_back_to_tiles() -> None:
    """A real CUDA out-of-memory error (allocator capped ~300 MB above the weights) is caught and tiled around."""
    from utils.inference import InferenceOptions, predict_logits

    device = torch.device("cuda", torch.cuda.current_device())  # the memory cap wants an index
    model = fresh_model().eval()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    cap = torch.cuda.memory_allocated(device) + 300 * 2**20
    images = torch.randint(0, 256, (1, 3, 1024, 1024), dtype=torch.uint8)  # ~1 GB whole in bf16
    messages: list[str] = []
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    try:
        logits = predict_logits(model, images, device, Precision("cuda", torch.bfloat16),
                                options=InferenceOptions(tile="none"), notify=messages.append)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    assert messages and "out of memory" in messages[0]
    assert logits.shape == (1, 2, 1024, 1024) and torch.isfinite(logits).all()


def test_predict_folder_on_cuda(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    import predict

    (tmp_path / "in").mkdir()
    for index in range(5):
        Image.fromarray(np.full((96, 128, 3), index * 40, dtype=np.uint8)).save(tmp_path / "in" / f"{index}.jpg")
    torch.save({**UNet(3, 2).state_dict(), "mask_values": [0, 1]}, tmp_path / "m.pth")
    code = predict.main(predict.get_args_parser().parse_args(
        ["-m", str(tmp_path / "m.pth"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "1",
         "--batch-size", "2", "--workers", "1", "--device", "cuda", "--tta", "flip", "--csv", "--compile", "off"]))
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"{i}.png" for i in range(5)]
    assert Image.open(tmp_path / "out" / "0.png").size == (128, 96)


def test_class_counts_on_cuda_match_the_cpu() -> None:
    from utils.mask_writer import class_counts

    for n_classes in (2, 40):  # per-class sums, then the scatter
        classes = torch.randint(0, n_classes, (4, 96, 128), generator=torch.Generator().manual_seed(n_classes))
        expected = class_counts(classes, n_classes)
        on_gpu = classes.cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # the batch's results are copied back while the next one computes
        try:
            counts = class_counts(on_gpu, n_classes)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.equal(counts.cpu(), expected)


@pytest.mark.parametrize("n_classes", [1, 2])
def test_a_training_step_makes_no_host_sync(n_classes) -> None:
    """The issue's "no host syncs per step": train_step (loss with class weights and ignored pixels, backward,
    clipping, the non-finite guard, fused AdamW) queues its work without waiting for the GPU."""
    from utils.mask_encoding import IGNORE_CLASS
    from utils.nan_guard import NonFiniteGuard

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = UNet(3, n_classes).to(device, memory_format=torch.channels_last)
    images, masks = disc_batch(device)
    masks[0, :8] = IGNORE_CLASS
    weights = torch.tensor([0.5, 2.0], device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    guard = NonFiniteGuard(model, optimizer, device)
    precision = Precision("cuda", torch.bfloat16)
    train_step(model, images, masks, optimizer, scaler, precision, 1.0, weights, guard=guard)  # state created
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _ = train_step(model, images, masks, optimizer, scaler, precision, 1.0, weights, guard=guard)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss) and guard.counts() == (0, 0)


def test_a_prediction_batch_is_queued_without_a_host_sync() -> None:
    """predict.py copies a batch's masks back while the next batch computes: queuing one must not wait."""
    from utils.inference import InferenceOptions, fuse_batchnorm, predict_logits
    from utils.mask_encoding import encoding_table
    from utils.mask_writer import MaskEncoder

    device = torch.device("cuda")
    model = fuse_batchnorm(UNet(3, 2)).to(device, memory_format=memory_format(device))
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8).pin_memory()
    precision, options = Precision("cuda", torch.bfloat16), InferenceOptions(tile="auto")
    encode = MaskEncoder(encoding_table([0, 1]), 2, device, class_indices=False, probs=False, threshold=0.5)
    encode(predict_logits(model, images, device, precision, (128, 192), options), [0, 1])  # cuDNN tuning syncs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ready = encode(predict_logits(model, images, device, precision, (128, 192), options), [0, 1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ready["done"].synchronize()
    assert ready["counts"].sum(1).tolist() == [128 * 192] * 2 and ready["encoded"].shape == (2, 128, 192)
