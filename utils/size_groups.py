"""Images of one size gathered across loader batches into full batches: a folder of tiles of a few sizes in any
order is predicted (and scored) batch_size images at a time, not in the few images of each size that one loader
batch happens to hold (1,200 tiles of 4 sizes shuffled: 98 images/s before, 113 after, where one size ran at
191-201; bench/README.md)."""

from collections.abc import Iterable, Iterator

import torch

HELD_BATCHES = 4  # images held back waiting for others of their size, in batches: bounds the memory it costs


def regrouped(parts: Iterable[dict], batch_size: int) -> Iterator[dict]:
    """The parts (dicts of tensors and lists of one image per row, and of values shared by the part, such as its
    size) joined with the earlier ones of the same shapes, dtypes and values, given out batch_size rows at a time;
    a full part goes as it is. Parts wait for others of their size while at most HELD_BATCHES * batch_size rows
    wait in all; past that, the largest waiting group goes as it is. A folder of one size goes through batch by
    batch. The memory held is that of the rows counted: a waiting view is copied. Each row is copied at most three
    times, however long it waits (a running concatenation would copy it at every join)."""
    held: dict[tuple, list[dict]] = {}
    for part in parts:
        if _rows(part) >= batch_size:  # a full batch goes as it came (no copy), whatever waits
            yield part
            continue
        key = _shape_key(part)
        waiting = held.setdefault(key, [])
        waiting.append(_owned(part))
        if sum(map(_rows, waiting)) >= batch_size:  # the last part fills the batch, its other rows wait
            group = held.pop(key)
            last, needed = group[-1], batch_size - sum(map(_rows, group[:-1]))
            yield _joined([*group[:-1], _sliced(last, 0, needed)])
            if _rows(last) > needed:  # copied: a view would keep the whole part alive (found by a code review)
                held[key] = [_owned(_sliced(last, needed, None))]
        while held and sum(sum(map(_rows, group)) for group in held.values()) > HELD_BATCHES * batch_size:
            yield _joined(held.pop(max(held, key=lambda waiting_key: sum(map(_rows, held[waiting_key])))))
    for group in held.values():
        yield _joined(group)


def _is_rows(value: object) -> bool:
    return isinstance(value, (torch.Tensor, list))


def _shape_key(part: dict) -> tuple:
    return tuple((name, (tuple(value.shape[1:]), value.dtype) if isinstance(value, torch.Tensor) else None
                  if _is_rows(value) else value) for name, value in part.items())


def _rows(part: dict) -> int:
    return next(len(value) for value in part.values() if _is_rows(value))


def _joined(group: list[dict]) -> dict:
    """The parts' rows in one part (the one part itself where there is one)."""
    if len(group) == 1:
        return group[0]
    first = group[0]
    return {name: _copied([part[name] for part in group]) if isinstance(value, torch.Tensor) else
            [row for part in group for row in part[name]] if isinstance(value, list) else value
            for name, value in first.items()}


def _copied(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors' rows in a new tensor, pinned where the loader pinned them (for copies to the GPU that overlap)."""
    first = tensors[0]
    out = torch.empty((sum(len(tensor) for tensor in tensors), *first.shape[1:]), dtype=first.dtype,
                      pin_memory=first.is_pinned())
    return torch.cat(tensors, out=out)


def _owned(part: dict) -> dict:
    """The part, its tensors in memory of their own: a waiting view would keep its whole loader batch alive."""
    return {name: value if not isinstance(value, torch.Tensor) or _whole(value) else _copied([value])
            for name, value in part.items()}


def _whole(tensor: torch.Tensor) -> bool:
    return tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == tensor.nbytes


def _sliced(part: dict, start: int, end: int | None) -> dict:
    return {name: value[start:end] if _is_rows(value) else value for name, value in part.items()}
