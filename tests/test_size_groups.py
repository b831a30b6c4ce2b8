"""Images of one size gathered across loader batches (utils/size_groups.py): full batches of mixed folders, each
image's rows kept together, and the memory it may hold bounded."""

import torch

from utils.size_groups import HELD_BATCHES, regrouped


def part(indices: list[int], height: int, width: int = 8) -> dict:
    """A loader part: each image filled with its index, so rows can be followed through the regrouping."""
    images = torch.stack([torch.full((3, height, width), index, dtype=torch.uint8) for index in indices])
    return {"indices": list(indices), "images": images, "size": (2 * height, 2 * width)}


def follows_its_rows(group: dict) -> bool:
    height, width = group["size"]
    return group["images"][:, 0, 0, 0].tolist() == group["indices"] and \
        tuple(group["images"].shape[2:]) == (height // 2, width // 2)


def test_parts_of_one_size_from_several_batches_fill_whole_batches() -> None:
    parts = [part([0, 2], 4), part([1, 3], 6), part([4, 6], 4), part([5, 7], 6), part([8], 4)]
    groups = list(regrouped(parts, 4))
    assert [group["indices"] for group in groups] == [[0, 2, 4, 6], [1, 3, 5, 7], [8]]
    assert all(follows_its_rows(group) for group in groups)
    assert [group["size"] for group in groups] == [(8, 16), (12, 16), (8, 16)]


def test_full_parts_go_through_as_they_came_while_a_short_one_waits() -> None:
    first = part([0, 1, 2], 4)  # a batch with an unreadable file: three of four
    full = part([3, 4, 5, 6], 4)
    groups = list(regrouped([first, full, part([7], 4)], 4))
    assert groups[0] is full  # not copied, and not held back behind the short one
    assert [group["indices"] for group in groups] == [[3, 4, 5, 6], [0, 1, 2, 7]]
    assert all(follows_its_rows(group) for group in groups)


def test_a_part_that_overfills_its_batch_leaves_the_rest_waiting() -> None:
    groups = list(regrouped([part([0, 1, 2], 4), part([3, 4, 5], 4), part([6, 7], 4)], 4))
    assert [group["indices"] for group in groups] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(follows_its_rows(group) for group in groups)


def test_waiting_rows_are_bounded_by_giving_out_the_largest_group() -> None:
    batch_size = 4
    count = 3 * HELD_BATCHES * batch_size
    read: list[int] = []

    def parts():  # every image a size of its own: none ever fills a batch
        for index in range(count):
            read.append(index)
            yield part([index], 4 + index)

    given: list[int] = []
    for group in regrouped(parts(), batch_size):
        given += group["indices"]
        assert len(read) - len(given) <= HELD_BATCHES * batch_size
        assert len(read) == count or len(read) - len(given) == HELD_BATCHES * batch_size  # not given out sooner
    assert sorted(given) == list(range(count))


def test_held_rows_own_their_memory() -> None:
    """A waiting view of a loader batch would keep all of it alive, up to HELD_BATCHES * batch_size batches."""
    batch = part([0, 1, 2, 3], 4)
    view = {"indices": [0], "images": batch["images"][:1], "size": batch["size"]}
    group = next(iter(regrouped([view], 4)))
    assert group["images"].untyped_storage().nbytes() == group["images"].nbytes
    assert group["images"].untyped_storage().data_ptr() != batch["images"].untyped_storage().data_ptr()


def test_other_fields_and_masks_travel_with_their_rows() -> None:
    """evaluate.py's parts: image, mask, name."""
    def scored(names: list[str], height: int) -> dict:
        codes = [int(name[1:]) for name in names]
        return {"image": torch.tensor(codes).view(-1, 1, 1, 1).expand(-1, 3, height, 5).clone(),
                "mask": torch.tensor(codes).view(-1, 1, 1).expand(-1, 2 * height, 10).clone(), "name": names}

    groups = list(regrouped([scored(["n0"], 3), scored(["n1"], 4), scored(["n2", "n3"], 3), scored(["n4"], 4)], 3))
    assert [group["name"] for group in groups] == [["n0", "n2", "n3"], ["n1", "n4"]]
    for group in groups:
        codes = [int(name[1:]) for name in group["name"]]
        assert group["image"][:, 0, 0, 0].tolist() == codes and group["mask"][:, 0, 0].tolist() == codes


def test_a_short_whole_batch_joins_the_runs_cut_from_padded_ones_and_dtypes_stay_apart(tmp_path) -> None:
    """Found by a code review: a loader batch of one size (3 readable of 4) kept its "skipped" key and never met
    the parts cut from padded batches; and parts of another dtype must not be joined."""
    from conftest import disc_mask, random_rgb, write_image

    from utils.data_loading import SegmentationDataset, collate_skipping, list_pairs, same_size_parts

    for index, (height, width) in enumerate([(32, 48)] * 4 + [(40, 32), (32, 48)]):
        write_image(tmp_path / "imgs" / f"i{index}.png", random_rgb(index, height, width))
        write_image(tmp_path / "masks" / f"i{index}.png", disc_mask(height, width))
    dataset = SegmentationDataset(list_pairs(tmp_path / "imgs", tmp_path / "masks"), [0, 1], scale=1.0,
                                  scale_masks=False, skip_unreadable=True)
    (tmp_path / "imgs" / "i3.png").write_bytes(b"broken")  # after the listing: skipped when read
    first = collate_skipping([dataset[index] for index in range(4)])
    second = collate_skipping([dataset[index] for index in (4, 5)])
    assert first["skipped"] and "sizes" in second
    parts = [part for batch in (first, second) for part in same_size_parts(batch)]
    assert [group["name"] for group in regrouped(parts, 4)] == [["i0", "i1", "i2", "i5"], ["i4"]]

    as_float = part([1], 4)
    as_float["images"] = as_float["images"].float()
    groups = list(regrouped([part([0], 4), as_float], 2))
    assert [(group["indices"], group["images"].dtype) for group in groups] == [([0], torch.uint8), ([1], torch.float32)]


def test_the_rows_left_over_from_a_join_hold_no_more_memory_than_themselves() -> None:
    """Found by a code review: the rows a join left over waited as a view of the whole joined copy, so with many
    sizes the memory held was up to batch_size + 1 times the rows counted."""
    def parts():
        for k in range(8):  # at most 10 rows wait: under the limit of 16
            yield part([2 * k, 2 * k], 8 + k)  # two rows, then three: a batch of 4 and one row over
            yield part([2 * k + 1] * 3, 8 + k)

    groups = regrouped(parts(), 4)
    for _ in range(8):
        assert len(next(groups)["indices"]) == 4
    held = groups.gi_frame.f_locals["held"]
    assert sum(len(group) for group in held.values()) == 7  # one row of each size (the last one's is put
    # aside once its batch is taken)
    for group in held.values():
        (waiting,) = group
        assert waiting["images"].untyped_storage().nbytes() == waiting["images"].nbytes
    assert [len(group["indices"]) for group in groups] == [1] * 8
