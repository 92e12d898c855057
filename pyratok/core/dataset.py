"""The on-storage contract of a PyraTok dataset: where things live and what a sample is.

Ingest writes it; caption and train read it. Layout under a dataset root
(local folder or ``s3://`` prefix)::

    shards/<shard>.tar                  WebDataset shard: <key>.mp4, <key>.json, <key>.txt
    shards/<shard>.stats.json           per-shard counts, bytes, durations
    manifest.parquet                    one row per accepted clip (its split: train / val)
    rejects.parquet                     one row per rejected input, with a reason code
    ingest.json                         run summary: config fingerprint, counts
    captions/<version>/version.json     what produced the caption set (model, prompt, sampling)
    captions/<version>/<shard>.parquet  sidecar: key -> caption, joined by key at read time
    captions/<version>/failures/<shard>.parquet

WebDataset splits a sample's files at the first dot of the name, so keys never
contain dots.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pyratok.core.storage import Storage, basename, join

SHARDS_DIR = "shards"
CAPTIONS_DIR = "captions"
SHARD_SUFFIX = ".tar"
STATS_SUFFIX = ".stats.json"
MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
INGEST_SUMMARY = "ingest.json"
CAPTION_VERSION_FILE = "version.json"

Source = Literal["droplet", "openvid", "ultravideo", "manifest"]
SOURCES: tuple[str, ...] = ("droplet", "openvid", "ultravideo", "manifest")

MANIFEST_COLUMNS = (
    "key", "shard", "source", "source_id", "width", "height", "fps", "frames", "duration", "codec", "sha256", "split",
)  # fmt: skip
SPLITS = ("train", "val")
REJECT_COLUMNS = ("source", "source_id", "path", "reason", "detail")

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class ClipMetadata(BaseModel):
    """The normalized ``<key>.json`` of one sample (design section 3)."""

    model_config = ConfigDict(extra="allow")

    key: str
    source: Source
    source_id: str
    width: int
    height: int
    fps: float
    num_frames: int
    duration_s: float
    codec: str
    clip_start_s: float = 0.0
    clip_end_s: float | None = None
    caption: str = ""
    captions: dict[str, str] = Field(default_factory=dict)
    scores: dict[str, float] = Field(default_factory=dict)
    split: Literal["train", "val"] = "train"
    """Held-out split (``split_of``); shards written before splits existed read as train."""


def split_of(key: str, val_fraction: float) -> str:
    """``val`` for a stable ``val_fraction`` of keys, else ``train``: a hash of the key alone, so the same clip
    lands in the same split on every run, machine and ingest order (adding clips moves none)."""
    if val_fraction <= 0:
        return "train"
    point = int.from_bytes(hashlib.sha256(f"split|{key}".encode("utf-8")).digest()[:8], "big") / 2**64
    return "val" if point < val_fraction else "train"


def sample_key(source: str, source_id: str, clip_start_s: float | None = None, clip_end_s: float | None = None) -> str:
    """Deterministic, dot-free key: readable prefix + hash of the identity (source, id, window)."""
    identity = f"{source}|{source_id}|{clip_start_s}|{clip_end_s}"
    digest = hashlib.sha1(identity.encode("utf-8")).hexdigest()[:12]
    stem = _KEY_UNSAFE.sub("_", basename(source_id).rsplit(".", 1)[0])[:40].strip("_") or "clip"
    return f"{source}-{stem}-{digest}"


def shards_dir(root: str) -> str:
    return join(root, SHARDS_DIR)


def shard_uri(root: str, shard: str) -> str:
    return join(root, SHARDS_DIR, f"{shard}{SHARD_SUFFIX}")


def shard_stats_uri(root: str, shard: str) -> str:
    return join(root, SHARDS_DIR, f"{shard}{STATS_SUFFIX}")


def shard_name(uri: str) -> str:
    """``.../shards/openvid-000003.tar`` -> ``openvid-000003``."""
    name = basename(uri)
    return name[: -len(SHARD_SUFFIX)] if name.endswith(SHARD_SUFFIX) else name


def manifest_uri(root: str) -> str:
    return join(root, MANIFEST)


def rejects_uri(root: str) -> str:
    return join(root, REJECTS)


def ingest_summary_uri(root: str) -> str:
    return join(root, INGEST_SUMMARY)


def list_shards(storage: Storage, root: str) -> list[str]:
    """Committed shard URIs of a dataset, sorted by name."""
    return storage.list(shards_dir(root), suffix=SHARD_SUFFIX, recursive=False)


def captions_dir(root: str, version: str | None = None) -> str:
    return join(root, CAPTIONS_DIR, version) if version else join(root, CAPTIONS_DIR)


def caption_sidecar_uri(root: str, version: str, shard: str) -> str:
    return join(root, CAPTIONS_DIR, version, f"{shard}.parquet")


def caption_failures_uri(root: str, version: str, shard: str) -> str:
    return join(root, CAPTIONS_DIR, version, "failures", f"{shard}.parquet")


def caption_version_uri(root: str, version: str) -> str:
    return join(root, CAPTIONS_DIR, version, CAPTION_VERSION_FILE)
