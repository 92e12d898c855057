"""Ingest to S3 through a proxy that answers 503 SlowDown and resets connections: same bytes as a clean run.

Every S3 client of the job meets faults: boto3 (listing, HEAD, shard and table uploads, downloads),
ffprobe/ffmpeg (presigned range reads of the source videos). The faulty run writes into its own
prefix; every object it leaves must equal the fault-free run's, byte for byte, except the
run-specific fields of ``ingest.json`` (timings, throughput, its own output prefix).
"""

import json

import pytest

from pyratok.core import dataset as layout
from pyratok.core.config import fingerprint
from pyratok.core.storage import join
from pyratok.pipelines.ingest.job import run_ingest
from pyratok.pipelines.ingest.sample_data import INPUTS_FILE
from tests.pipelines.ingest.conftest import corpus_inputs, ingest_config
from tests.s3_faults import FAULTS

pytestmark = pytest.mark.integration

RUN_SPECIFIC = ("output", "shards", "config_fingerprint", "wall_s", "videos_per_s", "mb_per_s", "timings_s", "run_id")
"""ingest.json fields that legitimately differ between the two runs: timings, and what names the
output prefix (the shard list, and the config fingerprint, which covers ``ingest.output``; the
test checks that the prefix is all they differ by)."""


def objects(storage, prefix: str) -> dict[str, bytes]:
    """Relative key -> bytes of everything under ``prefix`` (temporaries included: there must be none)."""
    bucket, key = prefix[len("s3://") :].split("/", 1)
    out = {}
    for page in storage.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/"):
        for item in page.get("Contents", []):
            out[item["Key"][len(key) + 1 :]] = storage.read_bytes(f"s3://{bucket}/{item['Key']}")
    return out


def explain(got: dict, want: dict, names: list[str]) -> str:
    """The differing rows of differing tables (what a failure message needs)."""
    import io

    import pandas as pd

    out = []
    for name in names:
        if name.endswith(".parquet"):
            a, b = pd.read_parquet(io.BytesIO(got[name])), pd.read_parquet(io.BytesIO(want[name]))
            if a.shape == b.shape and list(a.columns) == list(b.columns):
                mask = (a.astype(str) != b.astype(str)).any(axis=1)
                out.append(f"{name}: faulty {a[mask].to_dict('records')} vs clean {b[mask].to_dict('records')}")
            else:
                out.append(f"{name}: shape {a.shape} vs {b.shape}")
    return "; ".join(out)


def fingerprint_for(cfg, inputs, root: str) -> str:
    """The fingerprint ingest records for ``cfg`` writing to ``root`` (its resolved ingest section)."""
    ingest = cfg.ingest.model_copy(update={"inputs": inputs, "output": root})
    return fingerprint(ingest.model_dump(mode="json", exclude={"execution"}))


def summary(data: bytes, root: str) -> dict:
    record = json.loads(data)
    assert [u[len(root) :] for u in record["shards"]] == [f"/shards/{u.rsplit('/', 1)[1]}" for u in record["shards"]]
    record["shard_names"] = [u.rsplit("/", 1)[1] for u in record["shards"]]
    return {k: v for k, v in record.items() if k not in RUN_SPECIFIC}


def test_ingest_through_s3_faults_is_byte_identical_to_a_clean_run(
    sample_corpus, ray_local, s3_server, s3_bucket, s3_storage, s3_faults, tmp_path
):
    raw = join(s3_bucket, "raw")
    s3_storage.upload_dir(sample_corpus, raw)
    inputs = corpus_inputs(sample_corpus, s3_storage, base=join(raw, INPUTS_FILE))
    clean_root, faulty_root = join(s3_bucket, "clean"), join(s3_bucket, "faulty")

    clean_cfg = ingest_config(tmp_path / "clean", f"storage.endpoint_url={s3_server}")
    faulty_cfg = ingest_config(tmp_path / "faulty", f"storage.endpoint_url={s3_faults.url}")
    clean = run_ingest(clean_cfg, inputs=inputs, output=clean_root)
    faulty = run_ingest(faulty_cfg, inputs=inputs, output=faulty_root)

    # The faults happened, of every kind, to the SDK and to ffmpeg's presigned reads alike.
    injected, by_client = s3_faults.faults(), s3_faults.by_client()
    print(f"requests {dict(s3_faults.requests)}, faults {injected}, by client {by_client}; "
          f"wall clean {clean.wall_s:.1f} s, faulty {faulty.wall_s:.1f} s")
    assert all(injected[kind] > 0 for kind in FAULTS), injected
    assert by_client.get("boto3", 0) > 0 and by_client.get("ffmpeg", 0) > 0, by_client

    assert faulty.invariant_ok and (faulty.accepted, faulty.rejected) == (clean.accepted, clean.rejected)
    assert faulty.rejected_by_reason == clean.rejected_by_reason
    got, want = objects(s3_storage, faulty_root), objects(s3_storage, clean_root)
    assert sorted(got) == sorted(want) and not [k for k in got if "/.tmp-" in k or k.startswith(".tmp-")]
    rel = lambda uri: uri[len(faulty_root) + 1 :]  # noqa: E731
    assert {rel(layout.manifest_uri(faulty_root)), rel(layout.rejects_uri(faulty_root))} <= set(got)
    assert sum(k.endswith(".tar") for k in got) == len(clean.shards) > 0
    summary_name = rel(layout.ingest_summary_uri(faulty_root))
    differ = sorted(k for k in got if k != summary_name and got[k] != want[k])
    assert not differ, f"objects that differ from the fault-free run: {differ}: {explain(got, want, differ)}"
    assert summary(got[summary_name], faulty_root) == summary(want[summary_name], clean_root)
    # the fingerprints differ by the output prefix and nothing else
    assert clean.config_fingerprint == fingerprint_for(faulty_cfg, inputs, clean_root) != faulty.config_fingerprint
    assert faulty.config_fingerprint == fingerprint_for(faulty_cfg, inputs, faulty_root)
