"""The classic reference U-Net training recipe (milesial/Pytorch-UNet train.py, 2023): the baseline of our benchmarks.

    python bench/reference_recipe.py --imgs data/imgs --masks data/masks --epochs 1 --batch-size 2 --scale 0.5

Written by us from a description of the reference's behaviour, so that our train.py can be compared with it on the
same machine (images/s, and held-out Dice within a wall-clock budget). It keeps the reference's cost structure on
purpose, even where that is slow: two globs and two PIL decodes per item, a Python loop over mask values, loaders
with os.cpu_count() workers re-spawned every epoch and every validation round, a loss.item() host sync every step,
validation 5 times per epoch, a checkpoint every epoch. It also keeps its optimisation recipe: RMSprop (lr 1e-5,
momentum 0.999), ReduceLROnPlateau on validation Dice, gradient clipping at 1.0, CE/BCE + Dice loss.

Left out: wandb (the reference logged weight and gradient histograms at every validation round) and the tqdm bars.
Both only cost time, so the baseline here is slightly faster than the original, i.e. the comparison is conservative.
Only the UNet (same architecture, `from unet import UNet`), the Dice functions and the flags' argparse checks come from
this repository.
"""

import argparse
import os
import sys
import tempfile
import time
import warnings
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, random_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import at_least, percent, positive, scale_factor  # noqa: E402
from unet import UNet  # noqa: E402
from utils.dice_score import dice_coeff, dice_loss, multiclass_dice_coeff  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402


def unique_mask_values(mask_file: Path) -> np.ndarray:
    """Distinct values of one mask: scalars for 2-D masks, colour rows for 3-D (RGB) masks."""
    mask = np.asarray(Image.open(mask_file))
    if mask.ndim == 2:
        return np.unique(mask)
    if mask.ndim == 3:
        return np.unique(mask.reshape(-1, mask.shape[-1]), axis=0)
    raise UserError(f"{mask_file}: masks must be 2-D or 3-D, got {mask.ndim} dimensions")


class ReferenceDataset(Dataset):
    """The reference's BasicDataset: ids from the image folder, masks found by glob again on every item."""

    def __init__(self, images_dir: Path, mask_dir: Path, scale: float = 1.0, mask_suffix: str = "_mask",
                 workers: int = 0):
        if not 0 < scale <= 1:
            raise UserError(f"--scale must be in (0, 1], got {scale}")
        self.images_dir, self.mask_dir = Path(images_dir), Path(mask_dir)
        self.scale, self.mask_suffix = scale, mask_suffix
        self.ids = [os.path.splitext(file.name)[0] for file in self.images_dir.iterdir()
                    if file.is_file() and not file.name.startswith(".")] if self.images_dir.is_dir() else []
        if not self.ids:
            raise UserError(f"{self.images_dir}: no input images found; check --imgs")
        mask_files = [self._find(self.mask_dir, name + self.mask_suffix) for name in self.ids]
        if workers > 0:
            with Pool(workers) as pool:
                unique = pool.map(unique_mask_values, mask_files)
        else:
            unique = [unique_mask_values(file) for file in mask_files]
        self.mask_values = sorted(np.unique(np.concatenate(unique), axis=0).tolist())

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def _find(folder: Path, stem: str) -> Path:
        """The one file named stem.* in folder; the reference globbed like this on every __getitem__."""
        found = list(folder.glob(stem + ".*"))
        if len(found) != 1:
            raise UserError(f"{folder}: expected exactly one file {stem}.*, found {len(found)}; check --masks/"
                            "--mask-suffix")
        return found[0]

    def preprocess(self, pil_img: Image.Image, is_mask: bool) -> np.ndarray:
        """Resize by scale (nearest for masks, bicubic for images); masks -> class indices, images -> CHW in [0, 1]."""
        w, h = pil_img.size
        new_w, new_h = int(self.scale * w), int(self.scale * h)
        if new_w <= 0 or new_h <= 0:
            raise UserError(f"--scale {self.scale} shrinks a {w}x{h} image to nothing")
        pil_img = pil_img.resize((new_w, new_h), resample=Image.NEAREST if is_mask else Image.BICUBIC)
        img = np.asarray(pil_img)
        if is_mask:
            mask = np.zeros((new_h, new_w), dtype=np.int64)
            for i, v in enumerate(self.mask_values):
                if img.ndim == 2:
                    mask[img == v] = i
                else:
                    mask[(img == v).all(-1)] = i
            return mask
        img = img[np.newaxis, ...] if img.ndim == 2 else img.transpose((2, 0, 1))
        if (img > 1).any():
            img = img / 255.0
        return img

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        name = self.ids[idx]
        mask = Image.open(self._find(self.mask_dir, name + self.mask_suffix))
        img = Image.open(self._find(self.images_dir, name))
        if img.size != mask.size:
            raise UserError(f"{name}: image and mask sizes differ ({img.size} vs {mask.size})")
        img, mask = self.preprocess(img, is_mask=False), self.preprocess(mask, is_mask=True)
        return {"image": torch.as_tensor(img.copy()).float().contiguous(),
                "mask": torch.as_tensor(mask.copy()).long().contiguous()}


@torch.inference_mode()
def evaluate_reference(model: UNet, loader: DataLoader, device: torch.device, amp: bool) -> float:
    """Mean Dice per validation batch: thresholded/argmax predictions, background excluded for C >= 2."""
    model.eval()
    num_val_batches = len(loader)
    dice_score = 0.0
    with torch.autocast(device.type if device.type != "mps" else "cpu", enabled=amp):
        for batch in loader:
            image = batch["image"].to(device=device, dtype=torch.float32, memory_format=torch.channels_last)
            mask_true = batch["mask"].to(device=device, dtype=torch.long)
            mask_pred = model(image)
            if model.n_classes == 1:
                mask_pred = (torch.sigmoid(mask_pred.squeeze(1)) > 0.5).float()
                dice_score += dice_coeff(mask_pred, mask_true.float(), reduce_batch_first=False)
            else:
                mask_true = F.one_hot(mask_true, model.n_classes).permute(0, 3, 1, 2).float()
                mask_pred = F.one_hot(mask_pred.argmax(dim=1), model.n_classes).permute(0, 3, 1, 2).float()
                dice_score += multiclass_dice_coeff(mask_pred[:, 1:], mask_true[:, 1:], reduce_batch_first=False)
    model.train()
    return float(dice_score / max(num_val_batches, 1))


def train_reference(imgs: Path, masks: Path, *, epochs: int, batch_size: int, learning_rate: float = 1e-5,
                    scale: float = 0.5, val_percent: float = 10.0, amp: bool = False, classes: int = 2,
                    device: torch.device | None = None, checkpoint_dir: Path | None = None,
                    mask_suffix: str = "_mask", time_budget_s: float | None = None, seed: int = 0,
                    workers: int | None = None) -> dict:
    """Train a UNet the way the reference did, timing every epoch; the baseline of our speed and Dice benchmarks.

    Returns {'epochs': [{'epoch', 'images', 'seconds', 'images_per_second', 'data_wait_s', 'val_dice'}, ...],
    'model', 'mask_values'}. 'seconds' is the whole epoch (validation rounds and checkpoint included),
    'data_wait_s' the time spent in iter()/next() of the train loader, 'val_dice' the last validation round of that
    epoch (None if none ran). With time_budget_s, training stops after the step that passes that many seconds since
    the first epoch began; that partial epoch is recorded but not checkpointed. checkpoint_dir=None saves into a
    temporary folder (deleted afterwards) so that the reference's save cost is still paid.
    """
    torch.manual_seed(seed)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = os.cpu_count() if workers is None else workers
    dataset = ReferenceDataset(imgs, masks, scale, mask_suffix, workers)

    n_val = int(len(dataset) * val_percent / 100)
    n_train = len(dataset) - n_val
    train_set, val_set = random_split(dataset, [n_train, n_val], generator=torch.Generator().manual_seed(0))
    loader_args = dict(batch_size=batch_size, num_workers=workers, pin_memory=True)
    train_loader = DataLoader(train_set, shuffle=True, **loader_args)
    val_loader = DataLoader(val_set, shuffle=False, drop_last=True, **loader_args)

    model = UNet(n_channels=3, n_classes=classes, bilinear=False)
    model = model.to(memory_format=torch.channels_last).to(device=device)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=learning_rate, weight_decay=1e-8, momentum=0.999,
                                    foreach=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "max", patience=5)
    grad_scaler = torch.amp.GradScaler(device.type, enabled=amp)
    criterion = nn.CrossEntropyLoss() if classes > 1 else nn.BCEWithLogitsLoss()
    autocast_device = device.type if device.type != "mps" else "cpu"
    division_step = n_train // (5 * batch_size)

    history, global_step, out_of_time = [], 0, False
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # pin_memory=True is the reference's setting; without an accelerator it warns at every loader start.
        warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator.*")
        save_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(scratch)
        train_start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            model.train()
            epoch_start = time.perf_counter()
            images_seen, data_wait, val_dice = 0, 0.0, None
            wait_start = time.perf_counter()
            batches = iter(train_loader)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                finally:
                    data_wait += time.perf_counter() - wait_start
                images = batch["image"].to(device=device, dtype=torch.float32, memory_format=torch.channels_last)
                true_masks = batch["mask"].to(device=device, dtype=torch.long)
                with torch.autocast(autocast_device, enabled=amp):
                    masks_pred = model(images)
                    if classes == 1:
                        loss = criterion(masks_pred.squeeze(1), true_masks.float())
                        loss = loss + dice_loss(torch.sigmoid(masks_pred.squeeze(1)), true_masks.float(),
                                                multiclass=False)
                    else:
                        loss = criterion(masks_pred, true_masks)
                        loss = loss + dice_loss(F.softmax(masks_pred, dim=1).float(),
                                                F.one_hot(true_masks, classes).permute(0, 3, 1, 2).float(),
                                                multiclass=True)
                optimizer.zero_grad(set_to_none=True)
                grad_scaler.scale(loss).backward()
                grad_scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                grad_scaler.step(optimizer)
                grad_scaler.update()
                images_seen += images.shape[0]
                global_step += 1
                loss.item()  # the reference summed the epoch loss: one host sync per step
                if division_step > 0 and global_step % division_step == 0:
                    val_dice = evaluate_reference(model, val_loader, device, amp)
                    scheduler.step(val_dice)
                if time_budget_s is not None and time.perf_counter() - train_start >= time_budget_s:
                    out_of_time = True
                    break
                wait_start = time.perf_counter()
            if not out_of_time:
                save_dir.mkdir(parents=True, exist_ok=True)
                state_dict = model.state_dict()
                state_dict["mask_values"] = dataset.mask_values
                torch.save(state_dict, save_dir / f"checkpoint_epoch{epoch}.pth")
            seconds = time.perf_counter() - epoch_start
            history.append({"epoch": epoch, "images": images_seen, "seconds": seconds,
                            "images_per_second": images_seen / seconds if seconds > 0 else 0.0,
                            "data_wait_s": data_wait, "val_dice": val_dice})
            if out_of_time:
                break
    return {"epochs": history, "model": model, "mask_values": dataset.mask_values}


def get_args_parser() -> argparse.ArgumentParser:
    """The CLI's flags, kept separate so tests and bench scripts can reuse them."""
    parser = argparse.ArgumentParser(description="Train a U-Net with the classic reference recipe and time it.")
    parser.add_argument("--imgs", type=Path, required=True, metavar="DIR", help="folder of input images")
    parser.add_argument("--masks", type=Path, required=True, metavar="DIR", help="folder of masks (id + suffix)")
    parser.add_argument("--epochs", type=at_least(1), default=5, help="number of epochs (reference default: 5)")
    parser.add_argument("--batch-size", type=at_least(1), default=1, help="batch size (reference default: 1)")
    parser.add_argument("--scale", type=scale_factor, default=0.5, help="image downscaling factor in (0, 1]")
    parser.add_argument("--lr", "--learning-rate", dest="lr", type=positive, default=1e-5, help="RMSprop learning rate")
    parser.add_argument("--val", type=percent, default=10.0, help="percent of the data used for validation")
    parser.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    parser.add_argument("--classes", type=at_least(1), default=2, help="number of output classes (1: binary with BCE)")
    parser.add_argument("--budget", type=positive, default=None, metavar="SECONDS",
                        help="stop training after this many seconds of training wall time")
    parser.add_argument("--mask-suffix", default="_mask", help="mask file name = image id + this suffix + ext")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, metavar="DIR",
                        help="where checkpoint_epochN.pth go (default: a temporary folder, deleted afterwards)")
    parser.add_argument("--workers", type=at_least(0), default=None,
                        help="DataLoader workers (default: os.cpu_count())")
    parser.add_argument("--seed", type=at_least(0), default=0, help="torch seed (the train/val split always uses 0)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run train_reference from parsed flags and print one line per epoch."""
    result = train_reference(args.imgs, args.masks, epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.lr, scale=args.scale, val_percent=args.val, amp=args.amp,
                             classes=args.classes, checkpoint_dir=args.checkpoint_dir, mask_suffix=args.mask_suffix,
                             time_budget_s=args.budget, seed=args.seed, workers=args.workers)
    for row in result["epochs"]:
        dice = "n/a" if row["val_dice"] is None else f"{row['val_dice']:.4f}"
        print(f"epoch {row['epoch']}: {row['images']} images in {row['seconds']:.2f} s = "
              f"{row['images_per_second']:.2f} images/s (data wait {row['data_wait_s']:.2f} s), val Dice {dice}")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
