"""The streaming WebDataset reader: splitting, bucketing, bad samples, caption join, exact resume, S3."""

from __future__ import annotations

import collections
from pathlib import Path

import pandas as pd
import pytest
import torch

from pyratok.core.storage import Storage
from pyratok.pipelines.train.config import DataSection, FrameRange, ResolutionRange
from pyratok.pipelines.train.data import LoaderTracker, ReaderSpec, find_shards, make_loader
from tests.pipelines.train.conftest import CORRUPT_SHARD, GOOD_COPY_KEY, NO_META_KEY, TRUNCATED_KEY, shard_members


def spec_for(root, *, rank=0, world=1, loader_workers=0, batch=2, repeat=False, storage=None, **kw) -> ReaderSpec:
    storage = storage or Storage()
    return ReaderSpec(
        shards=find_shards(storage, str(root)),
        storage=storage,
        data=DataSection(loader_workers=loader_workers, shuffle_buffer=8, shuffle_initial=2),
        resolution=ResolutionRange(min_side=32, max_side=64, step=16),
        frames=FrameRange(min=5, max=9, step=4),
        batch_size=batch,
        spatial_multiple=16,
        rank=rank,
        world_size=world,
        repeat=repeat,
        **kw,
    )


def dataset_keys(root: Path) -> set[str]:
    keys = set()
    for tar in sorted((Path(root) / "shards").glob("*.tar")):
        keys |= set(shard_members(tar))
    return keys


def read_all(spec: ReaderSpec) -> tuple[list[dict], LoaderTracker]:
    tracker, batches = LoaderTracker(), []
    for batch in make_loader(spec):
        if tracker.observe(batch):
            batches.append(batch)
    return batches, tracker


def test_each_sample_once_per_epoch_across_2_workers_x_2_loader_processes(reader_dataset):
    seen: collections.Counter = collections.Counter()
    skipped: collections.Counter = collections.Counter()
    for rank in range(2):
        batches, tracker = read_all(spec_for(reader_dataset, rank=rank, world=2, loader_workers=2))
        assert {b["worker"] for b in batches} == {0, 1}, "both loader processes of each rank produce batches"
        for batch in batches:
            seen.update(batch["keys"])
            video = batch["video"]
            assert video.dtype == torch.uint8 and video.shape[0] == len(batch["keys"]) == len(batch["text"])
            frames, height, width = video.shape[1:4]
            assert (frames - 1) % 4 == 0 and 5 <= frames <= 9
            assert height % 16 == 0 and width % 16 == 0
        skipped.update(tracker.skipped())
    bad = {TRUNCATED_KEY, NO_META_KEY}
    assert set(seen) == dataset_keys(reader_dataset) - bad
    assert max(seen.values()) == 1, f"duplicates across consumers: {[k for k, v in seen.items() if v > 1]}"
    assert skipped["bad_metadata"] == 1
    assert skipped["corrupt"] == 1 and skipped["too_short"] == 0  # cut short: its json lists more frames


def test_fewer_shards_than_consumers_split_by_sample(reader_dataset, tmp_path):
    root = tmp_path / "two"
    (root / "shards").mkdir(parents=True)
    for name in ("droplet-000000", "ultravideo-000000"):
        (root / "shards" / f"{name}.tar").write_bytes((reader_dataset / "shards" / f"{name}.tar").read_bytes())
    seen: collections.Counter = collections.Counter()
    for rank in range(2):  # 2 ranks x 2 loader processes = 4 consumers for 2 shards: split by sample
        batches, _ = read_all(spec_for(root, rank=rank, world=2, loader_workers=2, batch=1))
        assert {b["worker"] for b in batches} == {0, 1}
        for batch in batches:
            seen.update(batch["keys"])
    assert set(seen) == dataset_keys(root) and max(seen.values()) == 1


def test_batches_share_one_bucket_shape_and_keep_aspect(reader_dataset):
    batches, _ = read_all(spec_for(reader_dataset, batch=3))
    manifest = pd.read_parquet(reader_dataset / "manifest.parquet").set_index("key")
    for batch in batches:
        _, _, height, width, _ = batch["video"].shape
        for key in batch["keys"]:
            if key in manifest.index:
                src = manifest.loc[key]
                # portrait clips land in portrait buckets, landscape in landscape ones
                assert (src.height > src.width) == (height > width) or height == width
    shapes = {tuple(b["video"].shape[1:4]) for b in batches}
    assert len(shapes) > 1, "multi-resolution / multi-length sampling draws several geometries"


def test_corrupt_samples_are_skipped_counted_and_batches_stay_full(reader_dataset, tmp_path):
    root = tmp_path / "corrupt-only"
    (root / "shards").mkdir(parents=True)
    (root / "shards" / f"{CORRUPT_SHARD}.tar").write_bytes((reader_dataset / "shards" / f"{CORRUPT_SHARD}.tar").read_bytes())
    batches, tracker = read_all(spec_for(root, batch=1))
    assert [b["keys"] for b in batches] == [[GOOD_COPY_KEY]]
    skipped = tracker.skipped()
    assert skipped.get("bad_metadata") == 1
    assert skipped.get("corrupt") == 1 and not skipped.get("too_short")
    assert tracker.corrupt_keys() == [TRUNCATED_KEY]  # named, not just counted


def test_unreadable_shard_is_counted_not_raised(reader_dataset, tmp_path):
    root = tmp_path / "broken"
    (root / "shards").mkdir(parents=True)
    (root / "shards" / "aaa-000000.tar").write_bytes(b"this is not a tar file" * 100)
    (root / "shards" / "droplet-000000.tar").write_bytes((reader_dataset / "shards" / "droplet-000000.tar").read_bytes())
    batches, tracker = read_all(spec_for(root, batch=1))
    assert sum(len(b["keys"]) for b in batches) == 3
    assert tracker.skipped().get("unreadable_shard", 0) >= 1


def test_caption_version_joined_by_key_with_counted_fallback(reader_dataset, tmp_path):
    from pyratok.pipelines.caption.sidecars import SIDECAR_COLUMNS, write_sidecar, write_version_record

    storage = Storage()
    root = tmp_path / "captioned"
    (root / "shards").mkdir(parents=True)
    shard = "droplet-000000"
    (root / "shards" / f"{shard}.tar").write_bytes((reader_dataset / "shards" / f"{shard}.tar").read_bytes())
    keys = sorted(shard_members(root / "shards" / f"{shard}.tar"))
    version = "v0123456789abcdef"
    write_version_record(storage, str(root), version, {"version": version, "name": "test-recaption"})
    frame = pd.DataFrame(
        {"key": keys[:-1], "caption": [f"recaption of {k}" for k in keys[:-1]], "fields": ["{}"] * (len(keys) - 1),
         "generated_tokens": [4] * (len(keys) - 1), "truncated": [False] * (len(keys) - 1), "frames": [2] * (len(keys) - 1)}
    )  # fmt: skip
    write_sidecar(storage, str(root), version, shard, frame[list(SIDECAR_COLUMNS)])
    from pyratok.pipelines.train.data import CaptionSource

    batches, tracker = read_all(spec_for(root, batch=1, captions=CaptionSource(str(root), version)))
    texts = {b["keys"][0]: b["text"][0] for b in batches}
    assert all(texts[k] == f"recaption of {k}" for k in keys[:-1])
    source = shard_members(root / "shards" / f"{shard}.tar")[keys[-1]]["txt"].decode().strip()
    assert texts[keys[-1]] == source  # no recaption for this key: the source caption, counted
    assert tracker.events["caption_fallback"] == 1


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_resume_continues_the_exact_stream(reader_dataset, loader_workers):
    """Stop after k batches, restart from the recorded positions: the rest is what an uninterrupted
    reader would have produced (same keys, same geometry, same order), across epochs."""
    full_spec = spec_for(reader_dataset, batch=2, repeat=True, loader_workers=loader_workers, decode=False)
    total, cut = 14, 5
    reference, tracker = [], LoaderTracker()
    positions, received = None, None
    for item in make_loader(full_spec):
        tracker.observe(item)
        if "keys" in item:
            reference.append((item["keys"], item["geometry"]))
        if len(reference) == cut and positions is None:
            positions, received = {k: dict(v) for k, v in tracker.positions.items()}, tracker.received
        if len(reference) == total:
            break
    assert any(k for k in tracker.positions.values() if k["epoch"] >= 1), "the check crosses an epoch boundary"
    resumed_spec = spec_for(
        reader_dataset, batch=2, repeat=True, loader_workers=loader_workers, decode=False,
        start=positions, rotate=received % max(1, loader_workers),
    )  # fmt: skip
    resumed = []
    for item in make_loader(resumed_spec):
        if "keys" in item:
            resumed.append((item["keys"], item["geometry"]))
        if len(resumed) == total - cut:
            break
    assert resumed == reference[cut:]


def test_reads_shards_from_s3(reader_dataset, s3_bucket, s3_storage):
    prefix = f"{s3_bucket}/datasets/small"
    for name in ("droplet-000000", CORRUPT_SHARD):
        s3_storage.upload(reader_dataset / "shards" / f"{name}.tar", f"{prefix}/shards/{name}.tar")
    batches, tracker = read_all(spec_for(prefix, batch=1, storage=s3_storage, loader_workers=1))
    keys = {k for b in batches for k in b["keys"]}
    assert keys == set(shard_members(reader_dataset / "shards" / "droplet-000000.tar")) | {GOOD_COPY_KEY}
    assert sum(tracker.skipped().values()) == 2


def test_missing_shards_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no WebDataset shards"):
        find_shards(Storage(), str(tmp_path))


def test_val_clips_are_held_out_and_counted_apart_from_bad_samples(reader_dataset, tmp_path):
    import json

    from tests.pipelines.train.conftest import write_shard

    root = tmp_path / "with-val"
    (root / "shards").mkdir(parents=True)
    members = shard_members(reader_dataset / "shards" / "droplet-000000.tar")
    held = sorted(members)[1]
    samples = {}
    for key, files in members.items():
        files = dict(files)
        if key == held:
            files["json"] = json.dumps({**json.loads(files["json"]), "split": "val"}).encode()
        samples[key] = files
    write_shard(root / "shards" / "droplet-000000.tar", samples)
    batches, tracker = read_all(spec_for(root, batch=1))
    keys = {k for b in batches for k in b["keys"]}
    assert keys == set(members) - {held}
    assert tracker.events["held_out"] == 1 and not tracker.skipped()
