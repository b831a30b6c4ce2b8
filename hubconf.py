"""torch.hub entry points.

    torch.hub.load("<owner>/<repo>", "unet_carvana", pretrained=True, scale=0.5)
    torch.hub.load("path/to/this/repo", "unet", source="local", n_classes=3, weights="run/best.pth")
"""

import contextlib
import hashlib
from pathlib import Path
from urllib.parse import urlparse

import torch

from unet import UNet
from utils.checkpoint import load_checkpoint, model_from_checkpoint
from utils.errors import UserError

dependencies = ["torch", "torchvision", "numpy", "PIL"]

# The published Carvana weights (plain state_dicts, reference v3.0 release), one per training scale.
CARVANA_WEIGHTS = {
    0.5: "https://github.com/milesial/Pytorch-UNet/releases/download/v3.0/unet_carvana_scale0.5_epoch2.pth",
    1.0: "https://github.com/milesial/Pytorch-UNet/releases/download/v3.0/unet_carvana_scale1.0_epoch2.pth",
}


def _local_copy(url: str, progress: bool = True) -> Path:
    """Download once into torch.hub's cache (TORCH_HOME), then reuse the file. The published Carvana weights keep
    their plain name there (the file torch.hub's own loader and the reference's hubconf cache); any other URL gets
    a folder of its own, so that two URLs ending in the same name (run1/best.pth, run2/best.pth) are two files."""
    name = urlparse(url).path.rsplit("/", 1)[-1]
    if not name:
        raise UserError(f"weights={url!r} names no file: give the URL of a checkpoint (.../best.pth)")
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    own_folder = url not in CARVANA_WEIGHTS.values()
    if own_folder:
        folder /= hashlib.sha256(url.encode()).hexdigest()[:12]
    target = folder / name
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        try:  # written to a temporary file and renamed when complete: a failed download leaves nothing
            torch.hub.download_url_to_file(url, str(target), progress=progress)
        except (OSError, ValueError) as error:  # urllib's HTTPError and URLError are OSErrors
            if own_folder and not any(folder.iterdir()):
                with contextlib.suppress(OSError):  # another process's download of the same URL may be under way
                    folder.rmdir()  # the URL's own folder, made for this download: no empty folder per failed try
            raise UserError(f"cannot download weights={url} ({error}): check the address and the network") from None
    return target


def _weights_file(weights: str | Path, progress: bool) -> Path:
    text = str(weights)
    return _local_copy(text, progress) if text.startswith(("http://", "https://")) else Path(text)


def unet(n_channels: int | None = None, n_classes: int | None = None, bilinear: bool | None = None,
         weights: str | Path | None = None, progress: bool = True) -> UNet:
    """A U-Net, untrained (3 channels, 2 classes, transposed-conv upsampling unless told otherwise) or with
    weights from a checkpoint path or URL (ours or a reference state_dict).

    With weights, the architecture comes from the file: the arguments may be left out, and must agree with it
    when given.
    """
    for name, value in (("n_channels", n_channels), ("n_classes", n_classes)):
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    if bilinear is not None and not isinstance(bilinear, bool):
        raise ValueError(f"bilinear must be True or False, got {bilinear!r}")
    if weights is None:
        return UNet(3 if n_channels is None else n_channels, 2 if n_classes is None else n_classes, bool(bilinear))
    checkpoint = load_checkpoint(_weights_file(weights, progress), flag="weights=")
    stored = checkpoint["model_args"]
    for name, given in (("n_channels", n_channels), ("n_classes", n_classes), ("bilinear", bilinear)):
        if given is not None and given != stored[name]:
            raise ValueError(f"{weights} holds a U-Net with {name}={stored[name]!r}, not {given!r}: leave {name} "
                             "out (the file decides)")
    return model_from_checkpoint(checkpoint)


def unet_carvana(pretrained: bool = False, scale: float = 0.5, progress: bool = True) -> UNet:
    """The U-Net trained on Carvana (3 channels, 2 classes, transposed-conv upsampling), as in the reference."""
    if not pretrained:
        return UNet(n_channels=3, n_classes=2, bilinear=False)
    if scale not in CARVANA_WEIGHTS:
        raise ValueError(f"pretrained Carvana weights exist for scale {sorted(CARVANA_WEIGHTS)}, not {scale}")
    return unet(3, 2, False, weights=CARVANA_WEIGHTS[scale], progress=progress)
