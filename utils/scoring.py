"""Scoring a model on batches of images and masks: per-image, per-class and pooled Dice and IoU, as evaluate.py
reports them and as training validates (one function for both, so that evaluate.py reproduces validation's Dice)."""

import sys
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import unwrap_model
from .data_loading import same_size_parts
from .device import Precision
from .dice_score import per_class_counts, scores_from_counts
from .inference import (
    DEFAULT_MASK_THRESHOLD,
    WHOLE_IMAGE,
    InferenceOptions,
    logits_to_classes,
    notify_once,
    predict_logits,
)
from .progress import progress_bar
from .size_groups import regrouped


def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    precision: Precision,
    threshold: float = DEFAULT_MASK_THRESHOLD,
    progress: bool = True,
    options: InferenceOptions = WHOLE_IMAGE,
    bar_stays: bool = False,
    batch_size: int | None = None,
    notify: Callable[[str], None] | None = None,
) -> dict:
    """Per-image and mean Dice/IoU, comparing at the masks' resolution (logits are resized to it).

    "dice" and "iou" are means over images of the mean over foreground classes (class 0 is background),
    as in the reference, leaving out classes that no mask holds and the model never predicted; the per-class
    lists include every class and the background. An image without a class in its mask or prediction scores 1
    for it, which lifts the mean of a class most images lack: the pooled scores (all pixels of all images
    together) and the number of images whose mask holds each class are given beside them. An image whose mask
    is all --ignore-index has nothing to score: it is in no mean and no row, and is named in "unscored"; with no
    image scored, the means are None.
    options: tiles and test-time augmentation (evaluate.py); validation during training uses the whole-image
    default (tile="auto" under --crop). bar_stays: evaluate.py's progress bar stays when done (and is written to
    logs); validation's vanishes, its epoch's line said after it. batch_size: images of one size from several
    loader batches are scored together, this many at a time (evaluate.py, whose folders may hold sizes in any
    order); None scores the loader's batches as they come (validation's are made of one size each). notify: where
    notes on tiles go (default: stderr, each once per call; training passes one for the whole run).
    """
    was_training = model.training
    model.eval()
    n_classes = max(unwrap_model(model).n_classes, 2)
    rows: list[dict] = []
    dice_sum = torch.zeros(n_classes, dtype=torch.float64)
    notify = notify or notify_once()
    iou_sum = torch.zeros(n_classes, dtype=torch.float64)
    pooled_counts = [torch.zeros(n_classes, dtype=torch.float64) for _ in range(3)]  # intersection, predicted, true
    images_with = torch.zeros(n_classes, dtype=torch.int64)  # images whose mask holds the class
    # Images scored, not batches loaded: regrouping holds up to a few batches' images back, and a bar of batches
    # stood at 100% while they were scored (a review).
    bar = progress_bar(total=images_in(loader), desc="evaluation", unit="img", leave=bar_stays, disable=not progress)
    skipped: list[str] = []
    unscored: list[str] = []
    order: dict[str, int] = {}  # the loader's, which the rows keep whatever the regrouping

    def loaded_parts() -> Iterator[dict]:
        for batch in loader:
            bar.update(len(batch.get("skipped", [])))
            for part in readable_parts(batch, skipped):
                order.update((name, len(order)) for name in part["name"] if name not in order)
                yield part

    with bar:
        for part in loaded_parts() if batch_size is None else regrouped(loaded_parts(), batch_size):
            masks = part["mask"].to(device, non_blocking=True).long()  # int8 from the loader
            logits = predict_logits(model, part["image"], device, precision, output_size=tuple(masks.shape[-2:]),
                                    options=options, notify=notify)
            counts = [count.cpu().double() for count in per_class_counts(logits_to_classes(logits, threshold), masks,
                                                                          n_classes)]
            dice, iou = scores_from_counts(*counts)
            scored = counts[2].sum(1) > 0  # an image whose mask is all --ignore-index has nothing to score
            unscored += [name for name, has_pixels in zip(part["name"], scored.tolist()) if not has_pixels]
            dice, iou, names = dice[scored], iou[scored], [name for name, has in zip(part["name"], scored) if has]
            dice_sum += dice.sum(0)
            iou_sum += iou.sum(0)
            for pooled, count in zip(pooled_counts, counts):
                pooled += count.sum(0)
            images_with += (counts[2] > 0).sum(0)
            for name, image_dice, image_iou in zip(names, dice, iou):
                rows.append({"name": name, "dice": None, "iou": None,  # the means, below: they need every image
                             **{f"dice_{c}": image_dice[c].item() for c in range(n_classes)},
                             **{f"iou_{c}": image_iou[c].item() for c in range(n_classes)}})
            bar.update(len(part["name"]))
    model.train(was_training)
    rows.sort(key=lambda row: order[row["name"]])
    unscored.sort(key=order.__getitem__)
    count = max(len(rows), 1)
    pooled_dice, pooled_iou = scores_from_counts(*pooled_counts)
    seen = [bool(pooled_counts[1][c] + pooled_counts[2][c] > 0) for c in range(n_classes)]
    set_image_means(rows, seen)
    scored = scored_classes(seen)
    any_scored = bool(rows)  # else no score at all, not a 0 (or the free 1s of empty masks)
    return {
        "dice": sum(r["dice"] for r in rows) / count if any_scored else None,
        "iou": sum(r["iou"] for r in rows) / count if any_scored else None,
        "dice_pooled": pooled_dice[scored].mean().item() if any_scored else None,  # the same classes', averaged
        "iou_pooled": pooled_iou[scored].mean().item() if any_scored else None,
        "dice_per_class": (dice_sum / count).tolist(),
        "iou_per_class": (iou_sum / count).tolist(),
        "dice_pooled_per_class": pooled_dice.tolist(),
        "iou_pooled_per_class": pooled_iou.tolist(),
        "images_per_class": images_with.tolist(),
        "seen_per_class": seen,  # in a mask or a prediction (the foreground ones are in the means)
        "images": len(rows),
        "rows": rows,
        "skipped": skipped,
        "unscored": unscored,  # every pixel ignored: in no mean, no row
    }


def images_in(loader: Iterable[dict]) -> int | None:
    """The images a pass over the loader gives (its dataset's length), where it says; None: a bar without a total."""
    try:
        return len(loader.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None


def scored_classes(seen: list[bool]) -> list[int]:
    """The foreground classes in the means: those seen, or all of them where none was."""
    return [c for c in range(1, len(seen)) if seen[c]] or list(range(1, len(seen)))


def set_image_means(rows: list[dict], seen: list[bool]) -> None:
    """Each row's "dice" and "iou": the mean over the foreground classes seen (in some mask or prediction: seen[c])
    of the images scored together. A class no mask holds and the model never predicted (an extra --classes) has
    nothing to score, and its free 1s would lift every image's mean; where no foreground class was seen at all,
    all count (each scores 1). Under torchrun, train.py passes the classes seen by all the processes."""
    scored = scored_classes(seen)
    for row in rows:
        row["dice"] = sum(row[f"dice_{c}"] for c in scored) / len(scored)
        row["iou"] = sum(row[f"iou_{c}"] for c in scored) / len(scored)


def readable_parts(batch: dict, skipped: list[str]) -> Iterator[dict]:
    """same_size_parts of the images that loaded; why the others did not (a file that broke after the data check,
    in a dataset made with skip_unreadable) is reported and added to skipped."""
    for reason in batch.get("skipped", []):
        tqdm.write(f"warning: not scored: {reason}", file=sys.stderr)
    skipped += batch.get("skipped", [])
    if "image" in batch:
        yield from same_size_parts(batch)


def left_out_classes(result: dict) -> list[int]:
    """The foreground classes in no mask and never predicted, where some other one was (as scored_classes)."""
    scored = scored_classes(result["seen_per_class"])
    return [c for c in range(1, len(result["seen_per_class"])) if c not in scored]
