"""torch.hub entry points, loaded from this directory with local weight files (no network)."""

from pathlib import Path

import pytest
import torch

import hubconf
from unet import UNet
from utils.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_unet_entry_point_builds_untrained_model() -> None:
    model = torch.hub.load(str(REPO), "unet", source="local", n_channels=1, n_classes=4, bilinear=True)
    assert (model.n_channels, model.n_classes, model.bilinear) == (1, 4, True)
    assert model(torch.rand(1, 1, 35, 41)).shape == (1, 4, 35, 41)


def test_unet_entry_point_loads_our_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = UNet(3, 3).eval()
    save_checkpoint(tmp_path / "run.pth", trained, [0, 10, 20], scale=0.5)
    model = torch.hub.load(str(REPO), "unet", source="local", n_classes=3, weights=tmp_path / "run.pth").eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x))
    assert model.mask_values == [0, 10, 20]


def test_unet_entry_point_takes_the_architecture_from_the_weights_when_not_told(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "gray.pth", UNet(1, 4, bilinear=True), [0, 1, 2, 3])
    model = hubconf.unet(weights=tmp_path / "gray.pth")
    assert (model.n_channels, model.n_classes, model.bilinear) == (1, 4, True)
    assert (hubconf.unet().n_channels, hubconf.unet().n_classes, hubconf.unet().bilinear) == (3, 2, False)
    with pytest.raises(ValueError, match="with n_channels=1, not 3"):
        hubconf.unet(n_channels=3, weights=tmp_path / "gray.pth")


def test_unet_entry_point_rejects_contradicting_arguments(tmp_path: Path) -> None:
    torch.save(UNet(3, 2).state_dict(), tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="plain.pth holds a U-Net with n_classes=2, not 5: leave n_classes out"):
        torch.hub.load(str(REPO), "unet", source="local", n_classes=5, weights=str(tmp_path / "plain.pth"))
    with pytest.raises(ValueError, match="with bilinear=False, not True"):
        hubconf.unet(bilinear=True, weights=tmp_path / "plain.pth")


def test_unet_carvana_pretrained_reads_reference_weights_from_hub_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() is $TORCH_HOME/hub
    torch.manual_seed(1)
    published = UNet(3, 2, bilinear=False).eval()
    state = published.state_dict()
    state["mask_values"] = [0, 1]
    cached = tmp_path / "hub" / "checkpoints" / hubconf.CARVANA_WEIGHTS[0.5].rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)  # what the download would have put there

    def no_network(*args, **kwargs):
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model = torch.hub.load(str(REPO), "unet_carvana", source="local", pretrained=True, scale=0.5).eval()
    x = torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), published(x))
    assert model.mask_values == [0, 1]
    untrained = torch.hub.load(str(REPO), "unet_carvana", source="local")
    assert (untrained.n_classes, untrained.bilinear) == (2, False)
    with pytest.raises(ValueError, match="scale"):
        hubconf.unet_carvana(pretrained=True, scale=0.25)


def test_weights_url_is_downloaded_once_into_hub_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    downloads = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:
        downloads.append(url)
        torch.save(UNet(3, 2, bilinear=True).state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    url = "https://example.invalid/releases/my_unet.pth"
    for _ in range(2):
        model = hubconf.unet(bilinear=True, weights=url, progress=False)
        assert model.bilinear and model.mask_values == [0, 1]
    assert downloads == [url]
    assert len(list((tmp_path / "hub" / "checkpoints").glob("*/my_unet.pth"))) == 1


def test_two_weights_urls_ending_in_one_file_name_are_two_files(tmp_path: Path, monkeypatch) -> None:
    """Found by a review: run1/best.pth (2 classes) was cached as best.pth, and run2/best.pth (3 classes) then
    returned it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def fake_download(url: str, dst: str, progress: bool = True) -> None:
        torch.save(UNet(3, 2 if "run1" in url else 3, bilinear=False).state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    first = hubconf.unet(weights="https://example.invalid/run1/best.pth", progress=False)
    second = hubconf.unet(weights="https://example.invalid/run2/best.pth", progress=False)
    assert (first.n_classes, second.n_classes) == (2, 3)


def test_weights_urls_that_fail_are_one_line_naming_the_url(tmp_path: Path, monkeypatch) -> None:
    import urllib.error

    from utils.errors import UserError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def not_found(url: str, dst: str, progress: bool = True) -> None:
        raise urllib.error.HTTPError(url, 404, "Not Found", None, None)

    monkeypatch.setattr(torch.hub, "download_url_to_file", not_found)
    with pytest.raises(UserError, match=r"cannot download weights=https://example.invalid/gone.pth \(HTTP Error 404: "
                                        r"Not Found\): check the address and the network"):
        hubconf.unet(weights="https://example.invalid/gone.pth")
    with pytest.raises(UserError, match=r"weights='https://example.invalid/runs/' names no file"):
        hubconf.unet(weights="https://example.invalid/runs/")
    assert not list((tmp_path / "hub").rglob("*.pth"))  # nothing half-written left in the cache
    assert list((tmp_path / "hub" / "checkpoints").iterdir()) == []  # nor an empty folder for the URL


@pytest.mark.parametrize(("kwargs", "complaint"), [
    ({"n_classes": 0}, "n_classes must be a whole number of at least 1, got 0"),
    ({"n_classes": "3"}, "n_classes must be a whole number of at least 1, got '3'"),
    ({"n_channels": -1}, "n_channels must be a whole number of at least 1, got -1"),
    ({"bilinear": "no"}, "bilinear must be True or False, got 'no'"),
])
def test_arguments_of_an_untrained_unet_are_checked(kwargs: dict, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        hubconf.unet(**kwargs)


def test_a_checkpoint_folder_given_as_weights_is_named_as_a_folder(tmp_path: Path) -> None:
    from utils.errors import UserError

    torch.save(UNet(3, 2, bilinear=False).state_dict(), tmp_path / "best.pth")
    with pytest.raises(UserError, match=r"weights= .* is a folder: give a checkpoint file in it \(best.pth\)"):
        hubconf.unet(weights=tmp_path)
