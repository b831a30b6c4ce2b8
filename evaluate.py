"""Dice and IoU of a model on image/mask folders (the scoring itself is utils/scoring.py, which validation uses).

    python evaluate.py -m checkpoints/best.pth --imgs data/imgs --masks data/masks
"""

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import torch

from utils.atomic_files import NAME_BYTES, atomic_path, check_output_file
from utils.checkpoint import inference_scale, load_model
from utils.data_loading import (
    UPRIGHT_FIX,
    SegmentationDataset,
    add_image_limit_argument,
    file_orientation,
    image_pixel_limit,
    list_pairs,
    make_loader,
)
from utils.device import (
    add_device_arguments,
    choose_device,
    choose_precision,
    float32_default,
    freed_memory_kept,
)
from utils.errors import UserError, as_parsed, counted, run_cli
from utils.inference import (
    add_inference_arguments,
    add_mask_threshold_argument,
    check_prediction_flags,
    default_prediction_batch,
    fuse_batchnorm,
    inference_options,
    prediction_workers,
    settle_mask_threshold,
)
from utils.mask_encoding import binarize_threshold, short_values
from utils.scoring import evaluate, left_out_classes

SCORES_JSON_START = re.compile(r'\[\s*(\]\s*$|\{\s*"name":\s*"(?:[^"\\]|\\.)*",\s*"dice":)')  # as write_rows writes


def is_scores_file(head: str) -> bool:
    """The start of a file write_rows wrote (an earlier evaluation's, which --output may replace): a CSV of its
    header, or a JSON list whose first row starts with "name" and "dice" (or an empty list, which holds nothing)."""
    text = head.lstrip()
    return text.startswith("name,dice,iou") or SCORES_JSON_START.match(text) is not None


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
                        help="images per batch, of one size each (default: as predict.py, "
                             "16 on a CUDA GPU, elsewhere as many as fill 512x512 pixels, at most 64)")
    parser.add_argument("--workers", type=int, default=None,
                        help="image decoding processes (default: all cores but one, at most 8, on a CUDA GPU; 1 "
                             "otherwise)")
    add_image_limit_argument(parser)
    add_inference_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument("--output", "-o", type=Path, default=Path("evaluation.csv"),
                        help="per-image scores, .csv or .json (default evaluation.csv)")
    return parser


def main(args: argparse.Namespace) -> dict:
    args = as_parsed(args, get_args_parser())
    device = choose_device(args.device)
    # the pixel limit, the default dtype and the allocator setting are the run's only: a notebook that calls main()
    # gets its own back
    with image_pixel_limit(args.max_image_pixels), float32_default(), freed_memory_kept(device):
        return score_folders(args, device)


def score_folders(args: argparse.Namespace, device: torch.device) -> dict:
    """evaluate.py's run: the model scored on the folders, the table printed and the per-image scores written."""
    precision = choose_precision(device, args.amp, args.precision)
    options = inference_options(args)
    check_prediction_flags(args)
    model, checkpoint = load_model(args.model, device)
    model = fuse_batchnorm(model, in_place=True)  # the unfused original is not needed
    threshold, note = settle_mask_threshold(args.mask_threshold, model.n_classes)
    if note:
        print(note, file=sys.stderr)
    if checkpoint.get("mask_values") is None and model.n_classes > 2:  # a reference state_dict: values guessed
        # (binary models read 0/1 and 0/255 masks alike, so only the guess for more classes is worth a word)
        example = [0, *(round(255 * (i + 1) / (model.n_classes - 1)) for i in range(model.n_classes - 1))] \
            if model.n_classes <= 256 else list(range(model.n_classes))  # spread over 8 bits where they fit
        print(f"note: {args.model} holds no mask_values, so its classes are taken to be the mask values "
              f"{short_values(model.mask_values)}; if its masks used others, add one per class to it and save it "
              f"again, e.g. checkpoint['mask_values'] = {short_values(example)}", file=sys.stderr)
    scale = inference_scale(checkpoint, args.scale)
    pairs = list_pairs(args.imgs, args.masks, args.mask_suffix)
    trained_with = checkpoint.get("args") or {}  # read the masks the way the model was trained on them
    dataset = SegmentationDataset(pairs, model.mask_values, scale, model.n_channels, scale_masks=False,
                                  binarize=binarize_threshold(trained_with.get("binarize")),
                                  ignore_value=model.ignore_value, either_binary=True, skip_unreadable=True)
    batch_size = args.batch_size or default_prediction_batch(device, [pair.image for pair in pairs], scale)
    loader = make_loader(dataset, batch_size, device, prediction_workers(args.workers, device, len(pairs)))
    check_output_file(args.output, "--output", (".csv", ".json"), ours=is_scores_file)  # before the evaluation
    result = evaluate(model, loader, device, precision, threshold, options=options, bar_stays=True,
                      batch_size=batch_size)
    if result["images"] == 0 and result["skipped"]:
        raise UserError(f"no pair could be scored: {result['skipped'][0]}")
    if result["images"] == 0 and result["unscored"]:  # all --ignore-index: a mean would be a 0 (or a free 1)
        raise UserError(f"every mask in {args.masks} holds only pixels of --ignore-index {model.ignore_value} "
                        f"(e.g. {result['unscored'][0]}), which {args.model} was trained to leave out: there is "
                        "nothing to score; check the masks folder")
    unseen = left_out_classes(result)
    for row in result["rows"]:  # their free 1s would read as scores
        row.update({f"{score}_{c}": None for c in unseen for score in ("dice", "iou")})
    try:  # the scores file first: the work is kept whatever happens to the printed table (a log on a full disk)
        write_rows(result["rows"], args.output)
        unwritten = None
    except UserError as error:
        unwritten = error  # said after the table, which holds the scores
    extras = "".join(f", {name} {value}" for name, value in (("tiles", options.tile), ("TTA", options.tta))
                     if value not in ("auto", "none"))
    print(f"{result['images']} images, model {args.model}, scale {scale}, {precision.name} on {device}{extras}")
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
    if result["unscored"]:
        names = ", ".join(result["unscored"][:3]) + (", ..." if len(result["unscored"]) > 3 else "")
        hold = "holds" if len(result["unscored"]) == 1 else "hold"
        print(f"note: {counted(len(result['unscored']), 'mask')} of the images {hold} only pixels of --ignore-index "
              f"{model.ignore_value} ({names}): nothing in them to score, so they are left out of the means and of "
              f"{args.output.name}", file=sys.stderr)
    if model.ignore_value == 255 and list(model.mask_values) == [0, 1] and result["images_per_class"][1] == 0:
        print("note: no mask holds the object value 1, and the model was trained ignoring 255: masks that mark "
              "objects with 255 had them ignored, not scored; save such masks as 0/1", file=sys.stderr)
    turned = [pair.image.name for pair in pairs if file_orientation(pair.image) != 1]
    if turned:  # as predict.py says of its inputs; training's data check lists them too
        names = ", ".join(turned[:3]) + (", ..." if len(turned) > 3 else "")
        print(f"note: {len(turned)} of the images carry an EXIF orientation ({names}): they are scored as stored, "
              f"while viewers show them turned or mirrored; if their masks were drawn on the upright view, "
              f"{UPRIGHT_FIX}", file=sys.stderr)
    if unwritten is not None:
        raise unwritten
    print(f"per-image scores written to {args.output}")
    return result


def command_line(args: argparse.Namespace) -> dict:
    """main(), and for the command line one closing line (exit code 2) when some pairs could not be scored; a
    program calling main() gets the scores of the others, and the reasons in result["skipped"]. Found by a scale
    review: the first broken file of 20,000 stopped the run once it had scored the others, with nothing written."""
    result = main(args)
    if result["skipped"]:
        scored = result["images"] + len(result["unscored"])
        raise UserError(f"{len(result['skipped'])} of {counted(scored + len(result['skipped']), 'pair')} could not "
                        f"be scored (listed above as not scored, e.g. {result['skipped'][0]}): the scores above and "
                        f"in {args.output} are of the others; mend, replace or remove those files")
    return result


if __name__ == "__main__":
    run_cli(command_line, get_args_parser())
