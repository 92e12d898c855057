"""TokenPyramid: the token ids of every level of one batch of videos, plus the shapes to decode them."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch

from pyratok.model.grid import Grid


def _id_dtype(code_bits: int):
    return np.uint16 if code_bits <= 16 else np.int32


@dataclass
class TokenPyramid:
    levels: list[torch.Tensor]
    """Per level, int64 ids (B, t_l, h_l, w_l); level 1 is the finest."""
    grids: list[Grid]
    video_shape: tuple[int, int, int]
    """(T, H, W) of the tokenized video."""
    code_bits: int = 16

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(level.shape) for level in self.levels]

    @property
    def num_tokens(self) -> int:
        """Tokens per video over all levels."""
        return sum(level[0].numel() for level in self.levels)

    def to(self, device) -> "TokenPyramid":
        return TokenPyramid([lv.to(device) for lv in self.levels], self.grids, self.video_shape, self.code_bits)

    def __getitem__(self, index: int | slice) -> "TokenPyramid":
        """Select videos of the batch."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TokenPyramid([lv[index] for lv in self.levels], self.grids, self.video_shape, self.code_bits)

    def equal(self, other: "TokenPyramid") -> bool:
        return self.shapes == other.shapes and all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(self.levels, other.levels))

    # -- .npz (the ``pyratok tokenize`` output) ---------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        dtype = _id_dtype(self.code_bits)
        arrays = {f"level{i}": lv.cpu().numpy().astype(dtype) for i, lv in enumerate(self.levels, start=1)}
        arrays["video_shape"] = np.asarray(self.video_shape, dtype=np.int64)
        arrays["strides"] = np.asarray([g.stride for g in self.grids], dtype=np.int64)
        arrays["frames_per_cell"] = np.asarray([g.frames_per_cell for g in self.grids], dtype=np.int64)
        arrays["code_bits"] = np.asarray(self.code_bits, dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "TokenPyramid":
        count = sum(1 for key in arrays if key.startswith("level"))
        if count == 0 or "video_shape" not in arrays:
            raise ValueError("not a PyraTok token file (needs level1.. and video_shape arrays)")
        levels = [torch.from_numpy(np.asarray(arrays[f"level{i}"]).astype(np.int64)) for i in range(1, count + 1)]
        grids = [Grid(int(s), int(f)) for s, f in zip(arrays["strides"], arrays["frames_per_cell"])]
        return cls(levels, grids, tuple(int(v) for v in arrays["video_shape"]), int(arrays["code_bits"]))

    def to_npz_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.to_arrays())
        return buffer.getvalue()

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> "TokenPyramid":
        with np.load(path, allow_pickle=False) as data:
            return cls.from_arrays({k: data[k] for k in data.files})
