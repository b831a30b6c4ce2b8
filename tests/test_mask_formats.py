"""Every supported mask format survives the round trip: train (in-process) -> checkpoint -> predict writes masks
in the training masks' own encoding (mode and values or colours), with the classes inferred from the data."""

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NARROW_UNET, write_image
from PIL import Image

import predict
import train
from unet import UNet
from utils.check_data import check_dataset
from utils.checkpoint import load_checkpoint
from utils.data_loading import SegmentationDataset, make_loader
from utils.device import choose_precision
from utils.dice_score import class_weights_from_pixels
from utils.errors import UserError
from utils.mask_encoding import IGNORE_CLASS
from utils.scoring import evaluate

HEIGHT, WIDTH = 32, 48
# What each class looks like in the images: dark background, red class 1, green class 2.
CLASS_LOOKS = np.array([[40, 40, 40], [220, 50, 50], [50, 200, 70]])
VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0]
COLOURS = [[250, 20, 120], [0, 0, 0], [10, 200, 30]]  # class 0, 1, 2 of the colour-coded masks (unsorted)


def class_map(index: int, n_classes: int) -> np.ndarray:
    """HxW class indices: a class-1 rectangle and (for 3 classes) a class-2 rectangle, shifted per sample."""
    classes = np.zeros((HEIGHT, WIDTH), np.int64)
    classes[4 + index:16 + index, 4:22] = 1
    if n_classes > 2:
        classes[18:29, 26 + index:44] = 2
    return classes


def image_of(classes: np.ndarray, seed: int) -> np.ndarray:
    """Each class region painted its own colour, plus a little noise."""
    noise = np.random.default_rng(seed).integers(-12, 13, (*classes.shape, 3))
    return (CLASS_LOOKS[classes] + noise).clip(0, 255).astype(np.uint8)


def write_pairs(root: Path, n_classes: int, to_mask: Callable[[np.ndarray], np.ndarray], mask_ext: str = ".png",
                count: int = 3, **mask_options) -> list[np.ndarray]:
    """imgs/sample<i>.png and masks/sample<i><mask_ext> where the mask is to_mask(class indices)."""
    maps = [class_map(i, n_classes) for i in range(count)]
    for i, classes in enumerate(maps):
        write_image(root / "imgs" / f"sample{i}.png", image_of(classes, seed=i))
        write_image(root / "masks" / f"sample{i}{mask_ext}", to_mask(classes), **mask_options)
    return maps


def train_args(root: Path, *flags: str):
    return train.get_args_parser().parse_args([
        "--imgs", str(root / "imgs"), "--masks", str(root / "masks"), "--checkpoint-dir", str(root / "ck"),
        "--wandb", "disabled", "--workers", "0", "--scale", "1", "--validation", "0", "-b", "3", "-l", "1e-3",
        "-e", "1", *NARROW_UNET, *flags,
    ])


def train_and_predict(root: Path, *flags: str) -> tuple[dict, Image.Image]:
    """Train one epoch, predict sample0.png; the checkpoint and the written mask (what the model learned decides
    its pixels: assert_each_class_written_as checks the encoding of every class)."""
    train.main(train_args(root, *flags))
    checkpoint_file = root / "ck" / "last.pth"
    checkpoint = load_checkpoint(checkpoint_file)
    predict.main(predict.get_args_parser().parse_args(
        ["-m", str(checkpoint_file), "-i", str(root / "imgs" / "sample0.png"), "-o", str(root / "out.png")]))
    state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    del state["optimizer"]  # most of the file; the weights and what they mean are kept for written_per_class
    torch.save(state, root / "ck" / "weights.pth")
    checkpoint_file.unlink()  # a full training state per test would fill the temporary folder
    output = Image.open(root / "out.png")
    output.load()
    assert output.size == (WIDTH, HEIGHT)
    return checkpoint, output


def written_per_class(root: Path, n_outputs: int) -> list[np.ndarray]:
    """What predict.py writes for each class, whatever the training learned: the trained checkpoint with its
    output layer set to give class k everywhere, for each k (a one-channel model: background, then object)."""
    state = torch.load(root / "ck" / "weights.pth", map_location="cpu", weights_only=True)
    written = []
    for k in range(max(n_outputs, 2)):
        state["model"]["outc.conv.weight"].zero_()
        bias = torch.full((n_outputs,), -10.0)
        if n_outputs == 1:
            bias[0] = 10.0 if k == 1 else -10.0
        else:
            bias[k] = 10.0
        state["model"]["outc.conv.bias"].copy_(bias)
        torch.save(state, root / "ck" / f"class{k}.pth")
        predict.main(predict.get_args_parser().parse_args(
            ["-m", str(root / "ck" / f"class{k}.pth"), "-i", str(root / "imgs" / "sample0.png"), "-o",
             str(root / f"class{k}.png"), "--overwrite"]))
        (root / "ck" / f"class{k}.pth").unlink()
        written.append(np.asarray(Image.open(root / f"class{k}.png")))
    return written


def assert_each_class_written_as(root: Path, n_outputs: int, values: list) -> None:
    """Every pixel of class k's mask is values[k] (a colour for colour masks)."""
    for k, mask in enumerate(written_per_class(root, n_outputs)):
        expected = np.asarray(values[k])
        assert (mask == expected).all(), f"class {k}: {np.unique(mask.reshape(-1, *expected.shape), axis=0)}"


def values_of(image: Image.Image) -> set[int]:
    return {int(v) for v in np.unique(np.asarray(image))}


def colours_of(image: Image.Image) -> set[tuple[int, ...]]:
    return {tuple(int(c) for c in colour) for colour in np.unique(np.asarray(image).reshape(-1, 3), axis=0)}


def assert_classes_inferred(checkpoint: dict, n_values: int) -> None:
    assert checkpoint["model_args"]["n_classes"] == n_values
    assert checkpoint["args"]["classes"] == n_values


# --- one test per mask format --------------------------------------------------------------------------------------


def test_binary_0_1_png_masks_predict_0_255_grayscale(tmp_path: Path) -> None:
    write_pairs(tmp_path, 2, lambda c: c.astype(np.uint8))
    checkpoint, output = train_and_predict(tmp_path)
    assert checkpoint["mask_values"] == [0, 1]
    assert_classes_inferred(checkpoint, 2)
    assert output.mode == "L" and values_of(output) <= {0, 255}
    assert_each_class_written_as(tmp_path, 2, [0, 255])


def test_binary_0_255_png_masks_predict_0_255(tmp_path: Path) -> None:
    write_pairs(tmp_path, 2, lambda c: (c * 255).astype(np.uint8))
    checkpoint, output = train_and_predict(tmp_path)
    assert checkpoint["mask_values"] == [0, 255]
    assert_classes_inferred(checkpoint, 2)
    assert output.mode == "L" and values_of(output) <= {0, 255}
    assert_each_class_written_as(tmp_path, 2, [0, 255])


def test_two_arbitrary_values_predict_the_same_two_values(tmp_path: Path) -> None:
    write_pairs(tmp_path, 2, lambda c: np.array([3, 9], np.uint8)[c])
    checkpoint, output = train_and_predict(tmp_path)
    assert checkpoint["mask_values"] == [3, 9]
    assert_classes_inferred(checkpoint, 2)
    assert output.mode == "L" and values_of(output) <= {3, 9}
    assert_each_class_written_as(tmp_path, 2, [3, 9])


def test_bool_npy_masks_predict_0_255(tmp_path: Path) -> None:
    write_pairs(tmp_path, 2, lambda c: c.astype(bool), mask_ext=".npy")
    assert np.load(tmp_path / "masks" / "sample0.npy").dtype == np.bool_
    checkpoint, output = train_and_predict(tmp_path)
    assert checkpoint["mask_values"] == [0, 1]
    assert_classes_inferred(checkpoint, 2)
    assert output.mode == "L" and values_of(output) <= {0, 255}
    assert_each_class_written_as(tmp_path, 2, [0, 255])


def test_voc_palette_masks_predict_palette_png_with_the_training_palette(tmp_path: Path) -> None:
    write_pairs(tmp_path, 3, lambda c: c.astype(np.uint8), mode="P", palette=VOC_PALETTE)
    assert Image.open(tmp_path / "masks" / "sample0.png").mode == "P"
    checkpoint, output = train_and_predict(tmp_path)
    assert checkpoint["mask_values"] == [0, 1, 2]
    assert checkpoint["mask_palette"][:9] == VOC_PALETTE
    assert_classes_inferred(checkpoint, 3)
    assert output.mode == "P"
    assert output.getpalette()[:9] == VOC_PALETTE
    assert values_of(output) <= {0, 1, 2}
    assert_each_class_written_as(tmp_path, 3, [0, 1, 2])  # palette indices


def test_rgb_colour_coded_masks_predict_rgb_with_the_training_colours(tmp_path: Path) -> None:
    write_pairs(tmp_path, 3, lambda c: np.array(COLOURS, np.uint8)[c])
    checkpoint, output = train_and_predict(tmp_path)
    assert checkpoint["mask_values"] == sorted(COLOURS) == [[0, 0, 0], [10, 200, 30], [250, 20, 120]]
    assert_classes_inferred(checkpoint, 3)
    assert output.mode == "RGB" and colours_of(output) <= {tuple(c) for c in COLOURS}
    assert_each_class_written_as(tmp_path, 3, sorted(COLOURS))


def test_rgb_colour_coded_masks_with_a_background_only_mask_still_train(tmp_path: Path) -> None:
    write_pairs(tmp_path, 3, lambda c: np.array(COLOURS, np.uint8)[c])
    write_image(tmp_path / "imgs" / "blank.png", image_of(np.zeros((HEIGHT, WIDTH), np.int64), seed=9))
    write_image(tmp_path / "masks" / "blank.png", np.zeros((HEIGHT, WIDTH, 3), np.uint8))  # all class 1 (black)
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    assert check.mask_values == sorted(COLOURS)
    assert len(check.pairs) == 4


def test_16_bit_tiff_labels_predict_16_bit_with_the_same_values(tmp_path: Path) -> None:
    write_pairs(tmp_path, 3, lambda c: np.array([0, 300, 600], np.uint16)[c], mask_ext=".tif")
    assert Image.open(tmp_path / "masks" / "sample0.tif").mode == "I;16"
    checkpoint, output = train_and_predict(tmp_path)
    assert checkpoint["mask_values"] == [0, 300, 600]
    assert_classes_inferred(checkpoint, 3)
    assert output.mode == "I;16" and np.asarray(output).dtype == np.uint16
    assert values_of(output) <= {0, 300, 600}
    assert_each_class_written_as(tmp_path, 3, [0, 300, 600])


def test_sparse_8_bit_labels_predict_the_same_sparse_values(tmp_path: Path) -> None:
    write_pairs(tmp_path, 3, lambda c: np.array([0, 10, 20], np.uint8)[c])
    checkpoint, output = train_and_predict(tmp_path)
    assert checkpoint["mask_values"] == [0, 10, 20]
    assert_classes_inferred(checkpoint, 3)
    assert output.mode == "L" and values_of(output) <= {0, 10, 20}
    assert_each_class_written_as(tmp_path, 3, [0, 10, 20])


def write_instance_labels(root: Path) -> None:
    """16-bit masks with one label per blob: sample i holds labels 10*i+1 .. 10*i+10, so 0..30 overall."""
    for i in range(3):
        labels = np.zeros((HEIGHT, WIDTH), np.uint16)
        for blob in range(10):
            top, left = 3 + (blob // 5) * 14, 2 + (blob % 5) * 9
            labels[top:top + 6 + i, left:left + 6] = 10 * i + blob + 1
        write_image(root / "imgs" / f"sample{i}.png", image_of((labels > 0).astype(np.int64), seed=i))
        write_image(root / "masks" / f"sample{i}.png", labels)


def test_instance_labels_with_binarize_train_foreground_vs_background(tmp_path: Path) -> None:
    write_instance_labels(tmp_path)
    assert Image.open(tmp_path / "masks" / "sample0.png").mode == "I;16"
    checkpoint, output = train_and_predict(tmp_path, "--binarize")
    assert checkpoint["mask_values"] == [0, 1]
    assert_classes_inferred(checkpoint, 2)
    assert checkpoint["args"]["binarize"] == 0  # any nonzero value
    assert output.mode == "L" and values_of(output) <= {0, 255}
    assert_each_class_written_as(tmp_path, 2, [0, 255])


def test_instance_labels_without_binarize_and_two_classes_is_a_user_error(tmp_path: Path) -> None:
    write_instance_labels(tmp_path)
    with pytest.raises(UserError) as error:
        train.main(train_args(tmp_path, "--classes", "2"))
    message = str(error.value)
    assert "--classes" in message and "31" in message  # 31 distinct values: background and 30 instances
    assert not (tmp_path / "ck" / "last.pth").exists()


# --- ignored pixels --------------------------------------------------------------------------------------------------


def bordered(classes: np.ndarray) -> np.ndarray:
    """0/1 mask with a 2-pixel 255 border around the foreground (VOC style)."""
    mask = classes.astype(np.uint8)
    grown = np.zeros_like(mask, dtype=bool)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            grown |= np.roll(np.roll(classes == 1, dy, 0), dx, 1)
    mask[grown & (classes == 0)] = 255
    return mask


def test_ignore_index_255_border_is_not_a_class_and_becomes_ignore_class(tmp_path: Path) -> None:
    write_pairs(tmp_path, 2, bordered)
    raw = np.asarray(Image.open(tmp_path / "masks" / "sample0.png"))
    assert {int(v) for v in np.unique(raw)} == {0, 1, 255}
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", ignore_value=255, workers=1)
    assert check.mask_values == [0, 1]
    dataset = SegmentationDataset(check.pairs, check.mask_values, ignore_value=255)
    loader = make_loader(dataset, batch_size=3, device=torch.device("cpu"), workers=0)
    batch = next(iter(loader))
    masks = [np.asarray(Image.open(tmp_path / "masks" / f"{name}.png")) for name in batch["name"]]
    expected = torch.from_numpy(np.stack([np.where(m == 255, IGNORE_CLASS, m.astype(np.int64)) for m in masks]))
    assert torch.equal(batch["mask"], expected)
    assert (batch["mask"] == IGNORE_CLASS).sum() == sum(int((m == 255).sum()) for m in masks) > 0

    checkpoint, output = train_and_predict(tmp_path, "--ignore-index", "255")
    assert checkpoint["mask_values"] == [0, 1]
    assert checkpoint["args"]["ignore_index"] == 255
    assert_classes_inferred(checkpoint, 2)
    assert output.mode == "L" and values_of(output) <= {0, 1}
    assert_each_class_written_as(tmp_path, 2, [0, 1])  # as the masks hold it: 255 is the ignored value, not the object


class PaintsRedAsForeground(UNet):
    """A stand-in model: class 1 exactly where the image is red (foreground and the border around it)."""

    def __init__(self) -> None:
        super().__init__(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, 0] > 0.6) & (x[:, 1] < 0.4)
        return torch.stack([(~red).float(), red.float()], dim=1)


def test_evaluate_gives_pooled_scores_beside_the_means_lifted_by_images_without_the_class(tmp_path: Path) -> None:
    """Found by a review: a rare class scored 0.98 as the mean over images, 0.77 over the images holding it; the
    images without it (absent from mask and prediction) each scored 1."""
    red = np.zeros((32, 32, 3), np.uint8)
    red[8:24, 8:24] = (255, 0, 0)  # predicted as class 1: 256 pixels
    half = np.zeros((32, 32), np.uint8)
    half[8:16, 8:24] = 1  # the truth: 128 of them
    write_image(tmp_path / "imgs" / "a.png", red)
    write_image(tmp_path / "masks" / "a.png", half)
    for name in ("b", "c", "d"):  # neither class 1 nor red
        write_image(tmp_path / "imgs" / f"{name}.png", np.full((32, 32, 3), 90, np.uint8))
        write_image(tmp_path / "masks" / f"{name}.png", np.zeros((32, 32), np.uint8))
    cpu = torch.device("cpu")
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    data = SegmentationDataset(check.pairs, check.mask_values, scale_masks=False)
    scores = evaluate(PaintsRedAsForeground(), make_loader(data, 2, cpu, 0), cpu, choose_precision(cpu),
                      progress=False)
    assert scores["dice_per_class"][1] == pytest.approx((2 / 3 + 3) / 4)  # 2 * 128 / (256 + 128) on a, 1 elsewhere
    assert scores["dice_pooled_per_class"][1] == pytest.approx(2 / 3)
    assert scores["iou_pooled_per_class"][1] == pytest.approx(1 / 2)
    assert scores["images_per_class"] == [4, 1]
    predicted, true = 4 * 1024 - 256, 4 * 1024 - 128  # background pixels; every predicted one is true
    assert scores["dice_pooled_per_class"][0] == pytest.approx(2 * predicted / (predicted + true))


class PaintsRedAsForegroundOfThree(PaintsRedAsForeground):
    """The same, as a model of three classes whose class 2 (an extra --classes) is never predicted."""

    def __init__(self) -> None:
        UNet.__init__(self, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([super().forward(x), torch.full_like(x[:, :1], -1.0)], dim=1)


def test_a_class_no_mask_holds_and_never_predicted_is_left_out_of_the_mean(tmp_path: Path) -> None:
    """Found by a review: each extra --classes scored a free 1 in every image, lifting the validation Dice that
    picks best.pth (0.40 of a 6-class model on 4 classes was 2 free classes of 5)."""
    red = np.zeros((32, 32, 3), np.uint8)
    red[8:24, 8:24] = (255, 0, 0)
    half = np.zeros((32, 32), np.uint8)
    half[8:16, 8:24] = 1
    write_image(tmp_path / "imgs" / "a.png", red)
    write_image(tmp_path / "masks" / "a.png", half)
    cpu = torch.device("cpu")
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    data = SegmentationDataset(check.pairs, check.mask_values, scale_masks=False)
    scores = evaluate(PaintsRedAsForegroundOfThree(), make_loader(data, 1, cpu, 0), cpu, choose_precision(cpu),
                      progress=False)
    assert scores["dice_per_class"][1:] == pytest.approx([2 / 3, 1.0])  # class 2: nothing to find, nothing found
    assert scores["dice"] == pytest.approx(2 / 3)  # the mean of class 1 alone, not (2/3 + 1) / 2
    assert scores["rows"][0]["dice"] == pytest.approx(2 / 3)
    assert scores["seen_per_class"] == [True, True, False]


def test_evaluate_leaves_ignored_pixels_out_of_the_dice(tmp_path: Path) -> None:
    maps = [class_map(i, 2) for i in range(2)]
    for i, classes in enumerate(maps):
        looks = classes.copy()
        looks[bordered(classes) == 255] = 1  # the border looks like foreground: the model predicts it as such
        write_image(tmp_path / "imgs" / f"sample{i}.png", image_of(looks, seed=i))
        write_image(tmp_path / "masks" / f"sample{i}.png", bordered(classes))
        write_image(tmp_path / "zeros" / f"sample{i}.png", classes.astype(np.uint8))  # the border as background
    model, cpu = PaintsRedAsForeground(), torch.device("cpu")
    precision = choose_precision(cpu)
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", ignore_value=255, workers=1)
    ignored = SegmentationDataset(check.pairs, check.mask_values, scale_masks=False, ignore_value=255)
    scores = evaluate(model, make_loader(ignored, 2, cpu, 0), cpu, precision, progress=False)
    assert scores["images"] == 2
    assert scores["dice"] == pytest.approx(1.0) and scores["iou"] == pytest.approx(1.0)
    assert scores["dice_per_class"] == pytest.approx([1.0, 1.0])

    counted = check_dataset(tmp_path / "imgs", tmp_path / "zeros", workers=1)
    control = SegmentationDataset(counted.pairs, counted.mask_values, scale_masks=False)
    control_scores = evaluate(model, make_loader(control, 2, cpu, 0), cpu, precision, progress=False)
    border, foreground = int((bordered(maps[0]) == 255).sum()), int((maps[0] == 1).sum())
    first = control_scores["rows"][0]
    assert first["dice"] == pytest.approx(2 * foreground / (2 * foreground + border))
    assert control_scores["dice"] < 1


def test_an_image_whose_mask_is_all_ignored_is_in_no_mean(tmp_path: Path) -> None:
    """Found by a review: a mask entirely --ignore-index scored a perfect 1 (nothing to find, nothing found) and
    lifted the mean, though nothing in it was scored."""
    classes = class_map(0, 2)
    looks = classes.copy()
    looks[:, -6:] = 1  # a red strip that is not an object: an imperfect score
    write_image(tmp_path / "imgs" / "scored.png", image_of(looks, seed=0))
    write_image(tmp_path / "masks" / "scored.png", classes.astype(np.uint8))
    write_image(tmp_path / "imgs" / "void.png", image_of(classes, seed=1))
    write_image(tmp_path / "masks" / "void.png", np.full(classes.shape, 255, np.uint8))
    model, cpu = PaintsRedAsForeground(), torch.device("cpu")
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", ignore_value=255, workers=1)
    data = SegmentationDataset(check.pairs, check.mask_values, scale_masks=False, ignore_value=255)
    scores = evaluate(model, make_loader(data, 2, cpu, 0), cpu, choose_precision(cpu), progress=False)
    assert scores["unscored"] == ["void"] and scores["images"] == 1
    assert [row["name"] for row in scores["rows"]] == ["scored"]
    assert scores["dice"] == pytest.approx(scores["rows"][0]["dice"]) and scores["dice"] < 0.9
    # found by the review of that change: with nothing scored at all, the means are no score, not 0
    void_only = SegmentationDataset([pair for pair in check.pairs if pair.name == "void"], check.mask_values,
                                    scale_masks=False, ignore_value=255)
    nothing = evaluate(model, make_loader(void_only, 1, cpu, 0), cpu, choose_precision(cpu), progress=False)
    assert nothing["images"] == 0 and nothing["unscored"] == ["void"]
    assert (nothing["dice"], nothing["iou"], nothing["dice_pooled"], nothing["iou_pooled"]) == (None,) * 4


def test_a_file_that_breaks_after_the_check_is_neither_an_image_nor_a_zero_in_the_scores(tmp_path: Path) -> None:
    """Validation and evaluate.py skip a file that cannot be read any more: the means are those of the others."""
    looks = class_map(0, 2)
    looks[:, -6:] = 1  # an imperfect score, so that counting the broken file would change it
    for name in ("good", "broken"):
        write_image(tmp_path / "imgs" / f"{name}.png", image_of(looks, seed=0))
        write_image(tmp_path / "masks" / f"{name}.png", class_map(0, 2).astype(np.uint8))
    check = check_dataset(tmp_path / "imgs", tmp_path / "masks", workers=1)
    (tmp_path / "masks" / "broken.png").write_bytes(b"not a PNG any more")
    data = SegmentationDataset(check.pairs, check.mask_values, scale_masks=False, skip_unreadable=True)
    cpu = torch.device("cpu")
    scores = evaluate(PaintsRedAsForeground(), make_loader(data, 2, cpu, 0), cpu, choose_precision(cpu),
                      progress=False)
    assert scores["images"] == 1 and len(scores["skipped"]) == 1 and "broken.png" in scores["skipped"][0]
    assert [row["name"] for row in scores["rows"]] == ["good"]
    assert scores["dice"] == pytest.approx(scores["rows"][0]["dice"]) and 0.5 < scores["dice"] < 0.95


# --- the class count and the class weights ---------------------------------------------------------------------------


def test_classes_omitted_are_inferred_as_one_per_mask_value(tmp_path: Path, capsys) -> None:
    write_pairs(tmp_path, 3, lambda c: np.array([0, 1, 2, 3], np.uint8)[c + (c == 2)])  # values 0, 1, 3
    write_image(tmp_path / "masks" / "sample2.png", np.array([0, 2, 3], np.uint8)[class_map(2, 3)])  # adds 2
    args = train_args(tmp_path)
    assert args.classes is None
    checkpoint, output = train_and_predict(tmp_path)
    assert checkpoint["mask_values"] == [0, 1, 2, 3]
    assert_classes_inferred(checkpoint, 4)
    assert "mask values [0, 1, 2, 3], 4 classes" in capsys.readouterr().out
    assert output.mode == "L" and values_of(output) <= {0, 1, 2, 3}


def test_class_weights_auto_trains_and_prints_median_frequency_weights(tmp_path: Path, capsys,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    maps = write_pairs(tmp_path, 2, lambda c: c.astype(np.uint8))
    real_loss, weighed_with = train.segmentation_loss, []

    def recording_loss(logits, masks, class_weights=None):  # noqa: ANN001, ANN202
        weighed_with.append(None if class_weights is None else class_weights.tolist())
        return real_loss(logits, masks, class_weights)

    monkeypatch.setattr(train, "segmentation_loss", recording_loss)
    foreground = sum(int(m.sum()) for m in maps)
    background = 3 * HEIGHT * WIDTH - foreground
    expected = class_weights_from_pixels([background, foreground])
    assert expected[0] / expected[1] == pytest.approx(foreground / background)  # the rarer class weighs more
    assert 0.1 <= expected[0] < expected[1] <= 10
    checkpoint, output = train_and_predict(tmp_path, "--class-weights", "auto")
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("class weights (auto)")]
    assert printed == [f"class weights (auto): {expected[0]:.3g}, {expected[1]:.3g}"]
    assert checkpoint["args"]["class_weights"] == "auto"
    assert checkpoint["epoch"] == 1 and checkpoint["step"] == 1
    assert len(weighed_with) == 1 and weighed_with[0] == pytest.approx(expected)  # what the loss was given
    assert values_of(output) <= {0, 255}


def test_class_weights_of_the_wrong_count_is_a_user_error_naming_the_flag(tmp_path: Path) -> None:
    write_pairs(tmp_path, 2, lambda c: c.astype(np.uint8))
    with pytest.raises(UserError) as error:
        train.main(train_args(tmp_path, "--class-weights", "1,2,3"))
    assert "--class-weights" in str(error.value) and "needs 2" in str(error.value)
    assert not (tmp_path / "ck" / "last.pth").exists()


def test_classes_1_on_0_255_masks_trains_one_channel_and_predicts_0_255(tmp_path: Path) -> None:
    write_pairs(tmp_path, 2, lambda c: (c * 255).astype(np.uint8))
    checkpoint, output = train_and_predict(tmp_path, "--classes", "1")
    assert checkpoint["mask_values"] == [0, 255]
    assert checkpoint["model_args"]["n_classes"] == 1
    assert output.mode == "L" and values_of(output) <= {0, 255}
    assert_each_class_written_as(tmp_path, 1, [0, 255])


def test_gif_outputs_keep_the_class_values(tmp_path: Path) -> None:
    """Pillow's GIF writer renumbered the palette to the colours used: a palette mask of value 2 came back as 0,
    and an all-object 0/255 mask as 0s, which --skip-existing then counted as background."""
    from utils.data_loading import read_mask
    from utils.mask_encoding import encoding_table
    from utils.mask_writer import MaskWriter, OutputOptions

    cases = [([0, 1, 2], [0, 0, 0, 255, 0, 0, 0, 255, 0], np.full((8, 8), 2, np.int64)),
             ([0, 1], None, np.ones((8, 8), np.int64))]
    for mask_values, palette, classes in cases:
        writer = MaskWriter(mask_values, palette, 3, OutputOptions(), threads=1)
        target = tmp_path / f"{len(mask_values)}.gif"
        writer.check_format(target)
        encoded = encoding_table(mask_values)[classes]
        writer.submit(0, tmp_path / "x.jpg", target, encoded, [0.0, 1.0])
        writer.close()
        assert np.array_equal(read_mask(target), encoded), mask_values
        assert writer.record_existing(1, tmp_path / "x.jpg", target)
        assert float(writer.rows[1][f"fraction_{len(mask_values) - 1}"]) == 1.0


def test_predictions_csv_shows_a_class_of_a_few_pixels_in_a_large_image(tmp_path: Path) -> None:
    """Found by a review: six decimals wrote a 3x3 object in a 6000x4000 tile as 0.000000, the class absent."""
    from utils.mask_writer import MaskWriter, OutputOptions

    mask = np.zeros((2000, 2000), np.uint8)
    mask[7, 9] = 255  # one pixel in four million (0/1 masks are written 0/255)
    Image.fromarray(mask).save(tmp_path / "big.png")
    writer = MaskWriter([0, 1], None, 3, OutputOptions(), threads=1)
    assert writer.record_existing(0, tmp_path / "big.jpg", tmp_path / "big.png")
    assert writer.rows[0]["fraction_1"] == "0.000000250" and writer.rows[0]["fraction_0"] == "0.999999750"
    writer.close()


def test_a_csv_that_cannot_be_written_says_what_was_kept(tmp_path: Path) -> None:
    """Found by a message audit: after a --no-save run the advice was to count the masks with --skip-existing,
    which predict.py refuses beside --no-save, and there were no masks."""
    from utils.errors import UserError
    from utils.mask_writer import MaskWriter, OutputOptions

    (tmp_path / "file").write_text("not a folder")
    for options, fix in ((OutputOptions(), "the masks are written: run again with --skip-existing and a --csv "
                                           "elsewhere to count them"),
                         (OutputOptions(save_mask=False), "no masks were written (--no-save) to count from: free "
                                                          "disk space or give --csv another file, and run again")):
        writer = MaskWriter([0, 1], None, 3, options, threads=1)
        with pytest.raises(UserError, match=rf"^cannot write --csv .*file/p.csv \(.*\); {re.escape(fix)}$"):
            writer.write_csv(tmp_path / "file" / "p.csv")
        writer.close()


def test_outputs_in_formats_that_cannot_hold_the_values_are_refused_before_predicting(tmp_path: Path) -> None:
    from utils.errors import UserError
    from utils.mask_writer import MaskWriter, OutputOptions

    writer = MaskWriter([0, 300, 1000], None, 3, OutputOptions(), threads=1)
    writer.check_format(tmp_path / "x.png")
    writer.check_format(tmp_path / "x.tif")
    for suffix in (".bmp", ".gif"):
        with pytest.raises(UserError, match=rf"the masks hold label values up to 1000, which \{suffix} files cannot "
                                            r"store \(8 bits\): name the outputs .png or .tif"):
            writer.check_format(tmp_path / f"x{suffix}")
    colours = MaskWriter([[0, 0, 0], [255, 0, 0], [0, 0, 255]], None, 3, OutputOptions(), threads=1)
    for suffix in (".png", ".tif", ".bmp"):
        colours.check_format(tmp_path / f"x{suffix}")
    with pytest.raises(UserError, match=r"x.gif: the masks are RGB colours, which a GIF keeps as a palette that this "
                                        r"toolkit reads back as indices"):
        colours.check_format(tmp_path / "x.gif")  # found by a review: evaluate.py could not score them
    writer.close()
    MaskWriter([0, 300], None, 3, OutputOptions(save_mask=False), threads=1).check_format(tmp_path / "x.bmp")


@pytest.mark.parametrize("suffix", [".png", ".gif", ".tif", ".tiff"])
def test_every_mask_format_carries_the_mark_that_lets_a_later_run_replace_it(tmp_path: Path, suffix: str) -> None:
    """predict.py replaces only files it wrote: the mark must survive each format's writer, and a plain file of
    the same name (a ground-truth mask) must not read as marked."""
    from utils.mask_writer import mask_save_options, written_by_predict

    mask = np.array([[0, 255], [255, 0]], np.uint8)
    Image.fromarray(mask).save(tmp_path / f"ours{suffix}", **mask_save_options(tmp_path / f"ours{suffix}"))
    Image.fromarray(mask).save(tmp_path / f"theirs{suffix}")
    assert written_by_predict(tmp_path / f"ours{suffix}")
    assert np.array_equal(np.array(Image.open(tmp_path / f"ours{suffix}")), mask)  # the pixels unchanged
    assert not written_by_predict(tmp_path / f"theirs{suffix}")


def test_only_probabilities_as_save_probs_writes_them_count_as_predict_pys(tmp_path: Path) -> None:
    from utils.mask_writer import written_by_predict

    np.save(tmp_path / "a_probs.npy", np.zeros((2, 4, 4), np.float16))
    np.save(tmp_path / "b_probs.npy", np.zeros((4, 4), np.uint8))  # someone's own array
    (tmp_path / "c_probs.npy").write_bytes(b"text")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "d.bmp")  # BMP: no room for the mark
    np.save(tmp_path / "e_probs.npy", np.zeros((4, 4), np.float16))  # float16, but one map: not classes x H x W
    names = ("a_probs.npy", "b_probs.npy", "c_probs.npy", "d.bmp", "e_probs.npy")
    assert [written_by_predict(tmp_path / name) for name in names] == [True, False, False, False, False]
