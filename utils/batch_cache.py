"""Batches read again every epoch (validation, BatchNorm calibration) decoded once and kept in memory, so later
epochs do not touch the disk for them."""

from collections.abc import Iterable, Iterator

from .inference import available_ram

MAX_CACHE_BYTES = 2 * 2**30  # and at most an eighth of the RAM available when the cache fills


class BatchCache:
    """Iterates like its loader; the first full pass is kept when it fits a memory budget (each cache its own).

    The batches are kept as the loader gives them (uint8 images, int8 masks: utils.data_loading.class_index_dtype;
    in page-locked memory where the loader pins them, as make_loader does for CUDA). When the pass outgrows the
    budget the batches are dropped and every epoch reads the loader again, as without the cache.
    """

    def __init__(self, loader: Iterable[dict], budget: int | None = None):
        self.loader: Iterable[dict] | None = loader
        self.dataset = getattr(loader, "dataset", None)  # for progress bars' totals, also once the loader is gone
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
                size += sum(batch[key].nbytes for key in ("image", "mask") if key in batch)  # none: all skipped
                if size <= self.budget:
                    kept.append(batch)
                else:
                    kept = None  # too large to keep: read from the loader every epoch
            yield batch
        self.kept = kept
        if kept is not None:
            self.loader = None  # not read again: a DataLoader's persistent workers shut down with it
