"""The dataset contract's held-out split: a stable hash of the key alone."""

from __future__ import annotations

import hashlib

from pyratok.core.dataset import split_of


def test_split_is_a_stable_hash_of_the_key_at_the_asked_fraction():
    keys = [f"openvid-clip{i}-{i * 7919:012x}" for i in range(20_000)]
    # by hand: the first 8 bytes of sha256("split|<key>") as a fraction of 2^64, below val_fraction -> val
    for key in keys[:50]:
        point = int(hashlib.sha256(f"split|{key}".encode()).hexdigest()[:16], 16) / 2**64
        assert split_of(key, 0.3) == ("val" if point < 0.3 else "train")
    assert all(split_of(k, 0.0) == "train" for k in keys[:1000])
    share = sum(split_of(k, 0.05) == "val" for k in keys) / len(keys)
    assert abs(share - 0.05) < 4 * (0.05 * 0.95 / len(keys)) ** 0.5
    # a larger fraction only adds val clips (nested splits), and order or other keys never matter
    small = {k for k in keys if split_of(k, 0.05) == "val"}
    assert small <= {k for k in keys if split_of(k, 0.2) == "val"}
    assert [split_of(k, 0.05) for k in reversed(keys)] == [split_of(k, 0.05) for k in keys][::-1]
