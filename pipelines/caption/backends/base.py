"""The captioner interface every backend implements, and what goes in and out of it."""

from __future__ import annotations

import abc
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pyratok.pipelines.caption.config import CaptionConfig


@dataclass
class VideoClip:
    """One clip's sampled frames, ready for a captioner."""

    key: str
    frames: np.ndarray
    """(T, H, W, 3) uint8 at the model's target size (see ``frames.py``)."""
    sample_fps: float


@dataclass
class Generation:
    text: str
    num_tokens: int
    """Generated tokens, the stop token included."""
    stopped: bool
    """True: ended on a stop token. False: cut at ``max_new_tokens``."""


class CaptionBackend(abc.ABC):
    """Loads a captioning model once and captions batches of clips with one prompt."""

    name: ClassVar[str]

    def __init__(self, *, model_dir: Path, cfg: CaptionConfig):
        self.model_dir = Path(model_dir)
        self.cfg = cfg

    @classmethod
    @abc.abstractmethod
    def available(cls) -> bool:
        """Whether this backend's libraries can be imported here."""

    @abc.abstractmethod
    def generate(self, clips: list[VideoClip]) -> list[Generation]:
        """Caption each clip (same order). Raise only for errors that concern the whole batch."""

    def batch_seed(self, clips: list[VideoClip]) -> int:
        """A seed fixed by the config and the clips, so a rerun of the same batch samples the same text."""
        keys = "|".join(c.key for c in clips).encode()
        return (self.cfg.sampling.seed * 1_000_003 + zlib.crc32(keys)) % (2**31)
