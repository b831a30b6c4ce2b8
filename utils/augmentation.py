"""Training augmentation presets: one random geometry for image and mask, colour changes for the image only.

torchvision.transforms.v2 draws the geometric parameters once per call and applies them to every tv_tensor,
resampling the Image bilinearly and the Mask with nearest neighbour, so image and mask stay aligned and no
class is invented. Runs on the CPU in the DataLoader workers, on one (already scaled) item at a time.

torchvision is imported where a preset is built, not with this module: it imports torch's compiler with it, 3.8 s
of a 6.9 s start of train.py (2-core Intel Xeon, 2026-11-30), which `--help`, a run stopped by a bad folder and
an `--augment none` run have no use for.
"""

from collections.abc import Callable

import torch

from .mask_encoding import IGNORE_CLASS

AUGMENT_PRESETS = ("none", "light", "strong", "geometry")


def _geometry(preset: str) -> Callable:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    # Areas revealed by rotation, zoom-out or translation: black in the image, ignored (never background) in the mask.
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_CLASS}
    # Vertical flips are left out on purpose: upside-down scenes (cars) are not in the data we segment.
    if preset in ("light", "geometry"):
        # Zoom in only (scale >= 1): keeps H and W exactly and reveals no border.
        affine = v2.RandomAffine(degrees=0, scale=(1.0, 1.25), interpolation=v2.InterpolationMode.BILINEAR, fill=fill)
    else:
        affine = v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.8, 1.3),
                                 interpolation=v2.InterpolationMode.BILINEAR, fill=fill)
    return v2.Compose([v2.RandomHorizontalFlip(p=0.5), affine])


def _colour(preset: str) -> Callable | None:
    from torchvision.transforms import v2

    if preset == "geometry":  # for data whose colours tell the classes apart (stains, land cover)
        return None
    # The channels in a random order: a model trained on a few object colours otherwise fails on a new one (on the
    # synthetic Carvana set, trained on a green and a white car, a 2-3 px halo around a red one: bench/README.md,
    # "Object colours"). A full hue jitter fixed that as well, at 3.5-5x the cost per image. One channel: a no-op.
    shuffle = v2.RandomChannelPermutation()
    # Saturation and hue leave 1-channel images unchanged in v2 (as in PIL), so one jitter serves both.
    if preset == "light":
        return v2.Compose([shuffle, v2.ColorJitter(brightness=0.1, contrast=0.1)])
    return v2.Compose([shuffle, v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.2, hue=0.02)])


class TrainAugmentation:
    """(image uint8 CxHxW, mask int64 HxW) -> the same shapes and dtypes, randomly flipped/zoomed/jittered.

    A class rather than a closure so that DataLoader workers started with spawn can pickle it.
    colour=False keeps only the geometry (for tests of alignment), as the "geometry" preset does.
    """

    def __init__(self, preset: str, colour: bool = True):
        if preset not in AUGMENT_PRESETS or preset == "none":
            raise ValueError(f"unknown augmentation preset {preset!r}: choose one of {', '.join(AUGMENT_PRESETS[1:])}")
        self.preset = preset
        self.geometry = _geometry(preset)
        self.colour = _colour(preset) if colour else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors  # imported by __init__ already: a lookup

        image, mask = self.geometry(tv_tensors.Image(image), tv_tensors.Mask(mask))
        if self.colour is not None:  # a fourth band (near-infrared, alpha) is no colour: left as it is
            image = self.colour(image) if image.shape[0] < 4 else torch.cat([self.colour(image[:3]), image[3:]])
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"TrainAugmentation({self.preset!r}, colour={self.colour is not None})"


def train_augmentation(
    preset: str, colour: bool = True
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """None for "none" (the loop then skips augmentation); otherwise a picklable (image, mask) -> (image, mask)."""
    if preset == "none":
        return None
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}: choose one of {', '.join(AUGMENT_PRESETS)}")
    return TrainAugmentation(preset, colour=colour)
