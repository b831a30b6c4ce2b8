"""Image/mask pairs from two folders: list once, pair once, decode, scale, encode masks to class indices."""

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .errors import UserError
from .mask_encoding import MaskValue, encode_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".npy", ".pt")
# Tried in this order when --mask-suffix is not given; the one pairing the most images wins.
MASK_SUFFIX_CANDIDATES = ("", "_mask", "_masks", "_label", "_labels", "_seg", "_gt", "-mask")


class Pair(NamedTuple):
    name: str
    image: Path
    mask: Path


def _read_array(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    tensor = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(tensor, torch.Tensor):
        raise UserError(f"{path} does not hold a single tensor: save it with torch.save(tensor, path)")
    return tensor.numpy()


def _open(path: Path, reduce_to: tuple[int, int] | None = None) -> np.ndarray | Image.Image:
    """Decode a file; reduce_to=(width, height) lets JPEGs decode at 1/2, 1/4 or 1/8 size, not below it."""
    try:
        if path.suffix.lower() in (".npy", ".pt"):
            return _read_array(path)
        image = Image.open(path)
        if reduce_to is not None and image.format == "JPEG":
            # DCT-domain downscaling inside libjpeg: 2-8x less decoding and resizing for a scaled image.
            image.draft(image.mode, reduce_to)
        image.load()
        return image
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except Image.DecompressionBombError:
        raise UserError(f"{path} declares more pixels than Pillow's safety limit: check the file") from None
    except (UnidentifiedImageError, OSError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot read {path} ({error}): replace or remove the file") from None


def read_image_data(path: Path, reduce_to: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """Decode fully to HxWxC (C = 1, 3 or 4) in the file's own depth, plus the file's mode for reports."""
    data = _open(path, reduce_to)
    if isinstance(data, Image.Image):
        mode = data.mode
        if mode not in ("L", "RGB", "I;16", "I;16B", "I", "F"):
            data = data.convert("L" if mode in ("1", "LA") else "RGB")  # palette, RGBA, CMYK, ...
        array = np.asarray(data)
    else:
        array = np.asarray(data)
        mode = f"{path.suffix.lower()[1:]} {array.dtype}"
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # tensors saved channels-first
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise UserError(f"{path} has shape {array.shape}: expected HxW, HxWx3 or 3xHxW")
    return array, mode


def read_image(path: Path, channels: int = 3, reduce_to: tuple[int, int] | None = None) -> np.ndarray:
    """Decode to uint8 HxWxC with the model's channel count (grayscale repeated, RGBA/palette converted).

    reduce_to: the size the image will be resized to; JPEGs may then decode smaller (never below it).
    """
    array, _ = read_image_data(path, reduce_to)
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    array = array[..., :3]
    if channels == 1 and array.shape[-1] == 3:
        array = np.asarray(Image.fromarray(array).convert("L"))[..., None]
    elif channels == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def _to_uint8(array: np.ndarray) -> np.ndarray:
    # 16-bit and float images: stretch each image's own range to 0..255 (floats already in [0, 1] kept).
    values = array.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if array.dtype.kind == "f" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    scaled = (values - low) / max(high - low, 1e-12) * 255
    return scaled.round().astype(np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """Decode a mask to raw values: HxW (palette index, gray level, label) or HxWx3 colours."""
    data = _open(path)
    if isinstance(data, Image.Image):
        if data.mode in ("RGBA", "LA", "PA", "CMYK", "YCbCr", "HSV"):
            data = data.convert("RGB" if data.mode != "LA" else "L")
        array = np.asarray(data)
    else:
        array = np.asarray(data)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] >= 3:
        # An RGB file stays a colour mask even when its colours happen to be gray (e.g. a background-only
        # frame of a colour-coded set): masks are written back in the encoding they came in.
        array = array[..., :3]
    if array.ndim not in (2, 3):
        raise UserError(f"{path} has shape {array.shape}: a mask must be HxW or HxWx3")
    return array


def _files_by_stem(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"{role} folder {folder} does not exist: pass --{role} DIR (see download_data.sh)")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in files:
            raise UserError(f"{files[path.stem].name} and {path.name} in {folder} have the same name: keep one")
        files[path.stem] = path
    if not files:
        raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def detect_mask_suffix(image_stems: list[str], mask_stems: set[str]) -> str:
    """The suffix (e.g. Carvana's "_mask") that pairs the most images with masks."""
    return max(MASK_SUFFIX_CANDIDATES, key=lambda s: sum(f"{stem}{s}" in mask_stems for stem in image_stems))


class Pairing(NamedTuple):
    pairs: list[Pair]
    mask_suffix: str
    lonely_images: list[str]
    lonely_masks: list[str]


def pair_files(images_dir: Path, masks_dir: Path, mask_suffix: str | None = None) -> Pairing:
    """Pair every image with its mask, listing each folder once; the unpaired files are returned by name."""
    images = _files_by_stem(Path(images_dir), "imgs")
    masks = _files_by_stem(Path(masks_dir), "masks")
    if mask_suffix is None:
        mask_suffix = detect_mask_suffix(list(images), set(masks))
    pairs = [Pair(stem, image, masks[stem + mask_suffix])
             for stem, image in images.items() if stem + mask_suffix in masks]
    if not pairs:
        example = next(iter(images.values())).name
        raise UserError(
            f"no image in {images_dir} has a mask in {masks_dir} (e.g. {example} has no "
            f"'{Path(example).stem}{mask_suffix}.*'): check the folders or pass --mask-suffix"
        )
    paired_masks = {pair.mask.stem for pair in pairs}
    # With images and masks in one folder (suffix "_mask"), the masks are not unpaired images.
    lonely_images = [p.name for stem, p in images.items()
                     if stem + mask_suffix not in masks and p not in {q.mask for q in pairs}]
    lonely_masks = [p.name for stem, p in masks.items()
                    if stem not in paired_masks and p not in {q.image for q in pairs}]
    return Pairing(pairs, mask_suffix, lonely_images, lonely_masks)


def list_pairs(images_dir: Path, masks_dir: Path, mask_suffix: str | None = None) -> list[Pair]:
    """pair_files, with a warning that names the files left unpaired."""
    pairing = pair_files(images_dir, masks_dir, mask_suffix)
    for kind, names in (("images without a mask", pairing.lonely_images),
                        ("masks without an image", pairing.lonely_masks)):
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            print(f"warning: skipping {len(names)} {kind}: {shown}", file=sys.stderr)
    return pairing.pairs


def scaled_size(width: int, height: int, scale: float, source: Path | str = "image") -> tuple[int, int]:
    """The reference's rule: int(scale * side), which must stay positive."""
    new_width, new_height = int(scale * width), int(scale * height)
    if new_width <= 0 or new_height <= 0:
        raise UserError(f"--scale {scale} shrinks {source} ({width}x{height}) to nothing: use a larger scale")
    return new_width, new_height


def load_scaled_image(path: Path, scale: float, channels: int = 3) -> tuple[torch.Tensor, tuple[int, int]]:
    """The model's view of an image file: uint8 CxH'xW' at int(scale * side), and the file's own (width, height).

    The one image-reading path of training, validation, evaluation and prediction, so that all see the
    same pixels. A scaled-down JPEG is decoded at reduced size by libjpeg, then resized the rest of the way.
    """
    size = reduce_to = None
    if scale < 1 and path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            with Image.open(path) as header:  # the size, without decoding the pixels
                size = header.size
        except (OSError, ValueError):
            pass  # read_image below names the problem
        reduce_to = scaled_size(*size, scale, path) if size else None
    image = read_image(path, channels, reduce_to)
    size = size or (image.shape[1], image.shape[0])
    return image_to_tensor(image, scaled_size(*size, scale, path)), size


def image_to_tensor(image: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 HxWxC -> uint8 CxHxW, resized to size=(width, height) with bicubic (antialiased, like PIL's)."""
    tensor = torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C"))  # a writable copy
    if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
        width, height = size
        tensor = TF.resize(tensor, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return tensor


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxW or HxWxC of any dtype -> size=(width, height), nearest neighbour (pixel centres, as NEAREST_EXACT).

    Applied to raw mask values before they are encoded: the same result as encoding first, on fewer pixels.
    """
    width, height = size
    rows = np.minimum(((np.arange(height) + 0.5) * (array.shape[0] / height)).astype(np.intp), array.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (array.shape[1] / width)).astype(np.intp), array.shape[1] - 1)
    return array[rows[:, None], cols]


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float in [0, 1]; done on the device so that uint8 crosses the bus."""
    return images.float().div_(255)


class SegmentationDataset(Dataset):
    """Items are {"image": uint8 CxHxW, "mask": int64 HxW class indices, "name": str}.

    scale_masks=False keeps masks at native resolution (for evaluation against the original masks).
    transform(image, mask) -> (image, mask) is the augmentation, applied after scaling.
    skip_unreadable: a file that fails to decode mid-epoch yields {"skipped": reason} instead of stopping
    the run (collate_skipping drops it from the batch and reports it).
    """

    def __init__(
        self,
        pairs: list[Pair],
        mask_values: list[MaskValue],
        scale: float = 1.0,
        channels: int = 3,
        scale_masks: bool = True,
        binarize: bool = False,
        ignore_value: int | None = None,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        skip_unreadable: bool = False,
    ):
        if not 0 < scale <= 1:
            raise UserError(f"--scale must be in (0, 1], got {scale}")
        self.pairs = pairs
        self.mask_values = mask_values
        self.scale = scale
        self.channels = channels
        self.scale_masks = scale_masks
        self.binarize = binarize
        self.ignore_value = ignore_value
        self.transform = transform
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        try:
            image_tensor, (width, height) = load_scaled_image(pair.image, self.scale, self.channels)
            mask = read_mask(pair.mask)
        except UserError as error:
            if self.skip_unreadable:
                return {"skipped": str(error)}
            raise
        if (height, width) != mask.shape[:2]:
            raise UserError(
                f"{pair.image.name} is {width}x{height} but its mask {pair.mask.name} is "
                f"{mask.shape[1]}x{mask.shape[0]}: resize the mask to the image"
            )
        if self.scale_masks and self.scale != 1.0:
            mask = resize_nearest(mask, (image_tensor.shape[-1], image_tensor.shape[-2]))
        class_indices = encode_mask(mask, self.mask_values, pair.mask, self.binarize, self.ignore_value)
        mask_tensor = torch.from_numpy(class_indices).long()
        if self.transform is not None:
            image_tensor, mask_tensor = self.transform(image_tensor, mask_tensor)
        return {"image": image_tensor, "mask": mask_tensor, "name": pair.name}


class ImageFiles(Dataset):
    """Images to predict: {"index", "image": uint8 CxH'xW', "size": (height, width) of the file}, or
    {"index", "error": one line} for a file that cannot be read (reported, the others go on)."""

    def __init__(self, paths: list[Path], scale: float, channels: int = 3):
        self.paths, self.scale, self.channels = paths, scale, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        try:
            image, (width, height) = load_scaled_image(self.paths[index], self.scale, self.channels)
        except UserError as error:
            return {"index": index, "error": str(error)}
        return {"index": index, "image": image, "size": (height, width)}


def collate_skipping(items: list[dict]) -> dict:
    """default_collate of the readable items; "skipped" lists why the others were left out."""
    readable = [item for item in items if "skipped" not in item]
    batch = default_collate(readable) if readable else {}
    batch["skipped"] = [item["skipped"] for item in items if "skipped" in item]
    return batch


def lower_worker_priority(worker_id: int) -> None:
    """Loader workers yield the cores to the training process (CPU training threads, GPU feeding) when both
    want them; idle cores still go to the workers."""
    try:
        os.nice(10)
    except OSError:
        pass  # not permitted here: keep the default priority


def make_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    workers: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """Decoding in low-priority worker processes, pinned memory for CUDA; workers stay alive across epochs."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=lower_worker_priority if workers > 0 else None,
        generator=generator,
        drop_last=False,
        collate_fn=collate_skipping,
    )
