"""Validation batches decoded once and kept in memory, so later epochs validate without touching the disk."""

from collections.abc import Iterable, Iterator

import torch

from .inference import available_ram

MAX_CACHE_BYTES = 2 * 2**30  # and at most an eighth of the RAM available when the cache fills


def pinned(value: object) -> object:
    return value.pin_memory() if isinstance(value, torch.Tensor) and not value.is_pinned() else value


class ValidationCache:
    """Iterates like the validation loader; the first full pass is kept when it fits a memory budget.

    The batches are kept as the loader gives them (uint8 images, int8 masks: utils.data_loading.class_index_dtype).
    When the pass outgrows the budget the batches are dropped and every epoch reads the loader again, as
    without the cache. pin: keep the batches in page-locked memory, for fast non-blocking copies to a GPU.
    """

    def __init__(self, loader: Iterable[dict], pin: bool = False, budget: int | None = None):
        self.loader: Iterable[dict] | None = loader
        self.pin = pin
        self.budget = budget if budget is not None else min(MAX_CACHE_BYTES, available_ram() // 8)
        self.kept: list[dict] | None = None

    def __len__(self) -> int:
        """Batches per pass, for progress bars."""
        return len(self.kept) if self.kept is not None else len(self.loader)  # type: ignore[arg-type]

    @property
    def cached(self) -> bool:
        return self.kept is not None

    def __iter__(self) -> Iterator[dict]:
        if self.kept is not None:
            yield from self.kept
            return
        kept: list[dict] | None = []
        size = 0
        for batch in self.loader:
            if kept is not None:
                if self.pin:  # a loader with pin_memory has done it already
                    batch = {key: pinned(value) for key, value in batch.items()}
                size += batch["image"].nbytes + batch["mask"].nbytes
                if size <= self.budget:
                    kept.append(batch)
                else:
                    kept = None  # too large to keep: read from the loader every epoch
            yield batch
        self.kept = kept
        if kept is not None:
            self.loader = None  # not read again: a DataLoader's persistent workers shut down with it
