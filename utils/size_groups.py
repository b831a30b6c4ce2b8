"""Images of one size gathered across loader batches into full batches: a folder of tiles of a few sizes in any
order is predicted (and scored) batch_size images at a time, not in the few images of each size that one loader
batch happens to hold (measured: 89 images/s where one size alone ran at 190, bench/README.md)."""

from collections.abc import Iterable, Iterator

import torch

HELD_BATCHES = 4  # images held back waiting for others of their size, in batches: bounds the memory it costs


def regrouped(parts: Iterable[dict], batch_size: int) -> Iterator[dict]:
    """The parts (dicts of tensors and lists of one image per row, and of values shared by the part, such as its
    size) joined with the earlier ones of the same shapes and values, given out batch_size rows at a time; a full
    part goes as it is. Parts wait for others of their size while at most HELD_BATCHES * batch_size rows wait in
    all; past that, the largest waiting group goes as it is. A folder of one size goes through batch by batch."""
    held: dict[tuple, dict] = {}
    for part in parts:
        if _rows(part) >= batch_size:  # a full batch goes as it came (no copy), whatever waits
            yield part
            continue
        key = _shape_key(part)
        joined = _joined(held.pop(key), part) if key in held else _owned(part)
        if _rows(joined) >= batch_size:
            yield _sliced(joined, 0, batch_size)
            joined = _owned(_sliced(joined, batch_size, None))
        if _rows(joined):
            held[key] = joined
        while held and sum(_rows(group) for group in held.values()) > HELD_BATCHES * batch_size:
            yield held.pop(max(held, key=lambda waiting: _rows(held[waiting])))
    yield from held.values()


def _is_rows(value: object) -> bool:
    return isinstance(value, (torch.Tensor, list))


def _shape_key(part: dict) -> tuple:
    return tuple((name, tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else None if _is_rows(value)
                  else value) for name, value in part.items())


def _rows(part: dict) -> int:
    return next(len(value) for value in part.values() if _is_rows(value))


def _joined(first: dict, second: dict) -> dict:
    return {name: _copied([value, second[name]]) if isinstance(value, torch.Tensor) else
            value + second[name] if isinstance(value, list) else value for name, value in first.items()}


def _copied(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors' rows in a new tensor, pinned where the loader pinned them (for copies to the GPU that overlap)."""
    first = tensors[0]
    out = torch.empty((sum(len(tensor) for tensor in tensors), *first.shape[1:]), dtype=first.dtype,
                      pin_memory=first.is_pinned())
    return torch.cat(tensors, out=out)


def _owned(part: dict) -> dict:
    """The part in memory of its own: a waiting view would keep its whole loader batch alive."""
    return {name: _copied([value]) if isinstance(value, torch.Tensor) else value for name, value in part.items()}


def _sliced(part: dict, start: int, end: int | None) -> dict:
    return {name: value[start:end] if _is_rows(value) else value for name, value in part.items()}
