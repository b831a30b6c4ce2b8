"""torch.hub entry points.

    torch.hub.load("<owner>/<repo>", "unet_carvana", pretrained=True, scale=0.5)
    torch.hub.load("path/to/this/repo", "unet", source="local", n_classes=3, weights="run/best.pth")
"""

import contextlib
import hashlib
import http.client
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OWN_PACKAGES = ("unet", "utils")


def _is_ours(module: ModuleType) -> bool:
    places = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or [])]
    return any(place and Path(place).resolve().is_relative_to(HERE) for place in places)


@contextlib.contextmanager
def _own_packages() -> Iterator[None]:
    """Import this repository's unet/ and utils/ even where the caller already imported other modules of those
    common names (a project's own utils/): theirs are set aside for the import and put back after it, so neither
    side sees the other's. Ours imported here leave sys.modules after the import (the functions keep what they
    need), so that a utils/ the caller imports later is theirs; unet/ stays unless the caller's own unet was set
    aside, for pickling the model class by its name."""
    before = set(sys.modules)
    set_aside = {name: module for name, module in sys.modules.items()
                 if name.partition(".")[0] in OWN_PACKAGES and not _is_ours(module)}
    for name in set_aside:
        del sys.modules[name]
    sys.path.insert(0, str(HERE))
    try:
        yield
    finally:
        sys.path.remove(str(HERE))
        callers_unet = any(name.partition(".")[0] == "unet" for name in set_aside)
        leaving = ("unet", "utils") if callers_unet else ("utils",)
        for name in [name for name in sys.modules if name.partition(".")[0] in leaving and name not in before]:
            del sys.modules[name]
        sys.modules.update(set_aside)


with _own_packages():
    from unet import CLASSIC_BASE_CHANNELS, MAX_BASE_CHANNELS, UNet, whole_number
    from utils.atomic_files import atomic_path
    from utils.checkpoint import checkpoint_from_data, load_checkpoint, model_from_checkpoint
    from utils.errors import UserError
    from utils.progress import progress_bar
    from utils.signals import sigterm_as_exit

dependencies = ["torch", "torchvision", "numpy", "PIL"]

# The published Carvana weights (plain state_dicts, reference v3.0 release), one per training scale.
CARVANA_WEIGHTS = {
    0.5: "https://github.com/milesial/Pytorch-UNet/releases/download/v3.0/unet_carvana_scale0.5_epoch2.pth",
    1.0: "https://github.com/milesial/Pytorch-UNet/releases/download/v3.0/unet_carvana_scale1.0_epoch2.pth",
}


DOWNLOAD_TIMEOUT_S = 60.0  # a connection that sends nothing for this long fails instead of hanging


def _cached_checkpoint(url: str, progress: bool = True) -> dict[str, Any]:
    """Download once into torch.hub's cache (TORCH_HOME), then reuse the file. The published Carvana weights keep
    their plain name there (the file torch.hub's own loader and the reference's hubconf cache); any other URL gets
    a folder of its own, so that two URLs ending in the same name (run1/best.pth, run2/best.pth) are two files.
    Only a complete, loadable checkpoint is cached: a cut-off download or a web page in its place is not."""
    name = urlparse(url).path.rsplit("/", 1)[-1]
    if not name:
        raise UserError(f"weights={url!r} names no file: give the URL of a checkpoint (.../best.pth)")
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    own_folder = url not in CARVANA_WEIGHTS.values()
    if own_folder:
        folder /= hashlib.sha256(url.encode()).hexdigest()[:12]
    target = folder / name
    if target.exists():
        try:
            return load_checkpoint(target, flag="weights=")
        except UserError as error:  # cached by an older version of this file, which did not check downloads
            print(f"note: downloading {url} again: the cached copy is not usable ({error})", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target) as partial, sigterm_as_exit():  # renamed into place only when checked
            _download(url, partial, progress)
            try:
                checkpoint = load_checkpoint(partial, flag="weights=")
            except UserError as error:
                raise UserError(f"weights={url} sent a file that is not a usable checkpoint: "
                                f"{str(error).replace(str(partial), 'it')}") from None
    except (OSError, ValueError, http.client.HTTPException) as error:  # HTTPError, URLError, timeouts: OSErrors
        offline = "" if own_folder else f"; offline, copy the file to {target}"
        raise UserError(f"cannot download weights={url} ({error}): check the address and the network{offline}") \
            from None
    finally:
        if own_folder and not target.exists():
            with contextlib.suppress(OSError):  # another process's download of the same URL may be under way
                folder.rmdir()  # the URL's own folder, made for this download: no empty folder per failed try
    checkpoint["source"] = str(target)
    return checkpoint


def _download(url: str, path: Path, progress: bool) -> None:
    """url -> path, with a timeout on every read and a check that as many bytes came as the server announced
    (urllib takes a connection closed early for the end of the file)."""
    request = urllib.request.Request(url, headers={"User-Agent": "torch.hub"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(path, "wb") as file:
        announced = response.headers.get("Content-Length")
        expected = int(announced) if announced and announced.isdigit() else None
        received = 0
        with progress_bar(total=expected, disable=not progress, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=Path(urlparse(url).path).name) as bar:
            while chunk := response.read(1 << 20):
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise OSError(f"the connection closed after {received} of {expected} bytes")


def _weights_checkpoint(weights: str | os.PathLike | dict, progress: bool) -> dict[str, Any]:
    """weights=: an http(s) or file URL, a path, or a checkpoint or state_dict a program already loaded."""
    if isinstance(weights, dict):
        return checkpoint_from_data(weights, "the weights= dict")
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights= takes a checkpoint's path or URL, or a loaded state_dict, not a "
                         f"{type(weights).__name__}")
    text = os.fspath(weights)
    scheme = urlparse(text).scheme.lower()
    if scheme in ("http", "https"):
        return _cached_checkpoint(text, progress)
    if scheme == "file":
        return load_checkpoint(Path(url2pathname(urlparse(text).path)), flag="weights=")
    return load_checkpoint(Path(text), flag="weights=")


def _whole_number(name: str, value: object, highest: int | None = None) -> int | None:
    """An int of at least 1, also numpy's (n_classes=mask.max() + 1); None stays None."""
    return None if value is None else whole_number(name, value, highest)


def unet(n_channels: int | None = None, n_classes: int | None = None, bilinear: bool | None = None,
         weights: str | os.PathLike | dict | None = None, progress: bool = True,
         base_channels: int | None = None) -> UNet:
    """A U-Net, untrained (3 channels, 2 classes, transposed-conv upsampling, the classic 64 base channels unless
    told otherwise) or with weights: a checkpoint's path or http(s)/file URL (ours or a reference state_dict), or
    such a dict already loaded. The model comes back in training mode, as torch.hub's models do: eval() it to predict.

    With weights, the architecture comes from them: the arguments may be left out, and must agree when given.
    The model carries mask_values (class i is written as mask_values[i]), mask_palette and scale (the training
    scale: images are resized by it first) from the checkpoint; utils.inference.predict_image uses them.
    """
    n_channels, n_classes = _whole_number("n_channels", n_channels), _whole_number("n_classes", n_classes)
    base_channels = _whole_number("base_channels", base_channels, MAX_BASE_CHANNELS)
    if bilinear is not None:
        if not isinstance(bilinear, (bool, np.bool_)):
            raise ValueError(f"bilinear must be True or False, got {bilinear!r}")
        bilinear = bool(bilinear)
    if weights is None:
        return UNet(3 if n_channels is None else n_channels, 2 if n_classes is None else n_classes, bool(bilinear),
                    CLASSIC_BASE_CHANNELS if base_channels is None else base_channels).float()  # whatever the
        # notebook's torch.set_default_dtype: the code around the model (and its exports) runs float32
    checkpoint = _weights_checkpoint(weights, progress)
    stored = checkpoint["model_args"]
    for name, given in (("n_channels", n_channels), ("n_classes", n_classes), ("bilinear", bilinear),
                        ("base_channels", base_channels)):
        if given is not None and given != stored[name]:
            raise ValueError(f"{weights} holds a U-Net with {name}={stored[name]!r}, not {given!r}: leave {name} "
                             "out (the file decides)")
    return model_from_checkpoint(checkpoint)


def unet_carvana(pretrained: bool = False, scale: float = 0.5, progress: bool = True) -> UNet:
    """The reference's U-Net for Carvana (3 channels, 2 classes, transposed-conv upsampling): untrained unless
    pretrained=True, which loads the published weights trained at scale 0.5 or 1.0 (downloaded once to torch.hub's
    cache, $TORCH_HOME/hub/checkpoints/; a copy put there by hand works offline)."""
    if not isinstance(pretrained, (bool, np.bool_)):  # "no" would be true, and download
        raise ValueError(f"pretrained must be True or False, got {pretrained!r}")
    if not pretrained:
        return UNet(n_channels=3, n_classes=2, bilinear=False).float()
    if isinstance(scale, bool) or scale not in CARVANA_WEIGHTS:  # True == 1.0, but is no scale
        raise ValueError(f"pretrained Carvana weights exist for scale {sorted(CARVANA_WEIGHTS)}, not {scale}")
    model = unet(3, 2, False, weights=CARVANA_WEIGHTS[scale], progress=progress)
    model.scale = scale  # the published files are plain state_dicts: their scale is the one they were named by
    return model
