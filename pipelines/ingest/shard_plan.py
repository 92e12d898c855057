"""Deterministic assignment of accepted clips to shards.

Ray Data returns probe results in whatever order tasks finish, so nothing
here depends on order: clips are sorted by sample key and packed greedily,
per source, into shards of at most ``max_samples`` clips and ``max_mb``
estimated bytes. Same inputs + same config => same shard names, same members,
same bytes. Each shard carries a digest of everything that decides its bytes;
a committed shard whose stats hold the same digest is kept on a rerun.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pyratok.core.config import fingerprint
from pyratok.core.dataset import split_of
from pyratok.pipelines.ingest.config import IngestConfig

FORMAT_VERSION = 1
"""Bump when the bytes written for the same plan change (invalidates every committed shard)."""

CLIP_FIELDS = (
    "input", "metadata", "row", "source", "source_id", "key", "video", "caption", "captions", "scores", "tags",
    "caption_issues", "info", "plan", "est_bytes",
)  # fmt: skip
"""What a shard task needs of each accepted row."""
ROW_ID_FIELDS = ("input", "metadata", "row")
"""Where a clip came from, not what it is: left out of the digest, so moving rows in a table rewrites nothing."""


@dataclass(frozen=True)
class ShardSpec:
    name: str
    digest: str
    clips: list[dict[str, Any]]

    @property
    def est_bytes(self) -> int:
        return sum(int(c["est_bytes"]) for c in self.clips)

    def to_item(self) -> dict[str, Any]:
        """A Ray Data row (flat, arrow-friendly)."""
        return {"name": self.name, "digest": self.digest, "clips": json.dumps(self.clips, sort_keys=True)}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "ShardSpec":
        return cls(name=item["name"], digest=item["digest"], clips=json.loads(item["clips"]))


def content_settings(cfg: IngestConfig) -> dict[str, Any]:
    """The config that changes a shard's bytes for the same member clips."""
    return {"format": FORMAT_VERSION, "cut": cfg.cut.model_dump(mode="json")}


def shard_name(source: str, index: int) -> str:
    return f"{source}-{index:06d}"


def _with_split(clip: dict[str, Any], val_fraction: float) -> dict[str, Any]:
    """A held-out clip carries ``split: val`` into its shard's digest (its json says so, so changing the fraction
    rewrites the shards it touches); a training clip carries nothing, so shards written before splits existed
    keep their digests and are not rewritten."""
    if split_of(clip["key"], val_fraction) == "val":
        clip["split"] = "val"
    return clip


def plan_shards(accepted: list[dict[str, Any]], cfg: IngestConfig) -> list[ShardSpec]:
    limit_bytes = cfg.shards.max_mb * 1024 * 1024
    settings = content_settings(cfg)
    clips = sorted((_with_split({k: row[k] for k in CLIP_FIELDS}, cfg.split.val_fraction) for row in accepted),
                   key=lambda c: c["key"])
    specs: list[ShardSpec] = []
    group: list[dict[str, Any]] = []
    counters: dict[str, int] = {}

    def close() -> None:
        if not group:
            return
        source = group[0]["source"]
        index = counters.get(source, 0)
        counters[source] = index + 1
        members = [{k: v for k, v in c.items() if k not in ROW_ID_FIELDS} for c in group]
        digest = fingerprint({"settings": settings, "clips": members})
        specs.append(ShardSpec(name=shard_name(source, index), digest=digest, clips=list(group)))
        group.clear()

    size = 0
    for clip in clips:
        full = len(group) >= cfg.shards.max_samples or (group and size + int(clip["est_bytes"]) > limit_bytes)
        if group and (full or clip["source"] != group[0]["source"]):
            close()
            size = 0
        group.append(clip)
        size += int(clip["est_bytes"])
    close()
    return specs
