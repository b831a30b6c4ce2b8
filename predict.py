"""Predict masks for images with a trained U-Net.

    python predict.py -i img.jpg -o out.png              # one image
    python predict.py -i a.jpg b.jpg --viz --no-save     # look, don't write
    python predict.py -m checkpoints/best.pth -i data/test/ -o predictions/ --overlay
"""

import argparse
import glob
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.checkpoint import inference_scale, load_model
from utils.data_loading import IMAGE_SUFFIXES, load_scaled_image, read_image
from utils.device import add_device_arguments, choose_device, choose_precision
from utils.errors import UserError, run_cli
from utils.inference import logits_to_classes, predict_logits
from utils.mask_encoding import decode_mask
from utils.plotting import class_colours, overlay_mask, side_by_side

MASK_FILE_SUFFIXES = (".png", ".gif", ".bmp", ".tif", ".tiff")  # lossless, so class values survive


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Predict masks from input images.")
    parser.add_argument("--model", "-m", default="MODEL.pth", metavar="FILE",
                        help="checkpoint: ours or a reference state_dict (default MODEL.pth)")
    parser.add_argument("--input", "-i", metavar="INPUT", nargs="+", required=True,
                        help="image files, folders or glob patterns")
    parser.add_argument("--output", "-o", metavar="OUTPUT", nargs="+",
                        help="one file per input, or one folder (default: <name>_OUT.png beside each input)")
    parser.add_argument("--viz", "-v", action="store_true",
                        help="show image | mask | overlay side by side (saved as <mask>_viz.png without a display)")
    parser.add_argument("--no-save", "-n", action="store_true", help="do not write the masks")
    parser.add_argument("--overlay", action="store_true", help="also write a coloured overlay <mask>_overlay.png")
    parser.add_argument("--mask-threshold", "-t", type=float, default=0.5,
                        help="probability threshold for one-class (sigmoid) models (default 0.5)")
    parser.add_argument("--scale", "-s", type=float, default=None,
                        help="image downscaling before the model (default: the scale the model was trained at)")
    parser.add_argument("--classes", "-c", type=int, default=None,
                        help="number of classes; read from the checkpoint, only needed to double-check")
    parser.add_argument("--bilinear", action="store_true", default=None,
                        help="bilinear upsampling; read from the checkpoint, only needed to double-check")
    add_device_arguments(parser)
    return parser


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders and glob patterns expanded to the image files they hold, sorted."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"input {item} does not exist and matches no image file")
        if not found and path.is_dir():
            raise UserError(f"input folder {item} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        paths.extend(found)
    return paths


def output_paths(inputs: list[Path], outputs: list[str] | None) -> list[Path]:
    """One output per input: explicit files, a folder of <name>_OUT.png, or beside each input."""
    if not outputs:
        return [path.with_name(f"{path.stem}_OUT.png") for path in inputs]
    if len(outputs) == 1 and (Path(outputs[0]).is_dir() or outputs[0].endswith(("/", os.sep)) or len(inputs) > 1):
        folder = Path(outputs[0])
        if folder.suffix.lower() in IMAGE_SUFFIXES:
            raise UserError(f"{len(inputs)} inputs but one output file {folder}: give a folder or one file each")
        folder.mkdir(parents=True, exist_ok=True)
        return [folder / f"{path.stem}_OUT.png" for path in inputs]
    if len(outputs) != len(inputs):
        raise UserError(f"{len(inputs)} inputs but {len(outputs)} outputs: give one output per input or a folder")
    for output in outputs:
        if Path(output).suffix.lower() not in MASK_FILE_SUFFIXES:
            raise UserError(f"output {output} is not an image file name: end it in .png (or / for a folder)")
    return [Path(output) for output in outputs]


def has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(args: argparse.Namespace) -> int:
    device = choose_device(args.device)
    precision = choose_precision(device, args.amp, args.precision)
    model, checkpoint = load_model(args.model, device, n_classes=args.classes, bilinear=args.bilinear)
    scale = inference_scale(checkpoint, args.scale)
    inputs = expand_inputs(args.input)
    outputs = output_paths(inputs, args.output)
    colours = class_colours(model.n_classes, model.mask_values)

    for source, target in tqdm(list(zip(inputs, outputs)), desc="predict", unit="img", disable=len(inputs) < 2):
        scaled_image, (width, height) = load_scaled_image(source, scale, model.n_channels)
        logits = predict_logits(model, scaled_image[None], device, precision, output_size=(height, width))
        class_indices = logits_to_classes(logits, args.mask_threshold)[0].cpu().numpy()
        if not args.no_save:
            target.parent.mkdir(parents=True, exist_ok=True)
            decode_mask(class_indices, model.mask_values, checkpoint.get("mask_palette")).save(target)
            if len(inputs) < 2:
                print(f"mask of {source} saved to {target}")
        image = read_image(source, model.n_channels) if args.overlay or args.viz else None
        if args.overlay:
            overlay_mask(image, class_indices, colours).save(target.with_name(f"{target.stem}_overlay.png"))
        if args.viz:
            mask_image = Image.fromarray(colours[class_indices])
            view = side_by_side([Image.fromarray(np.squeeze(image, -1) if image.shape[-1] == 1 else image),
                                 mask_image, overlay_mask(image, class_indices, colours)])
            if has_display():
                view.show(title=str(source))
            else:
                viz_path = target.with_name(f"{target.stem}_viz.png")
                view.save(viz_path)
                print(f"no display: visualisation of {source} saved to {viz_path}")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
