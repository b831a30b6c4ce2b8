"""Dice and IoU of a model on image/mask folders: the function used during training, and a CLI.

    python evaluate.py -m checkpoints/best.pth --imgs data/imgs --masks data/masks
"""

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from utils.atomic_files import NAME_BYTES, atomic_path
from utils.checkpoint import inference_scale, load_model, unwrap_model
from utils.data_loading import (
    UPRIGHT_FIX,
    SegmentationDataset,
    add_image_limit_argument,
    file_orientation,
    image_pixel_limit,
    list_pairs,
    make_loader,
    same_size_parts,
)
from utils.device import (
    Precision,
    add_device_arguments,
    choose_device,
    choose_precision,
    freed_memory_kept,
)
from utils.dice_score import per_class_counts, scores_from_counts
from utils.errors import UserError, check_output_file, run_cli
from utils.inference import (
    DEFAULT_MASK_THRESHOLD,
    WHOLE_IMAGE,
    InferenceOptions,
    add_inference_arguments,
    add_mask_threshold_argument,
    check_prediction_flags,
    default_prediction_batch,
    fuse_batchnorm,
    inference_options,
    logits_to_classes,
    notify_once,
    predict_logits,
    settle_mask_threshold,
)
from utils.mask_encoding import binarize_threshold, short_values
from utils.progress import progress_bar


def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    precision: Precision,
    threshold: float = DEFAULT_MASK_THRESHOLD,
    progress: bool = True,
    options: InferenceOptions = WHOLE_IMAGE,
    bar_stays: bool = False,
) -> dict:
    """Per-image and mean Dice/IoU, comparing at the masks' resolution (logits are resized to it).

    "dice" and "iou" are means over images of the mean over foreground classes (class 0 is background),
    as in the reference, leaving out classes that no mask holds and the model never predicted; the per-class
    lists include every class and the background. An image without a class in its mask or prediction scores 1
    for it, which lifts the mean of a class most images lack: the pooled scores (all pixels of all images
    together) and the number of images whose mask holds each class are given beside them.
    options: tiles and test-time augmentation (evaluate.py); validation during training uses the whole-image
    default (tile="auto" under --crop). bar_stays: evaluate.py's progress bar stays when done (and is written to
    logs); validation's vanishes, its epoch's line said after it.
    """
    was_training = model.training
    model.eval()
    n_classes = max(unwrap_model(model).n_classes, 2)
    rows: list[dict] = []
    dice_sum = torch.zeros(n_classes, dtype=torch.float64)
    notify = notify_once(tqdm.write)
    iou_sum = torch.zeros(n_classes, dtype=torch.float64)
    pooled_counts = [torch.zeros(n_classes, dtype=torch.float64) for _ in range(3)]  # intersection, predicted, true
    images_with = torch.zeros(n_classes, dtype=torch.int64)  # images whose mask holds the class
    batches = progress_bar(loader, desc="evaluation", unit="batch", leave=bar_stays, disable=not progress)
    skipped: list[str] = []
    for part in (part for batch in batches for part in readable_parts(batch, skipped)):
        masks = part["mask"].to(device, non_blocking=True).long()  # int8 from the loader
        logits = predict_logits(model, part["image"], device, precision, output_size=tuple(masks.shape[-2:]),
                                options=options, notify=notify)
        counts = [count.cpu().double() for count in per_class_counts(logits_to_classes(logits, threshold), masks,
                                                                      n_classes)]
        dice, iou = scores_from_counts(*counts)
        dice_sum += dice.sum(0)
        iou_sum += iou.sum(0)
        for pooled, count in zip(pooled_counts, counts):
            pooled += count.sum(0)
        images_with += (counts[2] > 0).sum(0)
        for name, image_dice, image_iou in zip(part["name"], dice, iou):
            rows.append({"name": name, "dice": None, "iou": None,  # the means, below: they need every image
                         **{f"dice_{c}": image_dice[c].item() for c in range(n_classes)},
                         **{f"iou_{c}": image_iou[c].item() for c in range(n_classes)}})
    model.train(was_training)
    count = max(len(rows), 1)
    pooled_dice, pooled_iou = scores_from_counts(*pooled_counts)
    seen = [bool(pooled_counts[1][c] + pooled_counts[2][c] > 0) for c in range(n_classes)]
    set_image_means(rows, seen)
    scored = scored_classes(seen)
    return {
        "dice": sum(r["dice"] for r in rows) / count,
        "iou": sum(r["iou"] for r in rows) / count,
        "dice_pooled": pooled_dice[scored].mean().item(),  # the same classes' pooled scores, averaged
        "iou_pooled": pooled_iou[scored].mean().item(),
        "dice_per_class": (dice_sum / count).tolist(),
        "iou_per_class": (iou_sum / count).tolist(),
        "dice_pooled_per_class": pooled_dice.tolist(),
        "iou_pooled_per_class": pooled_iou.tolist(),
        "images_per_class": images_with.tolist(),
        "seen_per_class": seen,  # in a mask or a prediction (the foreground ones are in the means)
        "images": len(rows),
        "rows": rows,
        "skipped": skipped,
    }


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


def is_scores_file(head: str) -> bool:
    """The start of a file write_rows wrote (an earlier evaluation's, which --output may replace)."""
    text = head.lstrip()
    return text.startswith("name,dice,iou") or text.startswith("[") and ('"dice"' in text or text.rstrip() == "[]")


def left_out_classes(result: dict) -> list[int]:
    """The foreground classes in no mask and never predicted, where some other one was (as scored_classes)."""
    scored = scored_classes(result["seen_per_class"])
    return [c for c in range(1, len(result["seen_per_class"])) if c not in scored]


def print_class_table(result: dict, mask_values: list, left_out: list[int]) -> None:
    """Per class: its mask value, the means over images and the pooled scores; "-" for a class left out, whose
    free 1s are no score."""
    print(f"{'class':>5}  {'mask value':>14}  {'Dice':>7}  {'IoU':>7}  {'pooled Dice':>11}  {'pooled IoU':>10}  "
          f"{'in images':>9}")
    per_class = zip(result["dice_per_class"], result["iou_per_class"], result["dice_pooled_per_class"],
                    result["iou_pooled_per_class"], result["images_per_class"])
    for index, (dice, iou, pooled_dice, pooled_iou, holding) in enumerate(per_class):
        scores = [f"{'-':>7}", f"{'-':>7}", f"{'-':>11}", f"{'-':>10}"] if index in left_out else \
            [f"{dice:7.4f}", f"{iou:7.4f}", f"{pooled_dice:11.4f}", f"{pooled_iou:10.4f}"]
        print(f"{index:>5}  {str(mask_values[index]):>14}  {'  '.join(scores)}  {holding:>9}")


def write_rows(rows: list[dict], path: Path) -> None:
    """Per-image scores as CSV, or JSON when the file name ends in .json."""
    try:
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors=NAME_BYTES) as file:
            if path.suffix.lower() == ".json":
                file.write(json.dumps(rows, indent=1))
            else:
                writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["name", "dice", "iou"])
                writer.writeheader()
                writer.writerows(rows)
    except OSError as error:  # the folder was tried before the evaluation; a disk can fill up since
        raise UserError(f"cannot write --output {path} ({error.strerror or error}): free disk space or pick "
                        "another --output (the scores are printed above)") from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score a trained U-Net on image/mask folders (Dice and IoU).")
    parser.add_argument("--model", "-m", default="MODEL.pth", metavar="FILE", help="checkpoint (default MODEL.pth)")
    parser.add_argument("--imgs", type=Path, default=Path("data/imgs"), help="image folder (default data/imgs)")
    parser.add_argument("--masks", type=Path, default=Path("data/masks"), help="mask folder (default data/masks)")
    parser.add_argument("--mask-suffix", default=None,
                        help="mask name = image name + suffix (e.g. _mask); detected when omitted")
    parser.add_argument("--scale", "-s", type=float, default=None,
                        help="image scaling before the model, as predict.py's (default: the scale the model was "
                             "trained at)")
    add_mask_threshold_argument(parser)
    parser.add_argument("--batch-size", "-b", type=int, default=None,
                        help="images per batch; a batch of mixed sizes is split by size (default: as predict.py, "
                             "16 on a CUDA GPU, elsewhere as many as fill 512x512 pixels, at most 64)")
    parser.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    add_image_limit_argument(parser)
    add_inference_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument("--output", "-o", type=Path, default=Path("evaluation.csv"),
                        help="per-image scores, .csv or .json (default evaluation.csv)")
    return parser


def main(args: argparse.Namespace) -> dict:
    device = choose_device(args.device)
    # process-wide settings are the run's only: a notebook that calls main() gets its own back
    with image_pixel_limit(args.max_image_pixels), freed_memory_kept(device):
        return score_folders(args, device)


def score_folders(args: argparse.Namespace, device: torch.device) -> dict:
    """evaluate.py's run: the model scored on the folders, the table printed and the per-image scores written."""
    precision = choose_precision(device, args.amp, args.precision)
    options = inference_options(args)
    check_prediction_flags(args)
    model, checkpoint = load_model(args.model, device)
    model = fuse_batchnorm(model)  # the unfused original is freed
    threshold, note = settle_mask_threshold(args.mask_threshold, model.n_classes)
    if note:
        print(note, file=sys.stderr)
    if checkpoint.get("mask_values") is None and model.n_classes > 2:  # a reference state_dict: values guessed
        # (binary models read 0/1 and 0/255 masks alike, so only the guess for more classes is worth a word)
        print(f"note: {args.model} holds no mask_values, so its classes are taken to be the mask values "
              f"{short_values(model.mask_values)}; if its masks used others, add them to it, e.g. "
              "checkpoint['mask_values'] = [0, 255]", file=sys.stderr)
    scale = inference_scale(checkpoint, args.scale)
    pairs = list_pairs(args.imgs, args.masks, args.mask_suffix)
    trained_with = checkpoint.get("args") or {}  # read the masks the way the model was trained on them
    dataset = SegmentationDataset(pairs, model.mask_values, scale, model.n_channels, scale_masks=False,
                                  binarize=binarize_threshold(trained_with.get("binarize")),
                                  ignore_value=model.ignore_value, either_binary=True)
    batch_size = args.batch_size or default_prediction_batch(device, [pair.image for pair in pairs], scale)
    loader = make_loader(dataset, batch_size, device, min(args.workers, len(pairs)))
    check_output_file(args.output, "--output", (".csv", ".json"), ours=is_scores_file)  # before the evaluation
    result = evaluate(model, loader, device, precision, threshold, options=options, bar_stays=True)
    extras = "".join(f", {name} {value}" for name, value in (("tiles", options.tile), ("TTA", options.tta))
                     if value not in ("auto", "none"))
    print(f"{result['images']} images, model {args.model}, scale {scale}, {precision.name} on {device}{extras}")
    unseen = left_out_classes(result)
    print_class_table(result, model.mask_values, unseen)
    print(f"mean foreground Dice {result['dice']:.4f}  IoU {result['iou']:.4f} (means over images; pooled over all "
          f"pixels: Dice {result['dice_pooled']:.4f}  IoU {result['iou_pooled']:.4f})")
    if min(result["images_per_class"][1:], default=result["images"]) < result["images"]:
        print("Dice, IoU: means over images, where an image without the class in mask and prediction scores 1; "
              "pooled: over all pixels of all images together (the fairer score of a class few images hold)")
    if unseen:
        named = (f"class {unseen[0]} (mask value {model.mask_values[unseen[0]]})" if len(unseen) == 1 else
                 f"{len(unseen)} classes {short_values(unseen)} (mask values "
                 f"{short_values([model.mask_values[c] for c in unseen])})")
        print(f"{named}: in no mask and never predicted, left out of the mean foreground Dice and IoU, and empty in "
              f"{args.output.name}")
        for row in result["rows"]:  # their free 1s would read as scores
            row.update({f"{score}_{c}": None for c in unseen for score in ("dice", "iou")})
    if model.ignore_value == 255 and list(model.mask_values) == [0, 1] and result["images_per_class"][1] == 0:
        print("note: no mask holds the object value 1, and the model was trained ignoring 255: masks that mark "
              "objects with 255 had them ignored, not scored; save such masks as 0/1", file=sys.stderr)
    turned = [pair.image.name for pair in pairs if file_orientation(pair.image) != 1]
    if turned:  # as predict.py says of its inputs; training's data check lists them too
        names = ", ".join(turned[:3]) + (", ..." if len(turned) > 3 else "")
        print(f"note: {len(turned)} of the images carry an EXIF orientation ({names}): they are scored as stored, "
              f"while viewers show them turned or mirrored; if their masks were drawn on the upright view, "
              f"{UPRIGHT_FIX}", file=sys.stderr)
    write_rows(result["rows"], args.output)
    print(f"per-image scores written to {args.output}")
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser())
