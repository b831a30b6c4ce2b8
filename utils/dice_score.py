"""Dice and IoU scores and the training loss (cross-entropy or BCE, plus Dice)."""

import torch
import torch.nn.functional as F
from torch import Tensor


def dice_coeff(input: Tensor, target: Tensor, reduce_batch_first: bool = False, epsilon: float = 1e-6) -> Tensor:
    """Mean Dice of (soft) masks shaped (H, W) or (B, H, W); two empty masks agree perfectly (Dice 1)."""
    assert input.size() == target.size() and input.dim() in (2, 3)
    sum_dim = (-1, -2) if input.dim() == 2 or not reduce_batch_first else (-1, -2, -3)
    intersection = 2 * (input * target).sum(dim=sum_dim)
    sets_sum = input.sum(dim=sum_dim) + target.sum(dim=sum_dim)
    sets_sum = torch.where(sets_sum == 0, intersection, sets_sum)
    return ((intersection + epsilon) / (sets_sum + epsilon)).mean()


def multiclass_dice_coeff(input: Tensor, target: Tensor, reduce_batch_first: bool = False,
                          epsilon: float = 1e-6) -> Tensor:
    """Dice averaged over classes: (B, C, H, W) one-hot or probabilities."""
    return dice_coeff(input.flatten(0, 1), target.flatten(0, 1), reduce_batch_first, epsilon)


def dice_loss(input: Tensor, target: Tensor, multiclass: bool = False) -> Tensor:
    fn = multiclass_dice_coeff if multiclass else dice_coeff
    return 1 - fn(input, target, reduce_batch_first=True)


def segmentation_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Cross-entropy + Dice for C >= 2 classes, BCE + Dice for one-channel (binary) output."""
    logits = logits.float()  # the loss in fp32 even under autocast
    if logits.size(1) == 1:
        target = masks.float()
        logits = logits.squeeze(1)
        return F.binary_cross_entropy_with_logits(logits, target) + dice_loss(torch.sigmoid(logits), target)
    one_hot = F.one_hot(masks, logits.size(1)).permute(0, 3, 1, 2).float()
    return F.cross_entropy(logits, masks) + dice_loss(F.softmax(logits, dim=1), one_hot, multiclass=True)


def per_class_scores(pred: Tensor, target: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """Per-image, per-class Dice and IoU of hard class-index maps (B, H, W) -> two (B, C) tensors.

    A class absent from both prediction and truth scores 1 (nothing to find, nothing found).
    """
    pred_one_hot = F.one_hot(pred.long(), n_classes).flatten(1, 2).float()  # (B, H*W, C)
    true_one_hot = F.one_hot(target.long(), n_classes).flatten(1, 2).float()
    intersection = (pred_one_hot * true_one_hot).sum(1)
    total = pred_one_hot.sum(1) + true_one_hot.sum(1)
    union = total - intersection
    empty = total == 0
    dice = torch.where(empty, 1.0, 2 * intersection / total.clamp(min=1))
    iou = torch.where(empty, 1.0, intersection / union.clamp(min=1))
    return dice, iou
