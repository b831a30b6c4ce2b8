"""Mask values <-> class indices: distinct values, the cached folder scan, encode/decode, class checks."""


import numpy as np
import pytest

from utils.data_loading import read_mask
from utils.errors import UserError
from utils.mask_encoding import (
    IGNORE_CLASS,
    binarize_threshold,
    check_classes,
    decode_mask,
    distinct_values,
    encode_mask,
)

RED, GREEN, BLACK = [255, 0, 0], [0, 255, 0], [0, 0, 0]


def colour_mask(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# --- distinct_values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (np.array([[0, 255], [255, 0]], dtype=np.uint8), [0, 255]),
        (np.array([[65535, 0], [300, 300]], dtype=np.uint16), [0, 300, 65535]),
        (np.array([[True, False], [True, True]]), [0, 1]),
        (np.array([[7, -1], [3, 7]], dtype=np.int32), [-1, 3, 7]),
        (np.array([[2.0, 0.0]], dtype=np.float32), [0, 2]),
    ],
    ids=["uint8", "uint16", "bool", "int32", "integral-float"],
)
def test_distinct_values_of_scalar_masks(mask, expected):
    values = distinct_values(mask)
    assert values == expected
    assert all(type(v) is int for v in values)


def test_distinct_values_of_rgb_mask_are_sorted_colour_lists():
    mask = colour_mask([[RED, GREEN], [BLACK, RED]])
    assert distinct_values(mask) == [BLACK, GREEN, RED]  # sorted by (r, g, b) packed into one int


def test_distinct_values_refuses_fractional_labels():
    with pytest.raises(UserError, match="non-integer"):
        distinct_values(np.array([[0.5, 1.0]], dtype=np.float32))


# --- encode_mask ------------------------------------------------------------------------------------


def test_binarize_takes_values_above_the_threshold_as_foreground():
    blurred = np.array([[0, 3, 126, 127, 128, 250, 255]], dtype=np.uint8)  # a JPEG mask's edge
    assert encode_mask(blurred, [0, 1], "m.jpg", binarize_above=127).tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    assert encode_mask(blurred, [0, 1], "m.jpg", binarize_above=0).tolist() == [[0, 1, 1, 1, 1, 1, 1]]
    colours = colour_mask([[BLACK, [0, 0, 200], [100, 90, 120]]])
    assert encode_mask(colours, [0, 1], "m.png", binarize_above=127).tolist() == [[0, 1, 0]]  # any channel


@pytest.mark.parametrize(("stored", "threshold"), [(None, None), (False, None), (True, 0), (0, 0), (127, 127)])
def test_binarize_threshold_reads_older_checkpoints_true_false(stored, threshold):
    assert binarize_threshold(stored) == threshold


def test_binary_0_255_mask_encodes_to_0_1():
    indices = encode_mask(np.array([[0, 255], [255, 0]], dtype=np.uint8), [0, 255], "m.png")
    assert indices.dtype == np.int64
    assert indices.tolist() == [[0, 1], [1, 0]]


def test_sparse_values_encode_to_consecutive_indices():
    indices = encode_mask(np.array([[20, 0, 10], [10, 20, 0]], dtype=np.uint8), [0, 10, 20], "m.png")
    assert indices.tolist() == [[2, 0, 1], [1, 2, 0]]


def test_unsorted_mask_values_encode_by_position():
    indices = encode_mask(np.array([[0, 255, 128]], dtype=np.uint8), [255, 0, 128], "m.png")
    assert indices.tolist() == [[1, 0, 2]]


def test_rgb_colours_encode_to_their_index():
    mask = colour_mask([[RED, GREEN], [BLACK, RED]])
    indices = encode_mask(mask, [BLACK, GREEN, RED], "m.png")
    assert indices.shape == (2, 2)
    assert indices.tolist() == [[2, 1], [0, 2]]


@pytest.mark.parametrize("bad", [5, 300, 254], ids=["between", "above", "below-last"])
def test_unknown_value_raises_user_error_naming_file_and_value(bad):
    mask = np.array([[0, 255], [bad, 10]], dtype=np.uint16)
    with pytest.raises(UserError, match=rf"cat_7\.png has the value {bad}\b"):
        encode_mask(mask, [0, 10, 255], "masks/cat_7.png")


def test_unknown_colour_raises_user_error_naming_file():
    mask = colour_mask([[RED, [1, 2, 3]]])
    with pytest.raises(UserError, match=r"m\.png has the value \[1, 2, 3\]"):
        encode_mask(mask, [BLACK, RED], "m.png")


def test_encoding_kind_mismatch_raises_user_error():
    with pytest.raises(UserError, match="RGB colour"):
        encode_mask(colour_mask([[RED]]), [0, 1], "m.png")
    with pytest.raises(UserError, match="single-channel"):
        encode_mask(np.array([[0]], dtype=np.uint8), [BLACK, RED], "m.png")
    with pytest.raises(UserError, match="m.png"):
        encode_mask(np.array([[0]], dtype=np.uint8), [], "m.png")


# --- decode_mask ------------------------------------------------------------------------------------

INDICES = np.array([[0, 1, 2], [2, 1, 0]])


def test_binary_decode_writes_0_255_gray_image():
    image = decode_mask(np.array([[0, 1], [1, 0]]), [0, 1])
    assert image.mode == "L"
    assert np.asarray(image).tolist() == [[0, 255], [255, 0]]


def test_binary_palette_masks_with_a_void_border_keep_their_palette(tmp_path):
    """Found by a VOC-style review: 0/1 palette masks with 255 ignored were written as a near-black grayscale 0/1
    PNG without their palette. 0/1 masks whose 255 is not ignored (Carvana's GIFs) stay 0/255 grayscale."""
    from PIL import Image

    from utils.mask_writer import MaskWriter, OutputOptions

    palette = [0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192]  # VOC's first colours and its void
    classes = np.array([[0, 1], [1, 0]])
    image = decode_mask(classes, [0, 1], palette, ignore_value=255)
    assert image.mode == "P" and np.asarray(image).tolist() == [[0, 1], [1, 0]]
    assert image.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    plain = decode_mask(classes, [0, 1], palette)
    assert plain.mode == "L" and np.asarray(plain).tolist() == [[0, 255], [255, 0]]
    writer = MaskWriter([0, 1], palette, 3, OutputOptions(), threads=1, ignore_value=255)
    writer.submit(0, tmp_path / "x.jpg", tmp_path / "x.png", writer.table[classes], [0.5, 0.5])
    writer.close()
    written = Image.open(tmp_path / "x.png")
    assert written.mode == "P" and written.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    assert np.asarray(written).tolist() == [[0, 1], [1, 0]]


def test_scalar_decode_writes_the_mask_values(tmp_path):
    image = decode_mask(INDICES, [0, 10, 20])
    assert image.mode == "L"
    assert np.asarray(image).tolist() == [[0, 10, 20], [20, 10, 0]]
    image.save(tmp_path / "m.png")
    assert encode_mask(read_mask(tmp_path / "m.png"), [0, 10, 20], "m.png").tolist() == INDICES.tolist()


def test_colour_decode_writes_an_rgb_image(tmp_path):
    image = decode_mask(INDICES, [BLACK, GREEN, RED])
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), colour_mask([[BLACK, GREEN, RED], [RED, GREEN, BLACK]]))
    image.save(tmp_path / "m.png")
    assert encode_mask(read_mask(tmp_path / "m.png"), [BLACK, GREEN, RED], "m").tolist() == INDICES.tolist()


def test_values_above_255_decode_to_16_bit(tmp_path):
    image = decode_mask(INDICES, [0, 300, 1000])
    assert np.asarray(image).dtype == np.uint16
    assert np.asarray(image).tolist() == [[0, 300, 1000], [1000, 300, 0]]
    image.save(tmp_path / "m.png")
    assert encode_mask(read_mask(tmp_path / "m.png"), [0, 300, 1000], "m").tolist() == INDICES.tolist()


# --- check_classes ----------------------------------------------------------------------------------


def test_one_class_accepts_two_mask_values():
    check_classes([0, 255], 1)
    check_classes([0], 1)


def test_one_class_refuses_more_than_two_values():
    with pytest.raises(UserError, match="--classes 3"):
        check_classes([0, 10, 20], 1)


def test_too_few_classes_raise_user_error():
    with pytest.raises(UserError, match="--classes 3"):
        check_classes([0, 10, 20], 2)
    with pytest.raises(UserError, match="--classes 3"):
        check_classes([BLACK, GREEN, RED], 2)


def test_enough_classes_are_accepted():
    check_classes([0, 10, 20], 3)
    check_classes([0, 10, 20], 5)
    check_classes([BLACK, RED], 2)


@pytest.mark.parametrize(("mask_values", "n_classes", "completed"), [
    ([0, 1], 3, [0, 1, 2]),
    ([0, 255], 3, [0, 255, 1]),
    ([5, 0, 1], 5, [5, 0, 1, 2, 3]),  # unsorted values keep their classes
    ([0, 255], 1, [0, 255]),
    ([0], 1, [0, 1]),  # one sigmoid output still writes two values
    ([BLACK, RED], 3, [BLACK, RED, [0, 0, 255]]),
    ([0, 10, 20], 3, [0, 10, 20]),
    ([[0, 0, 0, 255], [255, 0, 0, 255]], 3, [[0, 0, 0, 255], [255, 0, 0, 255], [0, 0, 255, 255]]),  # RGBA
    ([[0, 0, 255, 0], [0, 0, 0, 255]], 3, [[0, 0, 255, 0], [0, 0, 0, 255], [0, 255, 0, 255]]),  # RGB already used
])
def test_complete_mask_values_gives_extra_classes_unused_values(mask_values, n_classes, completed):
    from utils.mask_encoding import complete_mask_values

    assert complete_mask_values(mask_values, n_classes) == completed


def test_complete_mask_values_never_gives_a_class_the_ignored_value():
    """Found by a review: with --ignore-index 0 (ADE20K's 'unlabelled'), an extra class was written as 0."""
    from utils.mask_encoding import complete_mask_values

    assert complete_mask_values([1, 2], 4, avoid=0) == [1, 2, 3, 4]
    assert complete_mask_values([0, 1], 3, avoid=255) == [0, 1, 2]


def test_complete_mask_values_finds_unused_colours_for_many_classes():
    from utils.mask_encoding import complete_mask_values

    colours = complete_mask_values([BLACK, RED], 300)
    assert len(colours) == 300 and len({tuple(c) for c in colours}) == 300
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)


@pytest.mark.parametrize("mask_values, palette", [
    ([0, 1], None), ([0, 255], None), ([0, 3, 7, 200], None), ([0, 1000, 40000], None),
    ([BLACK, RED, GREEN], None), ([0, 1, 2], [0, 0, 0, 128, 0, 0, 0, 128, 0]),
    ([0, 1, 2, 3, 4, 5], [0, 0, 0, 255, 0, 0]),  # found by a review: a 2-entry palette cut classes 2-5 to 0 and 1
])
def test_mask_writer_files_hold_exactly_the_encoded_masks(tmp_path, mask_values, palette):
    """The writer's PNG settings (run-length zlib) change the file, never a pixel."""
    from PIL import Image

    from utils.mask_encoding import encoding_table
    from utils.mask_writer import MaskWriter, OutputOptions

    rng = np.random.default_rng(0)
    classes = np.repeat(rng.integers(0, len(mask_values), (40, 1)), 57, axis=1)  # runs, as in real masks
    classes[::7, ::5] = rng.integers(0, len(mask_values), classes[::7, ::5].shape)
    encoded = encoding_table(mask_values)[classes]
    writer = MaskWriter(mask_values, palette, 3, OutputOptions(), threads=2)
    writer.submit(0, tmp_path / "in.jpg", tmp_path / "out.png", encoded, [0.5, 0.5])
    writer.close()
    with Image.open(tmp_path / "out.png") as written:
        assert np.array_equal(np.asarray(written), encoded)
        assert (written.mode == "P") == (palette is not None)


def test_the_palette_written_holds_256_entries_and_a_colour_of_its_own_for_each_class() -> None:
    """Found by a review: with the 4 classes' palette padded with black, an extra class 4 was written black, as the
    background shows; a short palette made Pillow write 1-bit PNGs."""
    from utils.mask_encoding import full_palette

    palette = full_palette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756, [0, 1, 2, 3, 4])
    assert len(palette) == 768
    colours = [tuple(palette[3 * i: 3 * i + 3]) for i in range(5)]
    assert colours[:4] == [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]  # the masks' own, kept
    assert len(set(colours)) == 5  # class 4: a colour no other class shows
    short = full_palette([0, 0, 0, 255, 0, 0], [0, 1, 2])
    assert len(short) == 768 and len({tuple(short[3 * i: 3 * i + 3]) for i in range(3)}) == 3


def test_a_binary_mask_saved_the_other_common_way_reads_as_the_same_object() -> None:
    """Found by reviews: 0/1 masks scored against a 0/255 model were told to 'train with it included', later to
    save them again; and evaluate.py refused the 0/255 masks predict.py writes for a 0/1 model (a reference
    checkpoint without mask_values is taken as 0/1)."""
    ones, full = np.array([[0, 1, 1]], np.uint8), np.array([[0, 255, 255]], np.uint8)
    for mask in (ones, full):
        for values in ([0, 1], [0, 255], [255, 0]):
            expected = [0, 1, 1] if values[0] == 0 else [1, 0, 0]
            assert encode_mask(mask, values, "m.png", either_binary=True).tolist() == [expected]
    assert encode_mask(np.array([[255, 255]], np.uint8), [0, 1], "m.png", either_binary=True).tolist() == [[1, 1]]
    assert encode_mask(full, [0, 1], "m.png", ignore_value=255, either_binary=True).tolist() == \
        [[0, IGNORE_CLASS, IGNORE_CLASS]]
    with pytest.raises(UserError, match="has the value 255"):  # only where asked: training reads its own values
        encode_mask(full, [0, 1], "m.png")
    with pytest.raises(UserError, match=r"m.png has the value 255, which is not among the mask values \[0, 1\] the "
                                        "model knows: fix the mask or train with it included"):
        encode_mask(np.array([[0, 1, 255]], np.uint8), [0, 1], "m.png", either_binary=True)  # both: no one encoding
    with pytest.raises(UserError, match="fix the mask or train with it included"):
        encode_mask(np.array([[0, 1, 2]], np.uint8), [0, 1], "n.png")  # a value of a class it never saw
    with pytest.raises(UserError, match=r"n.JPG has the value 2, which is not among the mask values \[0, 1\] the model "
                                        r"knows: it is a JPEG file, whose lossy compression makes up values along "
                                        r"edges: save the masks as PNG \(lossless\)$"):
        encode_mask(np.array([[0, 1, 2]], np.uint8), [0, 1], "n.JPG")  # found by a review: JPEG ground truth
    with pytest.raises(UserError, match=r"n.webp has the value 2, .*: if it was saved as lossy WebP \(Pillow's "):
        encode_mask(np.array([[0, 1, 2]], np.uint8), [0, 1], "n.webp")
