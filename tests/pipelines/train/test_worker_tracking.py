"""Sample frame grids: the input row as the loader's uint8, the reconstruction row from [-1, 1] floats."""

from __future__ import annotations

import numpy as np
import torch

from pyratok.pipelines.train.worker_tracking import frame_grid


def test_frame_grid_takes_uint8_input_and_float_reconstruction():
    frames = torch.arange(5 * 2 * 3 * 3, dtype=torch.float32).reshape(3, 5, 2, 3) % 256
    video = frames.to(torch.uint8)  # (3, T, H, W) as the loop now feeds the model
    recon = frames / 127.5 - 1  # the same pixels as a reconstruction would hold them
    grid = frame_grid(video, recon, frames=3)
    assert grid.shape == (2 * 2, 3 * 3, 3) and grid.dtype == np.uint8
    picks = [0, 2, 4]  # 3 evenly spaced frames of 5
    expected = np.concatenate([video[:, i].permute(1, 2, 0).numpy() for i in picks], axis=1)
    assert (grid[:2] == expected).all()  # uint8 rows are shown as they are
    assert (grid[2:] == expected).all()  # (x + 1) * 127.5 rounds back to the same bytes
