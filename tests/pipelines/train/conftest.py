"""Fixtures of the training tests: datasets derived from the shared ingested dataset, tiny overrides."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

CORRUPT_SHARD = "corrupt-000000"
GOOD_COPY_KEY = "manifest-goodcopy-000000000001"
TRUNCATED_KEY = "manifest-truncated-000000000002"
NO_META_KEY = "manifest-nometa-000000000003"
TRAIN_SHARDS = ("droplet-000000",)


def shard_members(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} of a WebDataset tar."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out


def write_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples.items():
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def add_corrupt_shard(root: Path, donor_shard: Path) -> None:
    """A shard with one good clip, one truncated mp4 and one sample without metadata."""
    donor = next(iter(shard_members(donor_shard).values()))
    meta = json.loads(donor["json"])
    write_shard(
        root / "shards" / f"{CORRUPT_SHARD}.tar",
        {
            GOOD_COPY_KEY: {**donor, "json": json.dumps({**meta, "key": GOOD_COPY_KEY}).encode()},
            TRUNCATED_KEY: {"mp4": donor["mp4"][: len(donor["mp4"]) // 3][:4000], "json": donor["json"], "txt": b"cut short"},
            NO_META_KEY: {"mp4": donor["mp4"], "txt": b"no json"},
        },
    )


@pytest.fixture(scope="session")
def reader_dataset(ingested_dataset, tmp_path_factory) -> Path:
    """All ingested shards plus the corrupt shard (read-only)."""
    root = tmp_path_factory.mktemp("train-reader") / "dataset"
    shutil.copytree(ingested_dataset, root)
    add_corrupt_shard(root, root / "shards" / f"{TRAIN_SHARDS[0]}.tar")
    return root


@pytest.fixture(scope="session")
def train_dataset(ingested_dataset, tmp_path_factory) -> Path:
    """A small training set: one real shard (3 clips, 720p/1080p) + the corrupt shard. With two
    shards for two workers, each worker reads one whole shard per epoch, so a few steps cover
    several epochs and every worker meets the bad samples."""
    root = tmp_path_factory.mktemp("train-data") / "dataset"
    (root / "shards").mkdir(parents=True)
    for shard in TRAIN_SHARDS:
        shutil.copy(Path(ingested_dataset) / "shards" / f"{shard}.tar", root / "shards")
    add_corrupt_shard(root, root / "shards" / f"{TRAIN_SHARDS[0]}.tar")
    return root


def tiny_train_overrides(work_dir: Path, stage: int, *, steps: int, every: int = 2, tracking_uri: str | None = None) -> list[str]:
    """The local preset shrunk to test size: 32x32x5 clips, batch 1, a checkpoint every ``every`` steps."""
    section = f"train.stages.stage{stage}"
    out = [
        f"work_dir={work_dir}",
        f"{section}.steps={steps}",
        f"{section}.batch_size=1",
        f"{section}.resolution={{min_side: 32, max_side: 32, step: 16}}",
        f"{section}.frames={{min: 5, max: 5, step: 4}}",
        f"train.checkpoint.every_n_steps={every}",
        "train.checkpoint.num_to_keep=3",
        "train.tracking.log_every_n_steps=2",
        "train.tracking.sample_every_n_steps=2",
        "train.tracking.progress_bar=false",
        "train.data.shuffle_buffer=4",
        "train.data.shuffle_initial=2",
    ]
    if tracking_uri:
        out.append(f"tracking.tracking_uri={tracking_uri}")
    return out
