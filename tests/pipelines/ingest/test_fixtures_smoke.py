"""The shared fixtures other stages build on: a real corpus and a real ingested dataset."""

import json

import pytest

from pyratok.core import dataset as layout
from pyratok.core.storage import Storage

pytestmark = pytest.mark.integration


def test_ingested_dataset_has_shards_manifest_and_rejects(ingested_dataset):
    import webdataset as wds

    storage = Storage()
    shards = layout.list_shards(storage, ingested_dataset)
    assert len(shards) >= 4
    manifest = storage.read_parquet(layout.manifest_uri(ingested_dataset))
    rejects = storage.read_parquet(layout.rejects_uri(ingested_dataset))
    summary = storage.read_json(layout.ingest_summary_uri(ingested_dataset))
    assert summary["status"] == "complete"
    assert summary["inputs"] == len(manifest) + len(rejects)
    keys = [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)]
    assert sorted(keys) == sorted(manifest["key"])
    first = next(iter(wds.WebDataset(shards[:1], shardshuffle=False)))
    assert {"mp4", "json", "txt"} <= set(first)
    assert json.loads(first["json"])["key"] == first["__key__"]
