"""A streaming shuffle buffer: the samples of a shard stream in a seeded random order, in bounded memory."""

from __future__ import annotations

import random
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


def buffered_shuffle(items: Iterable[T], *, bufsize: int, initial: int, rng: random.Random) -> Iterator[T]:
    """Yield ``items`` in a random order drawn through a buffer of at most ``bufsize`` of them.

    Yielding starts once ``initial`` items are buffered (a short wait for the first sample); until the
    buffer is full it takes two items per one it yields, so it reaches ``bufsize`` quickly. Every item
    comes out exactly once; the same ``rng`` state gives the same order.
    """
    if bufsize < 1:
        raise ValueError(f"bufsize must be >= 1, got {bufsize}")
    initial = max(1, min(initial, bufsize))
    source = iter(items)
    buf: list[T] = []
    for item in source:
        buf.append(item)
        if len(buf) < bufsize:
            extra = next(source, _END)
            if extra is not _END:
                buf.append(extra)
        if len(buf) >= initial:
            yield _pick(buf, rng)
    while buf:
        yield _pick(buf, rng)


def _pick(buf: list, rng: random.Random):
    """Remove and return a uniformly random element in O(1) (swap it to the end first)."""
    i = rng.randrange(len(buf))
    buf[i], buf[-1] = buf[-1], buf[i]
    return buf.pop()
