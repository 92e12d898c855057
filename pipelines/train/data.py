"""Streaming WebDataset reader for training: shards -> shuffled clips -> aspect buckets -> decoded batches.

Why ``webdataset`` inside each worker's torch DataLoader rather than Ray Data
``read_webdataset``: training batches are decoded video (a 97x2048x2048 clip
is ~1.2 GB as uint8), which should go straight from the decoding process to
the GPU process, never through the object store; bucketing by aspect ratio
and drawing one geometry per batch is per-consumer state that Ray Data's
row-oriented batching does not express; and exact mid-epoch resume needs a
deterministic, replayable stream, which Ray Data iterators do not checkpoint.
webdataset gives the tar parsing and sample grouping; storage (local or S3,
any endpoint) streams through ``pyratok.core.storage``.

Splitting: every consumer (Ray Train rank x DataLoader process) gets a
disjoint share of each epoch: whole shards when there are at least as many
shards as consumers, otherwise every consumer reads all shards and keeps every
N-th sample. Each consumer's stream is a pure function of (seed, epoch,
consumer), so a checkpoint stores just where each consumer stood
(:class:`StreamState`) and resume replays the encoded stream (no decoding) to
that point. Bad samples (unreadable metadata, undecodable video, too short)
are skipped and counted in the batches' ``events``, never raised.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pyratok.core.dataset import list_shards, shard_name
from pyratok.core.logging import get_logger
from pyratok.core.storage import Storage
from pyratok.pipelines.train.buckets import (
    Bucket,
    draw_geometry,
    frames_needed,
    make_buckets,
    nearest_bucket,
    seeded_rng,
)
from pyratok.pipelines.train.config import DataSection, FrameRange, ResolutionRange
from pyratok.pipelines.train.decode import ClipDecodeError, decode_clip
from pyratok.pipelines.train.shuffle import buffered_shuffle

log = get_logger(__name__)

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi")
SKIP_PREFIX = "skipped/"
SKIP_REASONS = ("missing_video", "bad_metadata", "too_short", "no_video_stream", "corrupt", "unreadable_shard")
"""Why a sample was skipped (the ``skipped/<reason>`` counters)."""
CORRUPT_PREFIX = "corrupt/"
"""``corrupt/<key>`` events: which clips did not decode (a shard from an older ingest, bit rot)."""


@dataclass
class StreamState:
    """Where one consumer stands in its stream: enough to continue exactly after a restart."""

    epoch: int = 0
    taken: int = 0
    """Samples consumed from this epoch's shuffled stream."""
    batches: int = 0
    """Batches emitted in this epoch."""
    pending: dict[str, list[str]] = field(default_factory=dict)
    """Keys waiting in each bucket (consumed but not yet batched), in order."""

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "taken": self.taken, "batches": self.batches, "pending": self.pending}

    @classmethod
    def from_dict(cls, data: dict) -> "StreamState":
        return cls(int(data["epoch"]), int(data["taken"]), int(data["batches"]), dict(data.get("pending") or {}))


@dataclass
class Clip:
    """An encoded sample, parsed just enough to bucket it."""

    key: str
    shard: str
    video: bytes
    width: int
    height: int
    frames: int
    caption: str
    bucket: Bucket


@dataclass
class CaptionSource:
    """A recaption set to join by key (sidecars written by the caption stage)."""

    root: str
    version: str


@dataclass
class ReaderSpec:
    """Everything a loader process needs; picklable."""

    shards: list[str]
    storage: Storage
    data: DataSection
    resolution: ResolutionRange
    frames: FrameRange
    batch_size: int
    spatial_multiple: int
    temporal_multiple: int = 4
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    repeat: bool = True
    captions: CaptionSource | None = None
    start: dict[int, dict] = field(default_factory=dict)
    """Per loader process: a :class:`StreamState` dict to resume from (empty: epoch 0)."""
    decode: bool = True
    """False: batches carry keys and geometry only (for inspecting the split)."""
    rotate: int = 0
    """Loader process p plays stream role (p + rotate) % processes. A DataLoader always asks
    process 0 first, so a resumed loader rotated by (items received so far) % processes continues
    the exact interleaving of the interrupted one."""


def find_shards(storage: Storage, root: str) -> list[str]:
    """Shard URIs of a dataset root (``shards/*.tar``) or of a folder of tars; clear error if none."""
    shards = list_shards(storage, root)
    if not shards:
        shards = storage.list(root, suffix=".tar", recursive=False)
    if not shards:
        raise FileNotFoundError(f"no WebDataset shards (*.tar) under {root} or {root}/shards")
    return shards


class ClipStream(IterableDataset):
    """Yields whole batches (``batch_size=None`` in the DataLoader): every clip in a batch has one shape.

    Each batch is a dict: ``video`` uint8 (B, T, H, W, 3), ``text`` list[str], ``keys``,
    ``worker`` (loader process id), ``state`` (that process's :class:`StreamState` after
    this batch) and ``events`` (counters since its previous batch: ``skipped/<reason>``,
    ``caption_fallback``, ``held_out``: val clips passed over).
    """

    def __init__(self, spec: ReaderSpec):
        super().__init__()
        self.spec = spec
        self.buckets = make_buckets(spec.data)
        self._events: collections.Counter = collections.Counter()
        self._caption_cache: collections.OrderedDict[str, dict[str, str]] = collections.OrderedDict()

    # -- splitting ---------------------------------------------------------
    def consumer(self) -> tuple[int, int, int]:
        """(loader process id, this consumer's index, number of consumers)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        worker = (worker + self.spec.rotate) % workers
        return worker, self.spec.rank * workers + worker, self.spec.world_size * workers

    def epoch_shards(self, epoch: int, consumer: int, consumers: int) -> tuple[list[str], int | None]:
        """This consumer's shards for an epoch, and the sample stride when samples (not shards) are split."""
        order = list(self.spec.shards)
        seeded_rng(self.spec.seed, "shards", epoch).shuffle(order)
        if len(order) >= consumers:
            return order[consumer::consumers], None
        return order, consumers

    # -- encoded stream ----------------------------------------------------
    def _handler(self, exc: Exception) -> bool:
        self._events[f"{SKIP_PREFIX}unreadable_shard"] += 1
        log.warning("skipping the rest of a shard: %s", exc)
        return True

    def _open(self, shards: list[str]) -> Iterator[dict]:
        for url in shards:
            try:
                yield {"url": url, "stream": self.spec.storage.open_read(url)}
            except (OSError, RuntimeError) as exc:
                self._handler(exc)

    def encoded(self, epoch: int, consumer: int, consumers: int) -> Iterator[dict]:
        """This consumer's raw samples for the epoch, shuffled (deterministically)."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        shards, stride = self.epoch_shards(epoch, consumer, consumers)
        samples: Iterable[dict] = group_by_keys(tar_file_expander(self._open(shards), handler=self._handler), handler=self._handler)
        if stride is not None:
            samples = (s for i, s in enumerate(samples) if i % stride == consumer)
        rng = seeded_rng(self.spec.seed, "samples", epoch, consumer)
        return buffered_shuffle(samples, bufsize=self.spec.data.shuffle_buffer, initial=self.spec.data.shuffle_initial, rng=rng)

    # -- parsing -------------------------------------------------------------
    def _skip(self, reason: str, key: str, detail: str) -> None:
        self._events[f"{SKIP_PREFIX}{reason}"] += 1
        if reason == "corrupt":
            self._events[f"{CORRUPT_PREFIX}{key}"] += 1
        log.warning("skipping sample %s: %s", key, detail)

    def _captions(self, shard: str) -> dict[str, str]:
        if shard not in self._caption_cache:
            from pyratok.pipelines.caption.sidecars import load_captions

            src = self.spec.captions
            self._caption_cache[shard] = load_captions(self.spec.storage, src.root, src.version, shard=shard)
            while len(self._caption_cache) > 8:  # the shuffle buffer spans a few shards at most
                self._caption_cache.popitem(last=False)
        return self._caption_cache[shard]

    def _caption(self, sample: dict, meta: dict, shard: str, key: str) -> str:
        if self.spec.captions is not None:
            caption = self._captions(shard).get(key)
            if caption is not None:
                return caption
            self._events["caption_fallback"] += 1
        if self.spec.data.source_caption == "txt" and "txt" in sample:
            return sample["txt"].decode("utf-8", errors="replace").strip()
        return str(meta.get("caption") or "")

    def parse(self, sample: dict) -> Clip | None:
        """An encoded sample -> :class:`Clip`, or None (counted) when it cannot be trained on."""
        key = sample.get("__key__", "?")
        video_ext = next((ext for ext in VIDEO_EXTENSIONS if ext in sample), None)
        if video_ext is None:
            self._skip("missing_video", key, f"no video file among {sorted(k for k in sample if not k.startswith('__'))}")
            return None
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
            width, height, frames = int(meta["width"]), int(meta["height"]), int(meta["num_frames"])
            if width <= 0 or height <= 0 or frames <= 0:
                raise ValueError(f"width={width} height={height} num_frames={frames}")
        except (KeyError, ValueError, TypeError) as exc:
            self._skip("bad_metadata", key, f"metadata unusable ({type(exc).__name__}: {exc})")
            return None
        if meta.get("split") == "val":  # held out for evaluation (ingest.split): never trained on, not a bad sample
            self._events["held_out"] += 1
            return None
        if frames < frames_needed(self.spec.frames.min, self.spec.data.frame_stride):
            self._skip("too_short", key, f"{frames} frames, the stage needs at least {self.spec.frames.min}")
            return None
        shard = shard_name(sample.get("__url__", ""))
        return Clip(
            key=key,
            shard=shard,
            video=sample[video_ext],
            width=width,
            height=height,
            frames=frames,
            caption=self._caption(sample, meta, shard, key),
            bucket=nearest_bucket(self.buckets, width, height),
        )

    # -- batching ------------------------------------------------------------
    def _decode_batch(self, members: list[Clip], epoch: int, consumer: int, index: int) -> tuple[Any, list[Clip]]:
        """Decode members at one drawn geometry: (uint8 array or None, members that failed)."""
        spec = self.spec
        rng = seeded_rng(spec.seed, "batch", epoch, consumer, index)
        smallest = min(float(np.sqrt(c.width * c.height)) for c in members)
        geometry = draw_geometry(
            rng,
            members[0].bucket,
            resolution=spec.resolution,
            frames=spec.frames,
            spatial_multiple=spec.spatial_multiple,
            temporal_multiple=spec.temporal_multiple,
            min_source_frames=min(c.frames for c in members),
            frame_stride=spec.data.frame_stride,
            max_side=None if spec.data.upscale else smallest,
            batch=len(members),
            max_voxels=spec.data.max_voxels_per_batch,
        )
        if geometry is None:  # parse() keeps clips shorter than the stage minimum out; belt and braces
            for clip in members:
                self._skip("too_short", clip.key, f"{clip.frames} frames fit no length of the stage")
            return None, list(members)
        if not spec.decode:
            return geometry, []
        arrays, failed = [], []
        for clip in members:
            span = frames_needed(geometry.frames, spec.data.frame_stride)
            start = seeded_rng(spec.seed, "start", epoch, clip.key).randint(0, max(0, clip.frames - span))
            try:
                arrays.append(decode_clip(clip.video, geometry, start=start, stride=spec.data.frame_stride, key=clip.key,
                                          listed_frames=clip.frames))
            except ClipDecodeError as exc:
                self._skip(exc.reason, clip.key, str(exc))
                failed.append(clip)
        return (np.stack(arrays) if not failed else None), failed

    def _batch(self, payload: Any, members: list[Clip], worker: int, state: StreamState) -> dict:
        events = dict(self._events)
        self._events.clear()
        out = {
            "text": [c.caption for c in members],
            "keys": [c.key for c in members],
            "worker": worker,
            "state": state.to_dict(),
            "events": events,
        }
        if self.spec.decode:
            out["video"] = torch.from_numpy(payload)
        else:
            out["geometry"] = (payload.frames, payload.height, payload.width) if payload else None
        return out

    def _epoch(self, epoch: int, worker: int, consumer: int, consumers: int, resume: StreamState | None) -> Iterator[dict]:
        state = StreamState(epoch=epoch)
        buckets: dict[str, list[Clip]] = {b.name: [] for b in self.buckets}
        stream = self.encoded(epoch, consumer, consumers)
        if resume is not None:
            # Replay the encoded stream to where the checkpoint stood; only pending clips are parsed.
            wanted = {key: name for name, keys in resume.pending.items() for key in keys}
            found: dict[str, Clip] = {}
            saved_events = self._events.copy()
            for _ in range(resume.taken):
                sample = next(stream, None)
                if sample is None:
                    break
                if sample.get("__key__") in wanted:
                    clip = self.parse(sample)
                    if clip is not None:
                        found[clip.key] = clip
            self._events = saved_events  # counted before the checkpoint already
            for name, keys in resume.pending.items():
                buckets.setdefault(name, []).extend(found[k] for k in keys if k in found)
            state = StreamState(epoch=epoch, taken=resume.taken, batches=resume.batches)
        size = self.spec.batch_size
        for sample in stream:
            state.taken += 1
            clip = self.parse(sample)
            if clip is None:
                continue
            bucket = buckets[clip.bucket.name]
            bucket.append(clip)
            while len(bucket) >= size:
                members = bucket[:size]
                payload, failed = self._decode_batch(members, epoch, consumer, state.batches)
                if failed:
                    # Drop the bad clips; the good ones wait for the bucket to refill (shape stays B).
                    bucket[:] = [c for c in bucket if c not in failed]
                    continue
                del bucket[:size]
                state.batches += 1
                state.pending = {n: [c.key for c in b] for n, b in buckets.items() if b}
                yield self._batch(payload, members, worker, state)
        # End of the epoch: what is left in each bucket goes out as a smaller batch.
        for name in [b.name for b in self.buckets]:
            bucket = buckets.get(name, [])
            while bucket:
                members = list(bucket[:size])
                payload, failed = self._decode_batch(members, epoch, consumer, state.batches)
                if failed:
                    bucket[:] = [c for c in bucket if c not in failed]
                    continue
                del bucket[: len(members)]
                state.batches += 1
                state.pending = {n: [c.key for c in b] for n, b in buckets.items() if b}
                yield self._batch(payload, members, worker, state)

    def __iter__(self) -> Iterator[dict]:
        worker, consumer, consumers = self.consumer()
        start = self.spec.start.get(worker)
        resume = StreamState.from_dict(start) if start else None
        epoch = resume.epoch if resume else 0
        while True:
            emitted = 0
            for batch in self._epoch(epoch, worker, consumer, consumers, resume):
                emitted += 1
                yield batch
            if self._events:  # skips after the last batch still get reported
                yield {"worker": worker, "events": dict(self._events), "state": StreamState(epoch=epoch + 1).to_dict()}
                self._events.clear()
            if not self.spec.repeat:
                return
            if emitted == 0 and resume is None:
                raise RuntimeError(
                    f"data consumer {consumer} of {consumers} produced no batch in epoch {epoch}: "
                    f"{len(self.spec.shards)} shard(s) hold too few usable clips for "
                    f"{self.spec.world_size} worker(s) x {max(1, consumers // self.spec.world_size)} loader process(es)"
                )
            resume = None
            epoch += 1


def make_loader(spec: ReaderSpec, *, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    workers = spec.data.loader_workers
    return torch.utils.data.DataLoader(
        ClipStream(spec),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=spec.data.prefetch_batches if workers else None,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


class LoaderTracker:
    """Main-process view of the loader: where each loader process stands, and what was skipped."""

    def __init__(self, positions: dict | None = None, events: dict[str, int] | None = None, received: int = 0):
        self.positions: dict[int, dict] = {int(k): v for k, v in (positions or {}).items()}
        self.events: collections.Counter = collections.Counter(events or {})
        self.received = received
        """Items taken from the loader so far (batches and counters-only messages): the rotation."""

    def observe(self, batch: dict) -> bool:
        """Record a batch's position and counters; False for a counters-only message (no clips)."""
        self.received += 1
        self.positions[int(batch["worker"])] = batch["state"]
        self.events.update(batch.get("events") or {})
        return "video" in batch or "geometry" in batch

    def skipped(self) -> dict[str, int]:
        return {k[len(SKIP_PREFIX):]: v for k, v in self.events.items() if k.startswith(SKIP_PREFIX)}

    def corrupt_keys(self) -> list[str]:
        return sorted(k[len(CORRUPT_PREFIX):] for k in self.events if k.startswith(CORRUPT_PREFIX))
