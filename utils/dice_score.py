"""Dice and IoU scores and the training loss (cross-entropy or BCE, plus Dice)."""

import statistics

import torch
import torch.nn.functional as F
from torch import Tensor

from .mask_encoding import IGNORE_CLASS


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
    """The reference's Dice loss (bench/reference_recipe.py re-creates its recipe with it)."""
    fn = multiclass_dice_coeff if multiclass else dice_coeff
    return 1 - fn(input, target, reduce_batch_first=True)


def class_dice_loss(probs: Tensor, one_hot: Tensor, epsilon: float = 1e-6) -> Tensor:
    """1 - the mean over the foreground classes of each class's soft Dice over the batch, for (B, C, H, W)
    probabilities and one-hot targets (ignored pixels zero in both); a class no target of the batch holds is left
    out (cross-entropy answers for predicting it).

    The reference pools all classes, the background too, into one Dice, which for softmax outputs is just the
    mean probability of each pixel's true class: predicting background everywhere around small objects cost it
    almost nothing (found by a review: 0.004 for two 2x2 objects in 32x32, their Dice 0).
    """
    dims = (0, 2, 3)
    true = one_hot.sum(dims)[1:]
    both = (probs * one_hot).sum(dims)[1:]
    dice = (2 * both + epsilon) / (probs.sum(dims)[1:] + true + epsilon)
    present = (true > 0).to(dice.dtype)  # a mask, not an index: no wait for the device
    return ((1 - dice) * present).sum() / present.sum().clamp(min=1)


def segmentation_loss(logits: Tensor, masks: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Cross-entropy + Dice of the foreground classes for C >= 2 classes (class_dice_loss), BCE + Dice for
    one-channel (binary) output.

    Pixels labelled IGNORE_CLASS count in neither term; class_weights (one per class, also two for the
    one-channel case: background, foreground) weight the cross-entropy/BCE term.
    """
    logits = logits.float()  # the loss in fp32 even under autocast
    valid = masks != IGNORE_CLASS
    target = masks.clamp(min=0)
    if logits.size(1) == 1:
        logits = logits.squeeze(1)
        target = target.float()
        pixel_weight = valid.float() if class_weights is None else valid * class_weights[target.long()]
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=pixel_weight, reduction="sum")
        bce = bce / valid.sum().clamp(min=1)
        return bce + dice_loss(torch.sigmoid(logits) * valid, target * valid)
    # cross_entropy's weighted mean, written out so that a batch whose pixels are all ignored gives 0, not NaN,
    # without asking the device first (a host sync every step).
    ce = F.cross_entropy(logits, masks, weight=class_weights, ignore_index=IGNORE_CLASS, reduction="sum")
    counted = (valid.float() if class_weights is None else class_weights[target] * valid).sum()
    ce = ce / torch.where(counted > 0, counted, torch.ones_like(counted))
    one_hot = F.one_hot(target, logits.size(1)).permute(0, 3, 1, 2).float() * valid[:, None]
    return ce + class_dice_loss(F.softmax(logits, dim=1) * valid[:, None], one_hot)


def per_class_counts(pred: Tensor, target: Tensor, n_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per image and class, of hard class-index maps (B, H, W): pixels predicted and true (the intersection),
    predicted, and true, as three (B, C) int64 tensors. Pixels whose target is IGNORE_CLASS are left out.

    Counted from one confusion matrix per image: one pass of integers (found by a profiling review: float one-hot
    maps were 9-12% of evaluate.py, and their float32 sums drop pixels past 2**24, a 4097x4097 image). On a GPU
    bincount reads the largest index back (a wait for the device), as the caller's copy of the counts would."""
    batch = pred.shape[0]
    # ignored pixels get a true class of their own, n_classes, whose column is dropped; int64 first, since an int8
    # mask (utils.mask_encoding.class_index_dtype, up to 128 classes) cannot hold n_classes
    target = target.long()
    truth = torch.where(target == IGNORE_CLASS, n_classes, target)
    images = torch.arange(batch, device=pred.device).view(-1, 1, 1)
    joint = (images * n_classes + pred.long()) * (n_classes + 1) + truth
    confusion = torch.bincount(joint.flatten(), minlength=batch * n_classes * (n_classes + 1))
    confusion = confusion.view(batch, n_classes, n_classes + 1)[..., :n_classes]  # (image, predicted, true)
    return confusion.diagonal(dim1=1, dim2=2), confusion.sum(2), confusion.sum(1)


def scores_from_counts(intersection: Tensor, predicted: Tensor, true: Tensor) -> tuple[Tensor, Tensor]:
    """Dice and IoU from per_class_counts (per image, or summed over images: the pooled scores). A class absent
    from both prediction and truth scores 1 (nothing to find, nothing found)."""
    total = predicted + true
    empty = total == 0
    dice = torch.where(empty, 1.0, 2 * intersection / total.clamp(min=1))
    iou = torch.where(empty, 1.0, intersection / (total - intersection).clamp(min=1))
    return dice, iou


def class_weights_from_pixels(class_pixels: list[int]) -> list[float]:
    """Median-frequency balancing: weight = median class frequency / class frequency, within [0.1, 10]."""
    present = [count for count in class_pixels if count > 0]
    median = statistics.median(present) if present else 1.0  # of an even count: the mean of the middle two
    return [min(max(median / count, 0.1), 10.0) if count > 0 else 1.0 for count in class_pixels]
