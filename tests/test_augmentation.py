"""Augmentation presets: shapes and dtypes kept, image and mask moved together, revealed areas ignored."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import HEIGHT, WIDTH

from utils.augmentation import AUGMENT_PRESETS, IGNORE_CLASS, TrainAugmentation, train_augmentation

# Class k -> a pure colour, none of them the image fill (black), so the image says which class it shows.
RGB_BY_CLASS = torch.tensor([[0, 0, 255], [255, 0, 0], [0, 255, 0]], dtype=torch.uint8)
GRAY_BY_CLASS = torch.tensor([[80], [160], [240]], dtype=torch.uint8)


def class_mask(height: int = 64, width: int = 96) -> torch.Tensor:
    """int64 HxW: background 0, a rectangle of class 1 on the left, a disc of class 2 on the right."""
    mask = torch.zeros(height, width, dtype=torch.int64)
    mask[height // 4: 3 * height // 4, width // 10: 2 * width // 5] = 1
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    mask[(yy - height // 2) ** 2 + (xx - 3 * width // 4) ** 2 < (height // 4) ** 2] = 2
    return mask


def coloured(mask: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """uint8 CxHxW: the mask painted with one colour per class."""
    return colours[mask].permute(2, 0, 1).contiguous()


def one_class_around(mask: torch.Tensor) -> torch.Tensor:
    """bool HxW: pixels whose 3x3 neighbourhood (inside the image) holds a single class."""
    as_float = mask[None, None].float()
    highest = F.max_pool2d(as_float, 3, stride=1, padding=1)[0, 0]
    lowest = -F.max_pool2d(-as_float, 3, stride=1, padding=1)[0, 0]
    return highest == lowest


def seeded(augment, image: torch.Tensor, mask: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return augment(image.clone(), mask.clone())


def test_none_preset_is_no_augmentation():
    assert train_augmentation("none") is None
    assert set(AUGMENT_PRESETS) == {"none", "light", "strong", "geometry"}


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_colour_presets_put_the_channels_in_a_random_order(preset):
    """A model trained on a green and a white car drew a halo around a red one (bench/README.md, "Object
    colours"): each channel of a reddish image becomes the brightest in some draws. Brightness and contrast
    jitter keep the channels' order, so the brightest one tells where the red went."""
    mask = class_mask()
    image = torch.stack([torch.full(mask.shape, value, dtype=torch.uint8) for value in (200, 90, 30)])
    augment = train_augmentation(preset)
    brightest = [seeded(augment, image, mask, seed)[0].float().mean((1, 2)).argmax().item() for seed in range(40)]
    assert set(brightest) == {0, 1, 2}
    assert 0.1 * 40 <= brightest.count(0) <= 0.6 * 40  # the identity is one of the 6 orders, not the rule


def test_geometry_preset_moves_like_light_and_keeps_the_colours():
    """For data whose colours tell the classes apart: light's flips and zoom, no colour change at all."""
    mask = class_mask()
    image = coloured(mask, RGB_BY_CLASS)
    for seed in range(10):
        moved, moved_mask = seeded(train_augmentation("geometry"), image, mask, seed)
        expected, expected_mask = seeded(TrainAugmentation("light", colour=False), image, mask, seed)
        assert torch.equal(moved, expected) and torch.equal(moved_mask, expected_mask)
    # nothing but the pure class colours and their bilinear blends at edges: no jitter moved a flat area
    flat = one_class_around(moved_mask)
    assert torch.equal(moved.permute(1, 2, 0)[flat], RGB_BY_CLASS[moved_mask[flat]])


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_a_fourth_band_moves_with_the_geometry_and_takes_no_colour_jitter(preset):
    """torchvision's jitter refuses 4 channels; the fourth (near-infrared, alpha) is no colour to jitter."""
    mask = class_mask(HEIGHT, WIDTH)
    image = torch.cat([coloured(mask, RGB_BY_CLASS), coloured(mask, GRAY_BY_CLASS)])
    for seed in range(5):
        jittered, out_mask = seeded(train_augmentation(preset), image, mask, seed)
        plain, plain_mask = seeded(train_augmentation(preset, colour=False), image, mask, seed)
        assert jittered.shape == (4, HEIGHT, WIDTH) and jittered.dtype == torch.uint8
        assert torch.equal(out_mask, plain_mask) and torch.equal(jittered[3], plain[3])
        assert not torch.equal(jittered[:3], plain[:3])  # the colours were jittered


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", ["light", "strong", "geometry"])
def test_shapes_and_dtypes_are_kept(preset, channels):
    augment = train_augmentation(preset)
    mask = class_mask(HEIGHT, WIDTH)
    image = coloured(mask, RGB_BY_CLASS if channels == 3 else GRAY_BY_CLASS)
    for seed in range(5):
        out_image, out_mask = seeded(augment, image, mask, seed)
        assert out_image.shape == (channels, HEIGHT, WIDTH) and out_image.dtype == torch.uint8
        assert out_mask.shape == (HEIGHT, WIDTH) and out_mask.dtype == torch.int64
        assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor  # plain tensors batch as before


@pytest.mark.parametrize("colours", [RGB_BY_CLASS, GRAY_BY_CLASS], ids=["rgb", "gray"])
def test_augmentation_keeps_image_and_mask_aligned(colours):
    augment = TrainAugmentation("strong", colour=False)
    mask = class_mask()
    image = coloured(mask, colours)
    agreeing = interior = fill_black = ignored = 0
    for seed in range(30):
        out_image, out_mask = seeded(augment, image, mask, seed)
        # The class each output pixel's colour is closest to (bilinear blends only occur at class boundaries).
        distances = (out_image.float().permute(1, 2, 0)[..., None, :] - colours.float()).abs().sum(-1)
        image_class = distances.argmin(-1)
        uniform = one_class_around(out_mask)
        inside = uniform & (out_mask != IGNORE_CLASS)
        agreeing += (image_class == out_mask)[inside].sum().item()
        interior += inside.sum().item()
        # The 1-pixel band where the revealed border meets the picture is a bilinear blend, like class boundaries.
        revealed = uniform & (out_mask == IGNORE_CLASS)
        fill_black += (out_image == 0).all(0)[revealed].sum().item()
        ignored += revealed.sum().item()
    assert interior > 0.5 * 30 * mask.numel()
    assert agreeing >= 0.98 * interior
    assert ignored > 0, "scale < 1, rotation and translation should reveal some border in 30 draws"
    assert fill_black >= 0.95 * ignored


def test_strong_preset_really_transforms():
    mask = class_mask()
    image = coloured(mask, RGB_BY_CLASS)
    augment = train_augmentation("strong")
    draws = 40
    changed = mirrored = 0
    for seed in range(draws):
        out_image, out_mask = seeded(augment, image, mask, seed)
        changed += not torch.equal(out_image, image) and not torch.equal(out_mask, mask)
        # Class 1 starts on the left; only a horizontal flip moves it past the middle.
        columns = (out_mask == 1).nonzero()[:, 1].float()
        mirrored += columns.mean().item() > mask.shape[1] / 2
    assert changed >= 0.9 * draws
    assert 0.25 * draws <= mirrored <= 0.75 * draws  # p=0.5 flips; deterministic for these seeds


@pytest.mark.parametrize("preset", ["light", "strong", "geometry"])
def test_no_preset_turns_scenes_upside_down(preset):
    """Vertical flips are left out on purpose (cars, roads and slides have an up): an object in the top half stays
    in the top half under every draw (a 10-degree turn and a 5% shift move it a little, not across)."""
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.int64)
    mask[2:HEIGHT // 3, 4:WIDTH - 4] = 1
    image = coloured(mask, RGB_BY_CLASS)
    augment = train_augmentation(preset)
    for seed in range(40):
        rows = (seeded(augment, image, mask, seed)[1] == 1).nonzero()[:, 0].float()
        assert len(rows) and rows.mean().item() < HEIGHT / 2, seed


def test_same_seed_gives_the_same_augmentation():
    mask = class_mask()
    image = coloured(mask, RGB_BY_CLASS)
    augment = train_augmentation("strong")
    first, second = seeded(augment, image, mask, 7), seeded(augment, image, mask, 7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("preset", ["light", "strong", "geometry"])
def test_mask_values_stay_in_the_class_set(preset):
    mask = class_mask() * 3 + 1  # classes 1, 4, 7: gaps that interpolation would fill
    image = coloured(class_mask(), RGB_BY_CLASS)
    augment = train_augmentation(preset)
    seen = set()
    for seed in range(20):
        seen |= set(seeded(augment, image, mask, seed)[1].unique().tolist())
    assert seen <= {1, 4, 7, IGNORE_CLASS}
    assert {1, 4, 7} <= seen


@pytest.mark.parametrize("preset", ["light", "geometry"])
def test_light_presets_only_zoom_in_so_nothing_is_ignored(preset):
    mask = class_mask()
    image = coloured(mask, RGB_BY_CLASS)
    augment = train_augmentation(preset)
    for seed in range(20):
        assert (seeded(augment, image, mask, seed)[1] != IGNORE_CLASS).all()


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="none, light, strong, geometry"):
        train_augmentation("heavy")


def test_preset_is_picklable():
    mask = class_mask()
    image = coloured(mask, RGB_BY_CLASS)
    augment = train_augmentation("strong")
    restored = pickle.loads(pickle.dumps(augment))
    expected, actual = seeded(augment, image, mask, 3), seeded(restored, image, mask, 3)
    assert torch.equal(expected[0], actual[0]) and torch.equal(expected[1], actual[1])
