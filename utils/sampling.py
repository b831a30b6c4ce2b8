"""The training data order: one shuffle per epoch dealt to the processes, resumable in the middle of an epoch.

Augmentation draws its randomness from a seed tied to the item's place in the epoch, not from whichever
loader worker happens to read it. So a run stopped after k batches and resumed (the first k batches skipped)
sees exactly the images, crops and flips the uninterrupted run saw, whatever the number of workers.
"""

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from .distributed import World


def item_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """A well-mixed 63-bit seed per (run seed, epoch, process, place in the epoch)."""
    words = [seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, epoch, rank, position]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


class EpochOrder(Sampler[tuple[int, int]]):
    """(index, augmentation seed) pairs of one process's share of an epoch, from skip_batches on.

    The shuffle is DistributedSampler's (seeded by seed and epoch, dealt round-robin to the processes), so the
    processes' batches together are the batch a single process with world.size times the batch size takes.
    """

    def __init__(self, size: int, batch_size: int, seed: int, world: World):
        self.order = DistributedSampler(range(size), num_replicas=world.size, rank=world.rank, shuffle=True,
                                        seed=seed)
        self.batch_size, self.seed, self.rank = batch_size, seed, world.rank
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches * self.batch_size
        self.order.set_epoch(epoch)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.order):
            if position >= self.skip:
                yield index, item_seed(self.seed, self.epoch, self.rank, position)

    def __len__(self) -> int:
        return max(0, len(self.order) - self.skip)


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """The batches of every epoch from first_epoch (its first skip_batches left out) to last_epoch, in one stream.

    Training reads all epochs through one loader iterator, so the workers decode the next epoch's first
    batches while validation and the checkpoint run, instead of starting cold after them. An epoch's batches
    never mix with the next's: its last batch may be short, as with one loader pass per epoch.
    """

    def __init__(self, order: EpochOrder, first_epoch: int, last_epoch: int, skip_batches: int = 0):
        self.order, self.first_epoch, self.last_epoch, self.skip = order, first_epoch, last_epoch, skip_batches

    def skipped_in(self, epoch: int) -> int:
        """Batches of this epoch left out: those the resumed run had already trained."""
        return self.skip if epoch == self.first_epoch else 0

    def batches_in(self, epoch: int) -> int:
        """How many batches the stream holds for this epoch."""
        if not self.first_epoch <= epoch <= self.last_epoch:
            return 0
        return max(0, self.order.batches_per_epoch - self.skipped_in(epoch))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        size = self.order.batch_size
        for epoch in range(self.first_epoch, self.last_epoch + 1):
            self.order.set_epoch(epoch, self.skipped_in(epoch))
            items = list(self.order)
            for start in range(0, len(items), size):
                yield items[start:start + size]

    def __len__(self) -> int:
        return sum(self.batches_in(epoch) for epoch in range(self.first_epoch, self.last_epoch + 1))


class SeededItems(Dataset):
    """dataset[index] drawn with torch's random generator seeded for the item (the key is (index, seed)).

    The generator's state is restored afterwards, so reading items in the training process (no workers)
    leaves the training's own randomness untouched.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
