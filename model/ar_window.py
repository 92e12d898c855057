"""The AR head's aligned space-time window: the same region at every level, capped at a token budget.

The window is chosen on the coarsest (last) level's grid and mapped to every
finer level through the causal grid ratios, so all levels in one AR sequence
describe the same pixels. Its size is the largest box (shrinking the longest
side first) whose worst-case token count — not counting the cheaper frame-0
cell — fits the budget; its position is random in training and anchored at
frame 0 / the spatial centre otherwise.

Coverage: at the paper's 2,048-token budget a window is 3x3x3 coarse cells (48x48 px x 12 frames),
0.1 % of a 97x512x512 clip's tokens. Rather than a budget that grows with the clip (an LM sequence
of 1.8 M tokens), a new window is drawn uniformly over the clip's positions every step, so over a
stage every part of every clip is aligned (each cell as often as the start positions covering it:
edge cells less often than inner ones; ``tests/model/test_ar_head.py`` checks the rates by hand).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyratok.model.grid import Grid, fine_frame_range


@dataclass(frozen=True)
class Window:
    """Coarse-grid box: [start, stop) in frames, rows and columns."""

    frames: tuple[int, int]
    rows: tuple[int, int]
    cols: tuple[int, int]

    def level_slices(self, grid: Grid, coarse: Grid) -> tuple[slice, slice, slice]:
        ft, fs = grid.ratio_to(coarse)
        t0, t1 = fine_frame_range(*self.frames, ft)
        return slice(t0, t1), slice(self.rows[0] * fs, self.rows[1] * fs), slice(self.cols[0] * fs, self.cols[1] * fs)


def worst_case_tokens(size: tuple[int, int, int], grids: list[Grid]) -> int:
    """Tokens in a (frames, rows, cols) coarse box away from frame 0, summed over levels."""
    coarse = grids[-1]
    total = 0
    for grid in grids:
        ft, fs = grid.ratio_to(coarse)
        total += size[0] * ft * size[1] * fs * size[2] * fs
    return total


def window_size(coarse_shape: tuple[int, int, int], grids: list[Grid], budget: int) -> tuple[int, int, int]:
    size = list(coarse_shape)
    while worst_case_tokens(tuple(size), grids) > budget:
        if size == [1, 1, 1]:
            raise ValueError(
                f"ar.token_budget={budget} is smaller than one coarse cell across all levels "
                f"({worst_case_tokens((1, 1, 1), grids)} tokens)"
            )
        longest = max(range(3), key=lambda i: (size[i], i))  # ties: shrink space before time
        size[longest] -= 1
    return tuple(size)


def choose_window(coarse_shape: tuple[int, int, int], grids: list[Grid], budget: int, *,
                  generator: torch.Generator | None = None, random: bool = True) -> Window:
    size = window_size(coarse_shape, grids, budget)
    starts = []
    for extent, full in zip(size, coarse_shape):
        room = full - extent
        if random and room > 0:
            starts.append(int(torch.randint(room + 1, (1,), generator=generator)))
        else:
            starts.append(0 if len(starts) == 0 else room // 2)  # frame 0 (the key frame); spatial centre
    return Window(*((s, s + e) for s, e in zip(starts, size)))
