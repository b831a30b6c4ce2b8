"""Sliding-window (tiled) inference: overlapping tiles, run in batches, blended with smooth weights.

The U-Net is fully convolutional, so an image too large for memory can be predicted in tiles. A tile's border
pixels see less context than its centre, so each tile's logits are weighted by a Gaussian bump (sigma = 1/8 of
the tile side, floored so that no weight is zero) and the blend divides by the summed weights: where tiles
overlap the centre of one tile outweighs the edge of the other, and no seam appears. Tiles never leave the
image: the last tile of a row or column is aligned with the image edge, so border pixels see exactly the
context they see in whole-image inference and nothing is padded.
"""

from collections.abc import Callable

import torch

from .device import sum_dtype

MIN_WEIGHT = 1e-3  # relative to the tile centre: every pixel of every tile counts a little


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size min(tile, length) covering [0, length), stepping tile * (1 - overlap)."""
    if tile < 1:
        raise ValueError(f"tile must be at least 1, got {tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    tile = min(tile, length)
    stride = max(1, round(tile * (1 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)  # flush with the edge instead of padding past it
    return starts


def blend_weights(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(height, width) separable Gaussian, 1 at the centre, at least MIN_WEIGHT at the corners."""

    def bump(size: int) -> torch.Tensor:
        position = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
        return torch.exp(-0.5 * (position / (size / 8)) ** 2)

    return (bump(height)[:, None] * bump(width)[None, :]).clamp_min(MIN_WEIGHT)


def sliding_window(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int,
    overlap: float = 0.25,
    batch_size: int = 1,
) -> torch.Tensor:
    """(C, H, W) image -> (K, H, W) fp32 blend of forward's logits over overlapping tiles.

    forward maps a (N, C, h, w) batch of crops to (N, K, h, w) logits. Crops keep the image's dtype and
    device (uint8 stays uint8, so only one tile batch at a time is normalised); the blend is accumulated on
    the device that forward returns its logits on.
    """
    _, height, width = image.shape
    tile_h, tile_w = min(tile, height), min(tile, width)
    boxes = [(top, left) for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]
    total = weight_sum = weights = None
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first:first + batch_size]
        crops = torch.stack([image[:, top:top + tile_h, left:left + tile_w] for top, left in chunk])
        logits = forward(crops).float()
        if total is None:
            # float64 sums (but on MPS, which has none): a constant comes back exactly however many tiles overlap
            wide = sum_dtype(logits.device)
            total = logits.new_zeros((logits.shape[1], height, width), dtype=wide)
            weight_sum = logits.new_zeros((height, width), dtype=wide)
            weights = blend_weights(tile_h, tile_w, logits.device).to(wide)
        for (top, left), tile_logits in zip(chunk, logits):
            total[:, top:top + tile_h, left:left + tile_w] += tile_logits * weights
            weight_sum[top:top + tile_h, left:left + tile_w] += weights
    return total.div_(weight_sum).float()
