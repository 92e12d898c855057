"""Caption sidecars: the reader contract (resolve_version, load_captions, list_versions) on local and S3 storage."""

from __future__ import annotations

import pandas as pd
import pytest

from pyratok.core.dataset import caption_failures_uri, caption_sidecar_uri, shard_uri
from pyratok.core.storage import Storage
from pyratok.pipelines.caption import sidecars
from pyratok.pipelines.caption.sidecars import CaptionVersionError, list_versions, load_captions, resolve_version


def sidecar(keys: list[str], prefix: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"key": keys, "caption": [f"{prefix} {k}" for k in keys], "fields": ["{}"] * len(keys),
         "generated_tokens": [7] * len(keys), "truncated": [False] * len(keys), "frames": [4] * len(keys)}
    )  # fmt: skip


def build(storage: Storage, root: str) -> None:
    """Two shards, two caption versions (one named twice to test ambiguity handling)."""
    for shard in ("src-000000", "src-000001"):
        storage.write_bytes(shard_uri(root, shard), b"tar bytes are not read here")
    versions = {"a1b2c3d4e5f60718": "qwen7b/detailed", "a1ffffffffffff00": "qwen7b/structured", "9999000011112222": "qwen7b/structured"}
    for i, (version, name) in enumerate(versions.items()):
        sidecars.write_version_record(
            storage, root, version,
            {"version": version, "name": name, "model": "Qwen2.5-VL-7B", "prompt_hash": f"p{i}", "created": f"2026-01-0{i + 1}"},
        )  # fmt: skip
    v = "a1b2c3d4e5f60718"
    sidecars.write_sidecar(storage, root, v, "src-000000", sidecar(["k2", "k1"], "v1"))
    sidecars.write_sidecar(storage, root, v, "src-000001", sidecar(["k3"], "v1"))
    ledger = pd.DataFrame([{"key": "k4", "shard": "src-000001", "stage": "decode", "reason": "undecodable", "detail": "x", "time": "t"}])
    sidecars.write_failures(storage, root, v, "src-000001", ledger)
    sidecars.write_sidecar(storage, root, "9999000011112222", "src-000000", sidecar(["k1"], "v3"))


@pytest.fixture(params=["local", "s3"])
def dataset(request, tmp_path):
    if request.param == "local":
        storage, root = Storage(), str(tmp_path / "ds")
    else:
        storage = request.getfixturevalue("s3_storage")
        root = request.getfixturevalue("s3_bucket") + "/datasets/ds"
    build(storage, root)
    return storage, root


def test_resolve_version_by_hash_prefix_and_name(dataset):
    storage, root = dataset
    assert resolve_version(storage, root, "a1b2c3d4e5f60718") == "a1b2c3d4e5f60718"
    assert resolve_version(storage, root, "a1b2") == "a1b2c3d4e5f60718"
    assert resolve_version(storage, root, "qwen7b/detailed") == "a1b2c3d4e5f60718"
    with pytest.raises(CaptionVersionError, match="ambiguous prefix"):
        resolve_version(storage, root, "a1")
    with pytest.raises(CaptionVersionError, match="name 'qwen7b/structured' is ambiguous") as err:
        resolve_version(storage, root, "qwen7b/structured")
    assert "9999000011112222" in str(err.value) and "a1ffffffffffff00" in str(err.value)
    with pytest.raises(CaptionVersionError, match="matches no caption version") as err:
        resolve_version(storage, root, "nope")
    assert "qwen7b/detailed" in str(err.value)  # the error lists what exists


def test_resolve_version_without_any_captions(tmp_path):
    with pytest.raises(CaptionVersionError, match="no caption versions"):
        resolve_version(Storage(), str(tmp_path), "x")


def test_load_captions_joins_by_key(dataset):
    storage, root = dataset
    assert load_captions(storage, root, "a1b2c3d4e5f60718") == {"k1": "v1 k1", "k2": "v1 k2", "k3": "v1 k3"}
    assert load_captions(storage, root, "a1b2c3d4e5f60718", shard="src-000001") == {"k3": "v1 k3"}
    assert load_captions(storage, root, "9999000011112222") == {"k1": "v3 k1"}
    assert load_captions(storage, root, "a1ffffffffffff00") == {}
    with pytest.raises(CaptionVersionError, match="does not exist"):
        load_captions(storage, root, "0000000000000000")


def test_list_versions_counts(dataset):
    storage, root = dataset
    rows = {r["version"]: r for r in list_versions(storage, root)}
    assert set(rows) == {"a1b2c3d4e5f60718", "a1ffffffffffff00", "9999000011112222"}
    a = rows["a1b2c3d4e5f60718"]
    assert (a["name"], a["shards_done"], a["shards_total"], a["captions"], a["failures"]) == ("qwen7b/detailed", 2, 2, 3, 1)
    assert (rows["9999000011112222"]["shards_done"], rows["9999000011112222"]["captions"]) == (1, 1)
    assert rows["a1ffffffffffff00"]["captions"] == 0


def test_sidecars_are_sorted_and_empty_ledgers_disappear(dataset):
    storage, root = dataset
    frame = storage.read_parquet(caption_sidecar_uri(root, "a1b2c3d4e5f60718", "src-000000"))
    assert list(frame["key"]) == ["k1", "k2"] and list(frame.columns) == list(sidecars.SIDECAR_COLUMNS)
    uri = caption_failures_uri(root, "a1b2c3d4e5f60718", "src-000001")
    assert storage.exists(uri)
    sidecars.write_failures(storage, root, "a1b2c3d4e5f60718", "src-000001", pd.DataFrame(columns=sidecars.FAILURE_COLUMNS))
    assert not storage.exists(uri)


def test_resolve_dataset_root_accepts_root_or_shards_folder(dataset):
    storage, root = dataset
    assert sidecars.resolve_dataset_root(storage, root) == root
    assert sidecars.resolve_dataset_root(storage, root + "/shards") == root
    with pytest.raises(FileNotFoundError, match="no WebDataset shards"):
        sidecars.resolve_dataset_root(storage, root + "/captions")
