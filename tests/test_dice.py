"""Dice/IoU scores and the training loss against hand-computed values."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.dice_score import (
    dice_coeff,
    dice_loss,
    multiclass_dice_coeff,
    per_class_counts,
    scores_from_counts,
    segmentation_loss,
)

EPS = 1e-6


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def one_hot(classes, n_classes: int) -> torch.Tensor:
    """(B, H, W) class indices -> (B, C, H, W) float one-hot."""
    return F.one_hot(torch.tensor(classes), n_classes).permute(0, 3, 1, 2).float()


def test_dice_of_one_overlap_in_two_plus_one_pixels_is_two_thirds():
    dice = dice_coeff(t([[1, 1], [0, 0]]), t([[1, 0], [0, 0]]))
    assert dice.shape == ()
    assert dice.item() == pytest.approx(2 * 1 / (2 + 1), abs=1e-6)


def test_dice_of_soft_prediction_uses_products():
    dice = dice_coeff(t([[0.5, 0.5], [0.5, 0.5]]), t([[1, 0], [0, 0]]))
    assert dice.item() == pytest.approx(2 * 0.5 / (2 + 1), abs=1e-6)


BATCH_PRED = [[[1, 1], [0, 0]], [[1, 1], [1, 0]]]
BATCH_TRUE = [[[1, 0], [0, 0]], [[1, 1], [1, 1]]]


def test_batch_dice_is_mean_of_per_image_dice():
    dice = dice_coeff(t(BATCH_PRED), t(BATCH_TRUE))
    assert dice.shape == ()
    assert dice.item() == pytest.approx((2 / 3 + 6 / 7) / 2, abs=1e-6)


def test_batch_dice_reduced_batch_first_pools_all_pixels():
    dice = dice_coeff(t(BATCH_PRED), t(BATCH_TRUE), reduce_batch_first=True)
    assert dice.item() == pytest.approx(2 * (1 + 3) / (2 + 1 + 3 + 4), abs=1e-6)


def test_two_empty_masks_score_one():
    assert dice_coeff(torch.zeros(3, 4), torch.zeros(3, 4)).item() == pytest.approx(1.0)
    batch = dice_coeff(t([[[0, 0], [0, 0]], [[1, 1], [0, 0]]]), t([[[0, 0], [0, 0]], [[1, 0], [0, 0]]]))
    assert batch.item() == pytest.approx((1 + 2 / 3) / 2, abs=1e-6)


@pytest.mark.parametrize("empty_side", ["prediction", "target"])
def test_one_empty_mask_scores_about_zero(empty_side):
    full = t([[1, 0], [1, 1]])
    pred, target = (torch.zeros(2, 2), full) if empty_side == "prediction" else (full, torch.zeros(2, 2))
    dice = dice_coeff(pred, target).item()
    assert 0 <= dice < 1e-5
    assert dice == pytest.approx(EPS / (3 + EPS), rel=1e-3)


# prediction [[0,1],[2,2]] vs truth [[0,1],[1,2]]: class 0 Dice 1, class 1 Dice 2/3, class 2 Dice 2/3
MC_PRED = [[[0, 1], [2, 2]]]
MC_TRUE = [[[0, 1], [1, 2]]]


def test_multiclass_dice_averages_over_classes_and_images():
    dice = multiclass_dice_coeff(one_hot(MC_PRED, 3), one_hot(MC_TRUE, 3))
    assert dice.item() == pytest.approx((1 + 2 / 3 + 2 / 3) / 3, abs=1e-6)


def test_multiclass_dice_reduced_batch_first_pools_all_classes():
    dice = multiclass_dice_coeff(one_hot(MC_PRED, 3), one_hot(MC_TRUE, 3), reduce_batch_first=True)
    assert dice.item() == pytest.approx(2 * 3 / (4 + 4), abs=1e-6)  # 3 of 4 pixels right, one-hot sums 4+4


def test_dice_loss_is_one_minus_batch_pooled_dice():
    assert dice_loss(t(BATCH_PRED), t(BATCH_TRUE)).item() == pytest.approx(1 - 0.8, abs=1e-6)
    loss = dice_loss(one_hot(MC_PRED, 3), one_hot(MC_TRUE, 3), multiclass=True)
    assert loss.item() == pytest.approx(1 - 0.75, abs=1e-6)


def test_dice_loss_is_zero_for_identical_masks():
    mask = t([[[1, 0, 1], [0, 1, 1]]])
    assert dice_loss(mask, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_per_class_dice_and_iou_by_hand():
    pred = torch.tensor([[[0, 0, 1], [0, 1, 1], [0, 0, 0]],
                         [[2, 2, 2], [2, 2, 2], [2, 2, 2]]])
    true = torch.tensor([[[0, 0, 1], [0, 0, 1], [0, 0, 0]],
                         [[0, 0, 0], [0, 0, 0], [0, 0, 0]]])
    dice, iou = scores_from_counts(*per_class_counts(pred, true, n_classes=3))
    assert dice.shape == iou.shape == (2, 3)
    # image 0: class 0 pred 6 / true 7 / both 6, class 1 pred 3 / true 2 / both 2, class 2 absent -> 1
    # image 1: class 0 and class 2 disjoint -> 0, class 1 absent everywhere -> 1
    expected_dice = torch.tensor([[12 / 13, 4 / 5, 1.0], [0.0, 1.0, 0.0]])
    expected_iou = torch.tensor([[6 / 7, 2 / 3, 1.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(dice, expected_dice, atol=1e-6)
    assert torch.allclose(iou, expected_iou, atol=1e-6)


def test_per_class_scores_are_one_for_a_perfect_prediction():
    classes = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    dice, iou = scores_from_counts(*per_class_counts(classes, classes, n_classes=4))
    assert torch.equal(dice, torch.ones(1, 4)) and torch.equal(iou, torch.ones(1, 4))


def test_per_class_counts_match_a_count_by_numpy_leave_out_ignored_pixels_and_stay_exact_past_float32() -> None:
    """Counted as integers: float32 sums of one-hot maps stop at 2**24 (16,777,216) and dropped pixels of a
    4096x4096 image (found by a profiling review)."""
    from utils.mask_encoding import IGNORE_CLASS

    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, (3, 17, 23))
    true = rng.integers(-1, 4, (3, 17, 23))  # -1: ignored
    assert IGNORE_CLASS == -1
    both, predicted, truth = per_class_counts(torch.from_numpy(pred), torch.from_numpy(true), n_classes=4)
    valid = true != IGNORE_CLASS
    for image in range(3):
        for c in range(4):
            assert both[image, c] == np.sum((pred[image] == c) & (true[image] == c))
            assert predicted[image, c] == np.sum((pred[image] == c) & valid[image])
            assert truth[image, c] == np.sum(true[image] == c)
    side = 4097  # 16,785,409 pixels, past float32's whole numbers
    pred = torch.ones(1, side, side, dtype=torch.uint8)
    true = torch.ones(1, side, side, dtype=torch.int8)
    true[0, 0, 0] = 0
    both, predicted, truth = per_class_counts(pred, true, n_classes=2)
    assert predicted[0].tolist() == [0, side * side] and truth[0].tolist() == [1, side * side - 1]
    assert both[0].tolist() == [0, side * side - 1]
    many = torch.tensor([[[-1, 5], [127, 0]]], dtype=torch.int8)  # 128 classes, the most int8 masks carry
    both, predicted, truth = per_class_counts(torch.tensor([[[0, 5], [127, 0]]]), many, n_classes=128)
    assert both[0, [0, 5, 127]].tolist() == [1, 1, 1] and predicted.sum() == truth.sum() == 3  # a code review


def _manual_dice(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (2 * (probs * target).sum() + EPS) / (probs.sum() + target.sum() + EPS)


def test_binary_loss_is_bce_plus_dice_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 5, 7)
    masks = torch.randint(0, 2, (2, 5, 7))
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], masks.float()) + 1 - _manual_dice(
        torch.sigmoid(logits[:, 0]), masks.float())
    assert segmentation_loss(logits, masks).item() == pytest.approx(expected.item(), rel=1e-6)


def _manual_class_dice_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - each foreground class's Dice over the batch, averaged over the classes some target holds."""
    losses = [1 - _manual_dice(probs[:, c], target[:, c]) for c in range(1, probs.shape[1]) if target[:, c].sum() > 0]
    return torch.stack(losses).mean() if losses else torch.tensor(0.0)


def test_multiclass_loss_is_cross_entropy_plus_the_foreground_classes_dice_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 7)
    masks = torch.randint(0, 3, (2, 5, 7))
    target = F.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    expected = F.cross_entropy(logits, masks) + _manual_class_dice_loss(F.softmax(logits, dim=1), target)
    assert segmentation_loss(logits, masks).item() == pytest.approx(expected.item(), rel=1e-6)
    masks[masks == 2] = 1  # class 2 in no mask of the batch: left out of the Dice term
    target = F.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    expected = F.cross_entropy(logits, masks) + 1 - _manual_dice(F.softmax(logits, dim=1)[:, 1], target[:, 1])
    assert segmentation_loss(logits, masks).item() == pytest.approx(expected.item(), rel=1e-6)


def test_predicting_background_around_small_objects_costs_the_dice_term_all_it_can() -> None:
    """Found by a review: the reference's Dice pools every class and the background, which for softmax outputs
    is the mean probability of the true class: background everywhere around two 2x2 objects cost 0.004."""
    from utils.dice_score import class_dice_loss

    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[0, 4:6, 4:6] = 1
    masks[1, 20:22, 9:11] = 1
    target = F.one_hot(masks, 2).permute(0, 3, 1, 2).float()
    background = torch.stack([torch.ones(2, 32, 32), torch.zeros(2, 32, 32)], dim=1)
    assert dice_loss(background, target, multiclass=True).item() == pytest.approx(8 / 2048, abs=1e-6)  # pooled
    assert class_dice_loss(background, target).item() == pytest.approx(1.0, abs=1e-6)
    assert class_dice_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("n_classes", [1, 3])
def test_perfect_logits_have_lower_loss_than_wrong_ones(n_classes):
    torch.manual_seed(0)
    masks = torch.randint(0, max(n_classes, 2), (2, 6, 5))
    if n_classes == 1:
        perfect = (masks.float() * 20 - 10)[:, None]
    else:
        perfect = F.one_hot(masks, n_classes).permute(0, 3, 1, 2).float() * 20 - 10
    good, bad = segmentation_loss(perfect, masks).item(), segmentation_loss(-perfect, masks).item()
    assert good < 1e-3
    assert bad > 1.0
    assert good < bad


def test_loss_is_computed_in_float32_for_half_precision_logits():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    masks = torch.randint(0, 3, (1, 4, 4))
    loss = segmentation_loss(logits.to(torch.bfloat16), masks)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(segmentation_loss(logits.to(torch.bfloat16).float(), masks).item())


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_term_is_the_weighted_mean_over_pixels_not_ignored(weighted):
    from utils.mask_encoding import IGNORE_CLASS

    torch.manual_seed(1)
    logits = torch.randn(2, 3, 6, 5, requires_grad=True)
    masks = torch.randint(0, 3, (2, 6, 5))
    masks[0, :2] = IGNORE_CLASS
    weights = torch.tensor([0.2, 1.0, 4.0]) if weighted else None
    valid = masks != IGNORE_CLASS
    probs = F.softmax(logits, dim=1) * valid[:, None]
    target = F.one_hot(masks.clamp(min=0), 3).permute(0, 3, 1, 2).float() * valid[:, None]
    ce = F.cross_entropy(logits, masks, weight=weights, ignore_index=IGNORE_CLASS)
    expected = ce + _manual_class_dice_loss(probs, target)
    assert segmentation_loss(logits, masks, weights).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_binary_term_weighs_each_pixel_and_averages_over_pixels_not_ignored(weighted):
    """One output channel: BCE with a weight per pixel (its class's), divided by the pixels not ignored (as
    PyTorch's mean of weighted BCE divides by the pixel count); ignored pixels count in neither term."""
    from utils.mask_encoding import IGNORE_CLASS

    torch.manual_seed(2)
    logits = torch.randn(2, 1, 6, 5)
    masks = torch.randint(0, 2, (2, 6, 5))
    masks[1, :3] = IGNORE_CLASS
    weights = torch.tensor([0.5, 3.0]) if weighted else None
    valid = masks != IGNORE_CLASS
    target = masks.clamp(min=0).float()
    per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
    if weighted:
        per_pixel = per_pixel * weights[masks.clamp(min=0)]
    bce = per_pixel[valid].sum() / valid.sum()
    expected = bce + 1 - _manual_dice(torch.sigmoid(logits[:, 0]) * valid, target * valid)
    assert segmentation_loss(logits, masks, weights).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("n_classes", [1, 3])
def test_a_batch_with_every_pixel_ignored_gives_a_finite_loss_and_zero_gradients(n_classes):
    from utils.mask_encoding import IGNORE_CLASS

    logits = torch.randn(2, n_classes, 4, 4, requires_grad=True)
    masks = torch.full((2, 4, 4), IGNORE_CLASS)
    loss = segmentation_loss(logits, masks, torch.ones(max(n_classes, 2)))
    loss.backward()
    assert torch.isfinite(loss) and torch.equal(logits.grad, torch.zeros_like(logits))


def test_median_frequency_weights_use_the_true_median_of_an_even_count() -> None:
    """Found by a review: torch's median of an even count is the lower middle value, not the documented median."""
    from utils.dice_score import class_weights_from_pixels

    assert class_weights_from_pixels([10, 20, 30, 40]) == pytest.approx([2.5, 1.25, 25 / 30, 0.625])
    assert class_weights_from_pixels([1, 0, 1000, 100_000]) == pytest.approx([10, 1, 1, 0.1])  # kept in 0.1..10
