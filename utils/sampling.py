"""The training data order: one shuffle per epoch dealt to the processes, resumable in the middle of an epoch.

Augmentation draws its randomness from a seed tied to the item's place in the epoch, not from whichever
loader worker happens to read it. So a run stopped after k batches and resumed (the first k batches skipped)
sees exactly the images, crops and flips the uninterrupted run saw, whatever the number of workers.

Images of several sizes are batched by size. A batch of mixed sizes is padded to its largest image, which costs
compute (a 256x256 image padded to 1024x1024 is 16 times the work) and puts the padding's zeros into the
BatchNorm statistics; so only the images of sizes too rare to fill a batch share padded batches.
"""

import math
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .distributed import World

T = TypeVar("T")


def item_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """A well-mixed 63-bit seed per (run seed, epoch, process, place in the epoch)."""
    words = [seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, epoch, rank, position]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def batches_by_size(items: Sequence[T], sizes: Sequence[Hashable], batch_size: int) -> tuple[list[list[T]], list[T]]:
    """The full batches of one size each (in the order of their first item, each keeping the items' order) and
    the items left over, in their order: the last len % batch_size of each size."""
    by_size: dict[Hashable, list[int]] = {}
    for position, size in enumerate(sizes):
        by_size.setdefault(size, []).append(position)
    full: list[list[int]] = []
    leftover: list[int] = []
    for positions in by_size.values():
        cut = len(positions) - len(positions) % batch_size
        full += [positions[start:start + batch_size] for start in range(0, cut, batch_size)]
        leftover += positions[cut:]
    full.sort(key=lambda batch: batch[0])
    return [[items[p] for p in batch] for batch in full], [items[p] for p in sorted(leftover)]


def same_size_batches(items: Sequence[T], sizes: Sequence[Hashable], batch_size: int) -> list[list[T]]:
    """Batches of one size each where the sizes allow, in order, then the leftovers batch_size at a time: for
    passes whose order does not matter (validation, BatchNorm calibration)."""
    full, leftover = batches_by_size(items, sizes, batch_size)
    return full + [leftover[start:start + batch_size] for start in range(0, len(leftover), batch_size)]


class EpochOrder:
    """This process's batches of an epoch: lists of (index, augmentation seed).

    The shuffle is DistributedSampler's (a permutation seeded by seed + epoch, padded to a multiple of the
    processes with its first items) cut into global batches of batch_size x processes, each dealt round-robin,
    so the processes' batches together are the batch a single process with world.size times the batch size
    takes. With one image size (or `sizes` not given) this is exactly DistributedSampler's order. With several,
    each global batch holds one size, but for those of the images left over (batches_by_size), and the global
    batches are shuffled.
    """

    def __init__(self, size: int, batch_size: int, seed: int, world: World,
                 sizes: Sequence[Hashable] | None = None, no_lone_images: bool = False):
        self.size, self.batch_size, self.seed, self.world = size, batch_size, seed, world
        self.sizes = list(sizes) if sizes is not None and len(set(sizes)) > 1 else None
        # A last batch of one image per process joins the batch before it (one step of a batch one image larger):
        # train.py asks for it where such a batch could not train (BatchNorm of a 1x1 deepest map).
        self.no_lone_images = no_lone_images

    @property
    def items_per_epoch(self) -> int:
        """This process's items per epoch (the same in every process: the padding evens them out)."""
        return math.ceil(self.size / self.world.size)

    @property
    def batches_per_epoch(self) -> int:
        batches = self.one_size_batches + self.shared_batches
        width = self.batch_size * self.world.size
        rest = self.size if self.sizes is None else sum(n % width for n in self._counts())
        return batches - self._merges_last(batches, rest % width)

    @property
    def one_size_batches(self) -> int:
        """Global batches per epoch that hold one size (all of them with one size), before _merges_last."""
        width = self.batch_size * self.world.size
        return sum(n // width for n in self._counts()) if self.sizes is not None else math.ceil(self.size / width)

    @property
    def shared_batches(self) -> int:
        """Global batches per epoch holding the images left over from the one-size batches: these may mix sizes."""
        width = self.batch_size * self.world.size
        return math.ceil(sum(n % width for n in self._counts()) / width) if self.sizes is not None else 0

    def _merges_last(self, batches: int, last: int) -> bool:
        """Whether the epoch's last global batch, `last` items long (0: a whole one), joins the one before it."""
        return self.no_lone_images and self.batch_size > 1 and batches > 1 and 0 < last <= self.world.size

    def _counts(self) -> list[int]:
        return list(Counter(self.sizes).values()) if self.sizes is not None else [self.size]

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches of indices, each a multiple of world.size long."""
        if self.size == 0:
            return []
        generator = torch.Generator().manual_seed(self.seed + epoch)
        shuffle = torch.randperm(self.size, generator=generator).tolist()
        width, processes = self.batch_size * self.world.size, self.world.size
        sizes = [self.sizes[index] for index in shuffle] if self.sizes is not None else [0] * self.size
        full, leftover = batches_by_size(shuffle, sizes, width)
        batches = full + [leftover[start:start + width] for start in range(0, len(leftover), width)]
        if self._merges_last(len(batches), len(batches[-1]) % width):
            last = batches.pop()
            batches[-1] += last  # of mixed sizes if need be: padded, as the leftovers are
        padding = -len(batches[-1]) % processes  # only the last can be short of a multiple
        batches[-1] += (shuffle * math.ceil(padding / self.size))[:padding]
        if self.sizes is not None:  # else all the global batches of one size would come in turn
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This process's share of each global batch, with each item's augmentation seed."""
        rank, processes = self.world.rank, self.world.size
        shares = [batch[rank::processes] for batch in self.global_batches(epoch)]
        seeds = iter(range(self.items_per_epoch))
        return [[(index, item_seed(self.seed, epoch, rank, next(seeds))) for index in share] for share in shares]


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

    def items_skipped_in(self, epoch: int) -> int:
        """This process's items in the batches left out."""
        skip = self.skipped_in(epoch)
        return sum(len(batch) for batch in self.order.batches(epoch)[:skip]) if skip else 0

    def batches_in(self, epoch: int) -> int:
        """How many batches the stream holds for this epoch."""
        if not self.first_epoch <= epoch <= self.last_epoch:
            return 0
        return max(0, self.order.batches_per_epoch - self.skipped_in(epoch))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.first_epoch, self.last_epoch + 1):
            yield from self.order.batches(epoch)[self.skipped_in(epoch):]

    def __len__(self) -> int:
        return sum(self.batches_in(epoch) for epoch in range(self.first_epoch, self.last_epoch + 1))


class RepeatedItems(Dataset):
    """Every item `times` times over: item i is dataset[i % len(dataset)], so one epoch's shuffle takes each image
    `times` times, each with its own augmentation seed (train.py --crops-per-image: that many windows)."""

    def __init__(self, dataset: Dataset, times: int):
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        return self.dataset[index % len(self.dataset)]  # type: ignore[arg-type]


class SeededItems(Dataset):
    """dataset[index] drawn with torch's CPU random generator seeded for the item (the key is (index, seed)).

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
            # the CPU generator alone, which fork_rng restores: torch.manual_seed also queues the seeding of
            # every accelerator's, at 0.44 ms an item against 0.015 (found by a profiling review)
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]
