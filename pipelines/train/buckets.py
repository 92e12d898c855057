"""Aspect-ratio buckets and per-batch geometry (multi-resolution, multi-length sampling).

Clips are grouped by the bucket nearest their own aspect ratio, using only
their metadata, so grouping never decodes video. When a bucket holds a full
batch, one geometry is drawn for the whole batch (every clip in a batch has
the same shape): a square-equivalent side from the stage's resolution range,
and a frame count ``1+4k`` no longer than the batch's shortest clip.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from pyratok.pipelines.train.config import DataSection, FrameRange, ResolutionRange, parse_ratio


@dataclass(frozen=True)
class Bucket:
    name: str
    """``"16:9"``, or ``"9:16"`` for its portrait twin."""
    ratio: float
    """Width / height."""


@dataclass(frozen=True)
class Geometry:
    frames: int
    height: int
    width: int


def make_buckets(data: DataSection) -> list[Bucket]:
    out: dict[str, Bucket] = {}
    for text in data.aspect_ratios:
        ratio = parse_ratio(text)
        out[text] = Bucket(text, ratio)
        if data.portrait and ratio != 1.0:
            width, height = text.split(":")
            out[f"{height}:{width}"] = Bucket(f"{height}:{width}", 1.0 / ratio)
    return list(out.values())


def nearest_bucket(buckets: list[Bucket], width: int, height: int) -> Bucket:
    """The bucket closest in log-ratio (so 2:1 and 1:2 are equally far from 1:1)."""
    target = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b.ratio) - target))


def frames_needed(frames: int, stride: int) -> int:
    """Source frames a clip must have to yield ``frames`` frames every ``stride``."""
    return (frames - 1) * stride + 1


def seeded_rng(*parts: object) -> random.Random:
    """A generator fixed by its parts (seed, epoch, consumer, batch...), identical on every replay."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def snap(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def bucket_size(side: int, bucket: Bucket, multiple: int) -> tuple[int, int]:
    """(height, width) of a square-equivalent ``side`` in a bucket, on the model's grid."""
    root = math.sqrt(bucket.ratio)
    return snap(side / root, multiple), snap(side * root, multiple)


def draw_geometry(
    rng: random.Random,
    bucket: Bucket,
    *,
    resolution: ResolutionRange,
    frames: FrameRange,
    spatial_multiple: int,
    temporal_multiple: int = 4,
    min_source_frames: int,
    frame_stride: int = 1,
    max_side: float | None = None,
    batch: int = 1,
    max_voxels: int | None = None,
) -> Geometry | None:
    """One batch's shape, or None when even the shortest length does not fit the batch's clips.

    ``max_side`` (the batch's smallest square-equivalent source size) caps the side when
    upscaling is off; ``max_voxels`` caps ``batch x T x H x W`` (activation memory grows with it).
    The smallest side and length of the range are always allowed.
    """
    lengths = [f for f in frames.choices() if frames_needed(f, frame_stride) <= min_source_frames]
    lengths = [f for f in lengths if (f - 1) % temporal_multiple == 0]
    if not lengths:
        return None
    sides = resolution.sides()
    if max_side is not None:
        sides = [s for s in sides if s <= max_side] or sides[:1]

    def voxels(side: int, length: int) -> int:
        height, width = bucket_size(side, bucket, spatial_multiple)
        return batch * length * height * width

    if max_voxels:
        sides = [s for s in sides if voxels(s, lengths[0]) <= max_voxels] or sides[:1]
    side = rng.choice(sides)
    if max_voxels:
        lengths = [f for f in lengths if voxels(side, f) <= max_voxels] or lengths[:1]
    length = rng.choice(lengths)
    height, width = bucket_size(side, bucket, spatial_multiple)
    return Geometry(frames=length, height=height, width=width)
