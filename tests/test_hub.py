"""torch.hub entry points, loaded from this directory with local weight files, and URLs served by a local HTTP
server (no network)."""

import http.server
import io
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import hubconf
from unet import UNet
from utils.checkpoint import save_checkpoint

# The class hubconf raises: its own import of utils/ leaves sys.modules after it (a later `from utils.errors
# import UserError` may be another copy), as it must for a caller whose own utils/ comes later.
UserError = hubconf.UserError

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
    assert model.scale == 0.5 and model.mask_palette is None  # what predict_image needs to read the image
    assert hubconf.unet().scale is None


def test_unet_entry_point_takes_the_architecture_from_the_weights_when_not_told(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "gray.pth", UNet(1, 4, bilinear=True, base_channels=16), [0, 1, 2, 3])
    model = hubconf.unet(weights=tmp_path / "gray.pth")
    assert (model.n_channels, model.n_classes, model.bilinear, model.base_channels) == (1, 4, True, 16)
    untrained = hubconf.unet()
    assert (untrained.n_channels, untrained.n_classes, untrained.bilinear, untrained.base_channels) == (3, 2, False, 64)
    assert hubconf.unet(base_channels=np.int64(8)).inc.double_conv[0].out_channels == 8
    with pytest.raises(ValueError, match="with n_channels=1, not 3"):
        hubconf.unet(n_channels=3, weights=tmp_path / "gray.pth")
    with pytest.raises(ValueError, match="with base_channels=16, not 64: leave base_channels out"):
        hubconf.unet(base_channels=64, weights=tmp_path / "gray.pth")


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

    monkeypatch.setattr(hubconf, "_download", no_network)
    model = hubconf.unet_carvana(pretrained=True, scale=0.5).eval()
    x = torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), published(x))
    assert model.mask_values == [0, 1]
    assert model.scale == 0.5  # found by a review: None, so predict_image read images at its default
    untrained = torch.hub.load(str(REPO), "unet_carvana", source="local")
    assert (untrained.n_classes, untrained.bilinear) == (2, False)
    with pytest.raises(ValueError, match="scale"):
        hubconf.unet_carvana(pretrained=True, scale=0.25)
    with pytest.raises(ValueError, match="scale"):
        hubconf.unet_carvana(pretrained=True, scale=True)


class WeightsServer:
    """A local HTTP server standing in for a release page: whole files, cut-off ones, web pages, silence."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.release = files, [], threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                kind, _, name = self.path.strip("/").partition("/")
                if kind == "stall":  # connected, then nothing until the test ends
                    server.release.wait(30)
                    return
                body = server.files.get(name)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) * (3 if kind == "cut" else 1)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def weights_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))  # torch.hub.get_dir() is $TORCH_HOME/hub
    files = {}
    for name, classes in (("run1-best.pth", 2), ("run2-best.pth", 3)):
        buffer = io.BytesIO()
        torch.save(UNet(3, classes, bilinear=True).state_dict(), buffer)
        files[name] = buffer.getvalue()
    files["page.pth"] = b"<!DOCTYPE html><html><body>Sign in to download</body></html>"
    server = WeightsServer(files)
    yield server
    server.close()


def hub_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "home" / "hub"
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


def test_weights_url_is_downloaded_once_into_hub_cache(weights_server: WeightsServer, tmp_path: Path) -> None:
    url = f"{weights_server.url}/whole/run1-best.pth"
    for _ in range(2):
        model = hubconf.unet(bilinear=True, weights=url, progress=False)
        assert model.bilinear and model.n_classes == 2 and model.mask_values == [0, 1]
    assert weights_server.requests == ["/whole/run1-best.pth"]
    cached = list((tmp_path / "home" / "hub" / "checkpoints").glob("*/run1-best.pth"))
    assert len(cached) == 1 and cached[0].read_bytes() == weights_server.files["run1-best.pth"]


def test_two_weights_urls_ending_in_one_file_name_are_two_files(weights_server: WeightsServer) -> None:
    """Found by a review: run1/best.pth (2 classes) was cached as best.pth, and run2/best.pth (3 classes) then
    returned it."""
    weights_server.files["best.pth"] = weights_server.files["run1-best.pth"]
    first = hubconf.unet(weights=f"{weights_server.url}/whole/best.pth", progress=False)
    weights_server.files["best.pth"] = weights_server.files["run2-best.pth"]
    second = hubconf.unet(weights=f"{weights_server.url}/other/best.pth", progress=False)
    assert (first.n_classes, second.n_classes) == (2, 3)


def test_weights_urls_that_fail_are_one_line_naming_the_url_and_cache_nothing(
        weights_server: WeightsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: a download cut off midway, or a web page sent in place of the file, was cached as the
    checkpoint and failed every later call; a server that never answered hung the call for ever."""
    url = weights_server.url
    with pytest.raises(UserError, match=rf"cannot download weights={url}/whole/gone.pth \(HTTP Error 404: "
                                        r"Not Found\): check the address and the network"):
        hubconf.unet(weights=f"{url}/whole/gone.pth")
    with pytest.raises(UserError, match=rf"cannot download weights={url}/cut/run1-best.pth \(the connection "
                                        r"closed after \d+ of \d+ bytes\)"):
        hubconf.unet(weights=f"{url}/cut/run1-best.pth", progress=False)
    with pytest.raises(UserError, match=rf"weights={url}/whole/page.pth sent a file that is not a usable "
                                        r"checkpoint: it is not a PyTorch checkpoint"):
        hubconf.unet(weights=f"{url}/whole/page.pth", progress=False)
    monkeypatch.setattr(hubconf, "DOWNLOAD_TIMEOUT_S", 0.2)
    with pytest.raises(UserError, match=rf"cannot download weights={url}/stall/run1-best.pth \(.*timed out"):
        hubconf.unet(weights=f"{url}/stall/run1-best.pth", progress=False)
    with pytest.raises(UserError, match=r"weights='https://example.invalid/runs/' names no file"):
        hubconf.unet(weights="https://example.invalid/runs/")
    assert hub_files(tmp_path) == ["checkpoints"]  # no partial file, no empty folder per URL
    hubconf.unet(weights=f"{url}/whole/run1-best.pth", progress=False)  # the address works once the file does


def test_sigterm_during_a_download_ends_the_process_and_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    """A scheduler or `timeout` stopping a download: the process ends as SIGTERM ends it (143), without the
    partial file or the URL's folder, which a later call would otherwise find."""
    child = f"""
import signal, sys
sys.path.insert(0, {str(REPO)!r})
import hubconf

def download(url, path, progress):  # the first megabyte has arrived when the signal comes
    path.write_bytes(b"half a checkpoint")
    print(path, flush=True)
    signal.raise_signal(signal.SIGTERM)
    print("still running", flush=True)

hubconf._download = download
hubconf.unet(weights="https://example.invalid/run1/best.pth", progress=False)
"""
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            env={**os.environ, "TORCH_HOME": str(tmp_path / "home")})
    partial = Path(result.stdout.splitlines()[0])
    assert result.returncode == 143 and "still running" not in result.stdout, (result.stdout, result.stderr)
    assert partial.is_relative_to(tmp_path / "home" / "hub" / "checkpoints") and not partial.exists()
    assert hub_files(tmp_path) == ["checkpoints"]


def test_a_cached_copy_that_does_not_load_is_downloaded_again(weights_server: WeightsServer, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """What earlier versions, which checked nothing, may have left in the cache."""
    url = f"{weights_server.url}/whole/run2-best.pth"
    hubconf.unet(weights=url, progress=False)
    cached = next((tmp_path / "home" / "hub" / "checkpoints").glob("*/run2-best.pth"))
    cached.write_bytes(weights_server.files["run2-best.pth"][:1000])
    assert hubconf.unet(weights=url, progress=False).n_classes == 3
    assert f"note: downloading {url} again: the cached copy is not usable" in capsys.readouterr().err
    assert cached.read_bytes() == weights_server.files["run2-best.pth"]


def test_hub_load_beside_a_project_of_its_own_with_utils_and_unet_modules(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: a caller that had imported its own `utils` got "No module named 'utils.checkpoint'"."""
    for name in [name for name in sys.modules if name.partition(".")[0] in ("utils", "unet")]:
        monkeypatch.delitem(sys.modules, name)  # put back after the test
    theirs = {name: types.ModuleType(name) for name in ("utils", "unet")}
    for name, module in theirs.items():
        monkeypatch.setitem(sys.modules, name, module)
    torch.save(UNet(1, 4, bilinear=True).state_dict(), tmp_path / "gray.pth")
    model = torch.hub.load(str(REPO), "unet", source="local", weights=tmp_path / "gray.pth")
    assert (model.n_channels, model.n_classes, model.bilinear) == (1, 4, True)
    assert type(model).__module__ == "unet.unet_model"
    assert model.eval()(torch.rand(1, 1, 20, 20)).shape == (1, 4, 20, 20)
    assert all(sys.modules[name] is module for name, module in theirs.items())  # theirs, as before the call
    assert not [name for name in sys.modules if name.startswith(("utils.", "unet."))]


def test_a_model_loaded_beside_the_callers_own_utils_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: with a caller's utils (only) imported, our unet left sys.modules too, so torch.save of
    the model failed with "import of module 'unet.unet_model' failed"."""
    for name in [name for name in sys.modules if name.partition(".")[0] in ("utils", "unet")]:
        monkeypatch.delitem(sys.modules, name)  # put back after the test
    theirs = types.ModuleType("utils")
    monkeypatch.setitem(sys.modules, "utils", theirs)
    model = torch.hub.load(str(REPO), "unet", source="local", n_classes=2)
    assert sys.modules["utils"] is theirs
    assert sys.modules[type(model).__module__] is sys.modules["unet.unet_model"]
    torch.save(model, tmp_path / "whole.pt")
    assert isinstance(torch.load(tmp_path / "whole.pt", weights_only=False), type(model))


def test_hub_load_leaves_the_callers_later_utils_import_to_the_caller(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: after a hub load, a notebook's own utils/ (and another hub repo's) resolved to ours."""
    for name in [name for name in sys.modules if name.partition(".")[0] in ("utils", "unet")]:
        monkeypatch.delitem(sys.modules, name)  # as in a fresh process; put back after the test
    (tmp_path / "project" / "utils").mkdir(parents=True)
    (tmp_path / "project" / "utils" / "__init__.py").write_text("def my_helper():\n    return 'mine'\n")
    model = torch.hub.load(str(REPO), "unet", source="local")
    assert not [name for name in sys.modules if name.partition(".")[0] == "utils"]
    assert sys.modules[type(model).__module__] is sys.modules["unet.unet_model"]  # the model still pickles by name
    monkeypatch.syspath_prepend(str(tmp_path / "project"))
    import utils  # the project's own, imported after the hub load

    assert utils.my_helper() == "mine"
    monkeypatch.delitem(sys.modules, "utils")


def test_weights_may_be_a_loaded_dict_or_a_file_url_and_sizes_numpy_integers(tmp_path: Path) -> None:
    """Found by a review: a loaded state_dict gave an OSError holding its whole repr, a file:// URL "does not exist",
    and n_classes=np.int64(3) (mask.max() + 1) was "not a whole number"."""
    torch.manual_seed(0)
    trained = UNet(3, 3).eval()
    state = {**trained.state_dict(), "mask_values": [0, 1, 2]}
    torch.save(state, tmp_path / "plain.pth")
    x = torch.rand(1, 3, 32, 32)
    given = dict(state)
    for weights in (given, (tmp_path / "plain.pth").as_uri()):
        model = hubconf.unet(weights=weights, n_classes=np.int64(3), bilinear=np.bool_(False)).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), trained(x))
        assert model.mask_values == [0, 1, 2]
    # the caller's dict left as it was: the same keys, the same tensors, unchanged
    assert given.keys() == state.keys() and all(given[key] is state[key] for key in state)
    assert all(torch.equal(tensor, trained.state_dict()[key]) for key, tensor in given.items() if key != "mask_values")
    assert hubconf.unet(n_classes=np.int64(4)).n_classes == 4
    with pytest.raises(ValueError, match="weights= takes a checkpoint's path or URL, or a loaded state_dict, not a "
                                         "list"):
        hubconf.unet(weights=[1, 2])
    with pytest.raises(UserError, match="the weights= dict is not a U-Net checkpoint|the weights= dict"):
        hubconf.unet(weights={"conv.weight": torch.zeros(1)})


@pytest.mark.parametrize(("kwargs", "complaint"), [
    ({"n_classes": 0}, "n_classes must be a whole number of at least 1, got 0"),
    ({"n_classes": "3"}, "n_classes must be a whole number of at least 1, got '3'"),
    ({"n_channels": -1}, "n_channels must be a whole number of at least 1, got -1"),
    ({"bilinear": "no"}, "bilinear must be True or False, got 'no'"),
    ({"base_channels": 0.5}, "base_channels must be a whole number from 1 to 256, got 0.5"),
    ({"base_channels": 100000}, "base_channels must be a whole number from 1 to 256, got 100000"),
])
def test_arguments_of_an_untrained_unet_are_checked(kwargs: dict, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        hubconf.unet(**kwargs)


def test_a_checkpoint_folder_given_as_weights_is_named_as_a_folder(tmp_path: Path) -> None:
    torch.save(UNet(3, 2, bilinear=False).state_dict(), tmp_path / "best.pth")
    with pytest.raises(UserError, match=r"weights= .* is a folder: give a checkpoint file in it \(best.pth\)"):
        hubconf.unet(weights=tmp_path)
