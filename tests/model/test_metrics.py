"""Dataset-level codebook utilisation against brute force (Counter over every id seen)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from pyratok.model.metrics import CodebookUtilisation


def brute(counter: Counter, size: int) -> dict[str, float]:
    total = sum(counter.values())
    entropy = -sum(c / total * math.log(c / total) for c in counter.values())
    return {"used": len(counter), "utilisation": len(counter) / size, "tokens": total, "entropy": entropy,
            "perplexity": math.exp(entropy)}


def test_utilisation_over_a_pass_is_the_union_of_every_batch_per_level_and_over_levels():
    g = torch.Generator().manual_seed(0)
    # level 1 uses few codes (collapsed), level 2 many; three batches, two workers merged at the end
    batches = [[torch.randint(0, 8, (2, 3, 4, 4), generator=g), torch.randint(0, 2**12, (2, 5, 8, 8), generator=g)]
               for _ in range(3)]
    first, second = CodebookUtilisation(12, 2), CodebookUtilisation(12, 2)
    for k, ids in enumerate(batches):
        (first if k < 2 else second).update(ids)
    got = first.merge(second).summary()
    per_level = [Counter(), Counter()]
    for ids in batches:
        for i, level in enumerate(ids):
            per_level[i].update(level.flatten().tolist())
    for i, counter in enumerate(per_level, start=1):
        for key, value in brute(counter, 2**12).items():
            assert math.isclose(got[f"level{i}/{key}"], value, rel_tol=1e-9), (i, key)
    for key, value in brute(per_level[0] + per_level[1], 2**12).items():
        assert math.isclose(got[f"all/{key}"], value, rel_tol=1e-9), key
    # the union over the pass exceeds any one batch's use
    one = CodebookUtilisation(12, 2)
    one.update(batches[0])
    assert got["level2/used"] > one.summary()["level2/used"]


def test_utilisation_rejects_mismatched_levels_and_codebooks():
    meter = CodebookUtilisation(16, 3)
    with pytest.raises(ValueError, match="3 levels"):
        meter.update([torch.zeros(4, dtype=torch.long)])
    with pytest.raises(ValueError, match="different codebooks"):
        meter.merge(CodebookUtilisation(12, 3))
