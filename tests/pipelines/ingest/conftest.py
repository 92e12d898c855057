"""Helpers shared by the ingest integration tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pyratok.core import dataset as layout
from pyratok.core.storage import Storage


def ingest_config(work: Path, *overrides: str, tracking: bool = False):
    from pyratok.config import load

    # no val split unless a test asks (the shared ingested_dataset has none either, so reruns over it match)
    return load(overrides=[f"work_dir={work}", f"tracking.enabled={str(tracking).lower()}", "ingest.split.val_fraction=0",
                           *overrides])


def corpus_inputs(corpus: Path, storage: Storage | None = None, base: str | None = None):
    from pyratok.pipelines.ingest.config import InputSpec
    from pyratok.pipelines.ingest.sample_data import INPUTS_FILE, load_inputs_file

    return [InputSpec(**item) for item in load_inputs_file(base or str(corpus / INPUTS_FILE), storage)]


def snapshot(storage: Storage, root: str) -> dict:
    """What must be identical between two runs: shard names + bytes, manifest rows, rejects."""
    shards = {layout.shard_name(u): hashlib.sha256(storage.read_bytes(u)).hexdigest() for u in layout.list_shards(storage, root)}
    manifest = storage.read_parquet(layout.manifest_uri(root)).drop(columns=["video", "metadata"])
    rejects = storage.read_parquet(layout.rejects_uri(root))[["source", "source_id", "reason", "row", "input"]]
    return {
        "shards": shards,
        "manifest": json.loads(manifest.to_json(orient="records")),
        "rejects": json.loads(rejects.to_json(orient="records")),
    }


@pytest.fixture(scope="session")
def clean_snapshot(ingested_dataset):
    return snapshot(Storage(), ingested_dataset)


@pytest.fixture(scope="session")
def expected_outcomes(sample_corpus):
    """(input index, row) -> "accepted" | reason, from the generator's expected.json."""
    order = ["openvid", "ultravideo", "droplet", "manifest"]
    rows = json.loads((sample_corpus / "expected.json").read_text())["rows"]
    return {(order.index(r["source"]), r["row"]): r["expect"] for r in rows}
