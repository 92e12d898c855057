"""Clip pixels in the training forward: the uint8 input converted a region at a time, the reconstruction as asked.

A 97x4096x4096 clip is 4.9 G values: 4.9 GB as the loader's uint8, 9.8 GB in bf16, 19.5 GB in fp32.
The tiled forward (``model/bounded.py``) keeps the clip as uint8 and converts only the crop a region is
computing on (and its target crop), so the float clip never exists. The conversion is the loader's
(``x / 127.5 - 1`` in the compute dtype), so uint8 in and float in give the same numbers.
"""

from __future__ import annotations

import torch


def to_pixels(video: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [0, 255] -> ``dtype`` in [-1, 1]; a floating tensor is already pixels and is returned as it is."""
    if video.dtype == torch.uint8:
        return video.to(dtype).div_(127.5).sub_(1.0)
    return video



RECON_KEEPS = ("all", "first", "none")
"""What the forward returns of its reconstruction: the batch's, the first clip's on the CPU (a sample image's
worth; a 97x4096² clip's is 9.8 GB in bf16, off the GPU), or nothing (the tiled forward then never stitches one)."""


def kept_recon(recon: torch.Tensor, keep: str) -> torch.Tensor | None:
    """The part of a (piece of a) reconstruction that ``keep`` asks for, detached."""
    if keep == "none":
        return None
    return recon.detach() if keep == "all" else recon[:1].detach().cpu()
