"""What every reader of the shards (caption, train, eval) agrees on about a decoded clip."""

from __future__ import annotations


def stream_ends_early(decoded: int, listed: int | None) -> bool:
    """A stream that stops well before the frame count its metadata lists lost its tail (a truncated
    file: ``corrupt``). A few frames short is not damage: a stream-copied clip's container counts
    the open GOP's leading pictures and B-frames past the cut that no decoder shows (an HEVC copy
    listing 41 decodes 38)."""
    return bool(listed) and decoded < listed - max(8, int(0.1 * listed))
