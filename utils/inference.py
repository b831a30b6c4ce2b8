"""One forward path from uint8 images to class maps, shared by validation, evaluate.py and predict.py."""

import torch
import torch.nn.functional as F
from torch import nn

from .data_loading import normalize_images
from .device import Precision, memory_format


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    precision: Precision,
    output_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> fp32 logits, bilinearly resized to output_size (e.g. the original image size)."""
    inputs = normalize_images(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format(device))
    with precision.autocast():
        logits = model(inputs)
    logits = logits.float()
    if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
        logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
    return logits


def logits_to_classes(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, H, W) class indices: sigmoid > threshold for one channel, else argmax."""
    if logits.size(1) == 1:
        return (torch.sigmoid(logits[:, 0]) > threshold).long()
    return logits.argmax(dim=1)
