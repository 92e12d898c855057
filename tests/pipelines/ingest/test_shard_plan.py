"""Shard assignment is a pure function of the accepted set: order in, order out do not matter."""

import random

from pyratok.pipelines.ingest.config import IngestConfig, ShardConfig
from pyratok.pipelines.ingest.shard_plan import CLIP_FIELDS, plan_shards


def clip(source: str, i: int, est_bytes: int = 1000, row: int | None = None) -> dict:
    rec = {field: "" for field in CLIP_FIELDS}
    rec.update(source=source, key=f"{source}-clip{i:03d}-abc", est_bytes=est_bytes, input=0, row=i if row is None else row,
               metadata="m.csv", video=f"/v/{i}.mp4", info="{}", plan="{}")  # fmt: skip
    return rec


def cfg(**shards) -> IngestConfig:
    return IngestConfig(shards=ShardConfig(**shards))


def test_same_clips_in_any_order_give_the_same_shards():
    clips = [clip("openvid", i) for i in range(23)] + [clip("droplet", i) for i in range(5)]
    plans = []
    for seed in range(3):
        shuffled = clips[:]
        random.Random(seed).shuffle(shuffled)
        plans.append([(s.name, s.digest, [c["key"] for c in s.clips]) for s in plan_shards(shuffled, cfg(max_samples=4))])
    assert plans[0] == plans[1] == plans[2]
    names = [name for name, _, _ in plans[0]]
    assert names == ["droplet-000000", "droplet-000001"] + [f"openvid-{i:06d}" for i in range(6)]
    assert [len(keys) for _, _, keys in plans[0]] == [4, 1, 4, 4, 4, 4, 4, 3]


def test_shards_never_mix_sources_and_respect_the_byte_budget():
    mb = 1024 * 1024
    clips = [clip("manifest", i, est_bytes=400 * 1024) for i in range(6)] + [clip("openvid", 0, est_bytes=3 * mb)]
    specs = plan_shards(clips, cfg(max_samples=100, max_mb=1.0))
    assert [len(s.clips) for s in specs] == [2, 2, 2, 1]  # 2 x 400 KiB fit in 1 MiB; the 3 MiB clip alone
    assert all(len({c["source"] for c in s.clips}) == 1 for s in specs)


def test_digest_follows_content_not_row_position():
    base = plan_shards([clip("openvid", i) for i in range(4)], cfg())
    moved = plan_shards([clip("openvid", i, row=100 + i) for i in range(4)], cfg())
    assert base[0].digest == moved[0].digest
    changed = [clip("openvid", i) for i in range(4)]
    changed[2]["caption"] = "another caption"
    assert plan_shards(changed, cfg())[0].digest != base[0].digest
    recut = IngestConfig(shards=ShardConfig(), cut={"crf": 30})
    assert plan_shards([clip("openvid", i) for i in range(4)], recut)[0].digest != base[0].digest
