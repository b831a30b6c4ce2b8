"""The training order (utils/sampling.py): resumable epochs, DistributedSampler's dealing, batches by image size."""

import itertools

import pytest
from torch.utils.data import DistributedSampler

from utils.distributed import World
from utils.sampling import EpochBatches, EpochOrder, batches_by_size, same_size_batches


def flat(batches: list[list]) -> list:
    return [item for batch in batches for item in batch]


def test_a_resumed_epoch_sees_the_same_items_and_seeds_as_the_rest_of_the_uninterrupted_one() -> None:
    order = EpochOrder(10, 3, seed=7, world=World())
    batches = order.batches(2)
    assert sorted(index for index, _ in flat(batches)) == list(range(10))
    assert [len(batch) for batch in batches] == [3, 3, 3, 1] and order.batches_per_epoch == 4
    resumed = EpochBatches(EpochOrder(10, 3, seed=7, world=World()), first_epoch=2, last_epoch=2, skip_batches=2)
    assert list(resumed) == batches[2:] and resumed.items_skipped_in(2) == 6
    assert order.batches(3) != batches  # a new shuffle and new seeds each epoch
    seeds = {epoch: {seed for _, seed in flat(order.batches(epoch))} for epoch in (2, 3)}
    assert len(seeds[2]) == len(seeds[3]) == 10 and not seeds[2] & seeds[3]
    dealt = [EpochOrder(10, 3, seed=7, world=World(rank=r, size=2)).batches(2) for r in range(2)]
    assert sorted(index for part in dealt for index, _ in flat(part)) == list(range(10))  # each once: 10 = 2 x 5
    # the processes' items are augmented each with a seed of its own, also at the same place in their shares
    assert not {seed for _, seed in flat(dealt[0])} & {seed for _, seed in flat(dealt[1])}


def test_the_stream_of_all_epochs_is_each_epoch_s_batches_in_turn() -> None:
    order = EpochOrder(10, 3, seed=7, world=World())
    # resumed in epoch 2 after 2 batches, training to epoch 4: 2 + 4 + 4 batches, the short last ones kept
    plan = EpochBatches(order, first_epoch=2, last_epoch=4, skip_batches=2)
    expected = order.batches(2)[2:] + order.batches(3) + order.batches(4)
    assert list(plan) == expected and len(plan) == len(expected) == 10
    assert [plan.batches_in(epoch) for epoch in range(1, 6)] == [0, 2, 4, 4, 0]
    assert [plan.skipped_in(epoch) for epoch in range(2, 5)] == [2, 0, 0]
    assert [len(batch) for batch in expected] == [3, 1, 3, 3, 3, 1, 3, 3, 3, 1]  # no batch spans two epochs
    assert list(EpochBatches(order, 5, 4)) == []  # nothing left to train


@pytest.mark.parametrize(("size", "processes", "batch_size"),
                         list(itertools.product([1, 5, 10, 17], [1, 2, 3], [1, 4])))
def test_one_image_size_is_dealt_exactly_as_distributed_sampler_deals_it(
        size: int, processes: int, batch_size: int) -> None:
    """Runs saved before batching by size resume in the middle of an epoch on the same batches."""
    for rank in range(processes):
        sampler = DistributedSampler(range(size), num_replicas=processes, rank=rank, shuffle=True, seed=7)
        sampler.set_epoch(3)
        expected = list(sampler)
        for sizes in (None, [(64, 48)] * size):
            batches = EpochOrder(size, batch_size, seed=7, world=World(rank=rank, size=processes),
                                 sizes=sizes).batches(3)
            assert [index for index, _ in flat(batches)] == expected
            assert [len(batch) for batch in batches[:-1]] == [batch_size] * (len(batches) - 1)


SIZES = [(64, 48)] * 11 + [(48, 64)] * 6 + [(32, 32)] * 2 + [(96, 96)]  # shuffled below by index
MIXED = [SIZES[(index * 7) % len(SIZES)] for index in range(len(SIZES))]


@pytest.mark.parametrize(("processes", "batch_size"), [(1, 4), (1, 3), (2, 2), (3, 2)])
def test_several_sizes_come_in_batches_of_one_size_but_for_the_leftovers(processes: int, batch_size: int) -> None:
    orders = [EpochOrder(len(MIXED), batch_size, seed=1, world=World(rank=rank, size=processes), sizes=MIXED)
              for rank in range(processes)]
    order = orders[0]
    width = batch_size * processes
    leftovers = sum(count % width for count in (11, 6, 2, 1))
    assert order.shared_batches == -(-leftovers // width)
    assert order.batches_per_epoch == order.one_size_batches + order.shared_batches
    assert order.one_size_batches == sum(count // width for count in (11, 6, 2, 1))
    for epoch in (1, 2):
        dealt = [rank_order.batches(epoch) for rank_order in orders]
        assert all(len(batches) == order.batches_per_epoch for batches in dealt)  # every process steps together
        indices = [index for batches in dealt for index, _ in flat(batches)]
        assert sorted(set(indices)) == list(range(len(MIXED))) and len(indices) - len(MIXED) < processes
        mixed = [batch for batch in order.global_batches(epoch) if len({MIXED[index] for index in batch}) > 1]
        assert len(mixed) <= order.shared_batches
        assert all(len(batch) % processes == 0 for batch in order.global_batches(epoch))
    assert order.global_batches(1) == order.global_batches(1) and order.global_batches(1) != order.global_batches(2)
    if processes == 1:
        assert order.global_batches(1) != sorted(order.global_batches(1), key=lambda batch: MIXED[batch[0]])
    if order.one_size_batches and order.shared_batches:  # the leftovers do not always come last
        def one_size(batch: list[int]) -> bool:  # leftovers of a size are fewer than a batch
            return len(batch) == width and len({MIXED[index] for index in batch}) == 1
        assert any(one_size(order.global_batches(epoch)[-1]) for epoch in range(1, 11))


def test_a_resumed_epoch_of_several_sizes_goes_on_with_the_same_batches_and_seeds() -> None:
    order = EpochOrder(len(MIXED), 4, seed=1, world=World(), sizes=MIXED)
    batches = order.batches(2)
    plan = EpochBatches(EpochOrder(len(MIXED), 4, seed=1, world=World(), sizes=MIXED), 2, 3, skip_batches=3)
    assert list(plan) == batches[3:] + order.batches(3)
    assert plan.items_skipped_in(2) == sum(len(batch) for batch in batches[:3])


def test_batches_by_size_keeps_the_order_and_leaves_the_rest_over() -> None:
    items = list("abcdefgh")
    sizes = [1, 2, 1, 1, 2, 3, 1, 2]
    assert batches_by_size(items, sizes, 2) == ([["a", "c"], ["b", "e"], ["d", "g"]], ["f", "h"])
    assert same_size_batches(items, sizes, 2) == [["a", "c"], ["b", "e"], ["d", "g"], ["f", "h"]]
    assert same_size_batches(items, sizes, 3) == [["a", "c", "d"], ["b", "e", "h"], ["f", "g"]]
    assert same_size_batches(items, [0] * 8, 3) == [["a", "b", "c"], ["d", "e", "f"], ["g", "h"]]


@pytest.mark.parametrize(("size", "processes", "batch_size", "sizes"), [
    (5, 1, 4, None), (9, 2, 2, None), (7, 3, 2, None), (8, 1, 4, None), (len(MIXED), 1, 3, MIXED),
    (len(MIXED), 2, 2, MIXED), (5, 1, 2, [(64, 64)] * 4 + [(24, 24)])])
def test_no_lone_images_puts_a_last_batch_of_one_image_per_process_into_the_batch_before_it(
        size: int, processes: int, batch_size: int, sizes: list | None) -> None:
    """Found by a review: a last batch of one image under 32 px a side (a 1x1 deepest map) crashed BatchNorm; then,
    left out instead, the one image of its size (always the leftover) never trained."""
    plain = EpochOrder(size, batch_size, seed=3, world=World(size=processes), sizes=sizes)
    orders = [EpochOrder(size, batch_size, seed=3, world=World(rank=rank, size=processes), sizes=sizes,
                         no_lone_images=True) for rank in range(processes)]
    for epoch in (1, 2, 3):
        dealt = [order.batches(epoch) for order in orders]
        assert all(len(batches) == orders[0].batches_per_epoch for batches in dealt)
        assert all(len(batch) >= 2 for batches in dealt for batch in batches)
        assert all(len(batch) <= batch_size + 1 for batches in dealt for batch in batches)
        assert {index for batches in dealt for index, _ in flat(batches)} == set(range(size))  # every image trains
        if sizes is None:
            lone = len(plain.global_batches(epoch)[-1]) <= processes
            assert orders[0].batches_per_epoch == plain.batches_per_epoch - lone
    if size % (batch_size * processes) == 0:
        assert orders[0].global_batches(1) == plain.global_batches(1)  # nothing lone: the same batches
