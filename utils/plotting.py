"""Pictures without matplotlib: mask overlays, side-by-side views and training curves, drawn with Pillow."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .atomic_files import atomic_path
from .mask_encoding import MaskValue, unused_colours

# Distinct, colour-blind-friendly colours for classes 1.. (class 0 is background and left uncoloured).
CLASS_COLOURS = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
)

BLEND_BLOCK_PIXELS = 2**21  # pixels blended at a time by overlay_mask


def class_colours(n_classes: int, mask_values: Sequence[MaskValue] | None = None) -> np.ndarray:
    """An RGB colour per class: the masks' own colours for colour-coded masks, else a fixed palette."""
    if mask_values and isinstance(mask_values[0], list):
        return np.array(mask_values, dtype=np.uint8)
    more = unused_colours([(0, 0, 0), *CLASS_COLOURS])  # past the table: no two classes alike
    colours = [(0, 0, 0)] + [CLASS_COLOURS[i] if i < len(CLASS_COLOURS) else next(more)
                             for i in range(max(n_classes, 2) - 1)]
    return np.array(colours, dtype=np.uint8)


def overlay_mask(image: np.ndarray, class_indices: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend class colours over an HxWx3 uint8 image; background pixels keep the image. In blocks of rows: whole, an
    8000x6000 image's float copies took 1.5 GB beside the prediction (a review's measurement)."""
    blended = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image.copy()
    rows = max(1, BLEND_BLOCK_PIXELS // max(1, blended.shape[1]))
    for top in range(0, blended.shape[0], rows):
        block, classes = blended[top:top + rows], class_indices[top:top + rows]
        foreground = classes > 0
        mixed = (1 - alpha) * block[foreground].astype(np.float32) + alpha * colours[classes[foreground]]
        block[foreground] = mixed.astype(np.float32).round().astype(np.uint8)  # rounded as float32, as before
    return Image.fromarray(blended)


def side_by_side(panels: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Panels of equal height in one row (image | mask | overlay), for --viz."""
    panels = [p.convert("RGB") for p in panels]
    height = max(p.height for p in panels)
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    return canvas


def _draw_series(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
                 xs: list[float], ys: list[float], colour: tuple[int, int, int]) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline=(160, 160, 160))
    points = [(x, y) for x, y in zip(xs, ys) if y is not None and np.isfinite(y)]
    if not points:
        draw.text((left + 6, top + 4), f"{title}: no data yet", fill=(0, 0, 0))
        return
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    x_span, y_span = (x_max - x_min) or 1.0, (y_max - y_min) or abs(y_max) or 1.0
    pad = 24

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (left + pad + (x - x_min) / x_span * (right - left - 2 * pad),
                bottom - pad - (y - y_min) / y_span * (bottom - top - 2 * pad))

    pixels = [to_pixel(x, y) for x, y in points]
    if len(pixels) > 1:
        draw.line(pixels, fill=colour, width=2)
    for px, py in pixels:
        draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
    draw.text((left + 6, top + 4), f"{title}  last {points[-1][1]:.4g}  min {y_min:.4g}  max {y_max:.4g}",
              fill=(0, 0, 0))
    draw.text((left + 6, bottom - 16), f"epoch {x_min:g} .. {x_max:g}", fill=(90, 90, 90))


def save_training_curves(rows: Sequence[dict], path: Path | str) -> None:
    """Loss, validation Dice and learning rate per epoch, stacked, so a run can be judged without wandb."""
    width, panel_height = 640, 200
    image = Image.new("RGB", (width, panel_height * 3), "white")
    draw = ImageDraw.Draw(image)
    epochs = [float(row["epoch"]) for row in rows]
    series = (("train loss", "train_loss", (200, 40, 40)), ("validation Dice", "val_dice", (30, 120, 200)),
              ("learning rate", "lr", (40, 150, 60)))
    for i, (title, key, colour) in enumerate(series):
        values = [None if row.get(key) in (None, "") else float(row[key]) for row in rows]
        box = (4, i * panel_height + 4, width - 5, (i + 1) * panel_height - 5)
        _draw_series(draw, box, title, epochs, values, colour)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
