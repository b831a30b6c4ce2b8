"""Validation batches decoded once and kept in memory, so later epochs validate without touching the disk."""

from collections.abc import Iterable, Iterator

import torch

from .inference import available_ram

MAX_CACHE_BYTES = 2 * 2**30  # and at most an eighth of the RAM available when the cache fills


def compact_mask(mask: torch.Tensor) -> torch.Tensor:
    """Class indices (and the ignore value -1) in the smallest signed type that holds them: int8 below 128
    classes, an eighth of the int64 the loader gives."""
    if mask.numel() == 0:
        return mask.to(torch.int8)
    top = int(mask.max())
    dtype = torch.int8 if top < 2**7 else torch.int16 if top < 2**15 else torch.int32
    return mask.to(dtype)


class ValidationCache:
    """Iterates like the validation loader; the first full pass is kept when it fits a memory budget.

    Masks are kept compact (compact_mask) and come back in that type: consumers call .long() on the device.
    When the pass outgrows the budget the copies are dropped and every epoch reads the loader again, as
    without the cache. pin: keep the copies in page-locked memory, for fast non-blocking copies to a GPU.
    """

    def __init__(self, loader: Iterable[dict], pin: bool = False, budget: int | None = None):
        self.loader, self.pin = loader, pin
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
                copy = {**batch, "mask": compact_mask(batch["mask"])}
                if self.pin:
                    copy["mask"] = copy["mask"].pin_memory()
                size += copy["image"].nbytes + copy["mask"].nbytes
                if size <= self.budget:
                    kept.append(copy)
                else:
                    kept = None  # too large to keep: read from the loader every epoch
            yield batch
        self.kept = kept
