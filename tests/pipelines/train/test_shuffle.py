import random
from collections import Counter

import pytest

from pyratok.pipelines.train.shuffle import buffered_shuffle


def test_every_item_comes_out_once_in_a_seeded_order():
    items = list(range(200))
    a = list(buffered_shuffle(items, bufsize=16, initial=4, rng=random.Random(3)))
    b = list(buffered_shuffle(iter(items), bufsize=16, initial=4, rng=random.Random(3)))
    assert sorted(a) == items and a == b and a != items
    assert list(buffered_shuffle(items, bufsize=16, initial=4, rng=random.Random(4))) != a


def test_at_most_bufsize_items_wait_in_memory():
    read = []

    def source():
        for i in range(1000):
            read.append(i)
            yield i

    waiting = []
    for yielded, _ in enumerate(buffered_shuffle(source(), bufsize=8, initial=2, rng=random.Random(0)), start=1):
        waiting.append(len(read) - yielded)
    assert max(waiting) == 7 and waiting[0] <= 2  # buffer never above bufsize; first sample after `initial` reads
    assert list(buffered_shuffle(range(10), bufsize=1, initial=1, rng=random.Random(0))) == list(range(10))


def test_positions_are_roughly_uniform_within_a_full_buffer():
    firsts = Counter(next(buffered_shuffle(range(4), bufsize=4, initial=4, rng=random.Random(s))) for s in range(4000))
    assert set(firsts) == {0, 1, 2, 3} and all(800 < n < 1200 for n in firsts.values())


def test_a_zero_buffer_is_an_error():
    with pytest.raises(ValueError, match="bufsize"):
        list(buffered_shuffle([1], bufsize=0, initial=0, rng=random.Random(0)))
