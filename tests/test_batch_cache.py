"""utils/batch_cache.py: batches decoded once when they fit, read again when they don't."""

import torch

from utils.batch_cache import BatchCache


class CountingLoader:
    """A loader stand-in that counts its passes."""

    def __init__(self, batches: list[dict]):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        yield from self.batches

    def __len__(self) -> int:
        return len(self.batches)


def batches(classes: int = 3) -> list[dict]:
    torch.manual_seed(0)
    return [{"image": torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8),
             "mask": torch.randint(-1, classes, (2, 8, 8), dtype=torch.int8), "name": [f"{k}a", f"{k}b"], "skipped": []}
            for k in range(3)]


def test_a_pass_that_fits_is_kept_and_replayed_without_the_loader() -> None:
    loader = CountingLoader(batches())
    cache = BatchCache(loader, budget=2**20)
    first = list(cache)
    assert loader.passes == 1 and cache.cached and len(cache) == 3
    again = list(cache)
    assert loader.passes == 1  # the second epoch never touched the loader
    for read, kept in zip(first, again):
        assert torch.equal(read["image"], kept["image"]) and read["name"] == kept["name"]
        assert torch.equal(kept["mask"], read["mask"]) and kept["mask"].dtype == torch.int8


def test_a_pass_too_large_for_the_budget_is_read_every_time() -> None:
    loader = CountingLoader(batches())
    one_batch = 2 * 3 * 8 * 8 + 2 * 8 * 8  # uint8 images + int8 masks
    cache = BatchCache(loader, budget=2 * one_batch)
    assert [b["name"] for b in cache] == [b["name"] for b in batches()]
    assert not cache.cached
    list(cache)
    assert loader.passes == 2
    images_only = 3 * 2 * 3 * 8 * 8  # the masks count too: a budget the images alone fit is too small
    too_small, exact = BatchCache(batches(), budget=images_only + 1), BatchCache(batches(), budget=3 * one_batch)
    list(too_small), list(exact)
    assert not too_small.cached and exact.cached


def test_an_interrupted_pass_is_not_kept() -> None:
    loader = CountingLoader(batches())
    cache = BatchCache(loader, budget=2**20)
    next(iter(cache))
    assert not cache.cached
    assert len(list(cache)) == 3 and cache.cached


def test_a_kept_pass_lets_the_loader_and_its_workers_go() -> None:
    import weakref

    loader = CountingLoader(batches())
    alive = weakref.ref(loader)
    cache = BatchCache(loader, budget=2**20)
    del loader
    list(cache)
    assert alive() is None and len(cache) == 3 and len(list(cache)) == 3


def test_a_batch_whose_files_all_failed_passes_through_and_is_kept() -> None:
    """Validation reads with skip_unreadable: a batch of broken files carries only the reasons (a KeyError
    'image' stopped training there)."""
    batches = [{"image": torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "mask": torch.zeros(1, 4, 4, dtype=torch.int8),
                "skipped": []}, {"skipped": ["cannot read b.png"]}]
    cache = BatchCache(batches, budget=10**6)
    assert [sorted(batch) for batch in cache] == [["image", "mask", "skipped"], ["skipped"]]
    assert cache.cached and [batch["skipped"] for batch in cache] == [[], ["cannot read b.png"]]
