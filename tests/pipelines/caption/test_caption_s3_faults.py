"""The caption job on S3 through a proxy that answers 503 SlowDown and resets connections.

The job reads shards (downloads), the model (an ``s3://`` checkpoint mirrored for
``from_pretrained``) and writes sidecars, failure ledgers and the version record through the
fault-injecting proxy (``tests.s3_faults``). Its caption set must equal a fault-free run's over
the same dataset, byte for byte, except the fields that record when a run happened
(``version.json``'s ``created``, the failure ledger's ``time``).
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from pyratok.core.dataset import captions_dir
from pyratok.pipelines.caption.job import run_caption
from tests.pipelines.caption.test_job import make_cfg
from tests.s3_faults import FAULTS

pytestmark = pytest.mark.integration

WHEN = {"version.json": ("created",), "failures": ("time",)}
"""Fields that say when a run happened: the only ones allowed to differ."""


def objects(storage, prefix: str) -> dict[str, bytes]:
    bucket, key = prefix[len("s3://") :].split("/", 1)
    out = {}
    for page in storage.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/"):
        for item in page.get("Contents", []):
            out[item["Key"][len(key.rstrip("/")) + 1 :]] = storage.read_bytes(f"s3://{bucket}/{item['Key']}")
    return out


def without_when(name: str, data: bytes):
    """An object's content minus its run-time fields (bytes as they are for everything else)."""
    if name.endswith("version.json"):
        return {k: v for k, v in json.loads(data).items() if k not in WHEN["version.json"]}
    if name.startswith("failures/"):
        return pd.read_parquet(io.BytesIO(data)).drop(columns=list(WHEN["failures"])).to_dict("records")
    return data


def test_caption_job_through_s3_faults_matches_a_clean_run(
    ingested_dataset, ray_local, tiny_model, tmp_path, s3_server, s3_bucket, s3_storage, s3_faults
):
    clean_root, faulty_root = f"{s3_bucket}/clean", f"{s3_bucket}/faulty"
    for root in (clean_root, faulty_root):
        s3_storage.upload_dir(ingested_dataset, root)
    model_uri = f"{s3_bucket}/models/tiny-qwen2.5-vl"
    s3_storage.upload_dir(tiny_model, model_uri)
    inputs_before = objects(s3_storage, faulty_root)

    clean = run_caption(make_cfg(tmp_path / "clean", f"storage.endpoint_url={s3_server}"), shards_root=clean_root, model=model_uri)
    faulty = run_caption(
        make_cfg(tmp_path / "faulty", f"storage.endpoint_url={s3_faults.url}"), shards_root=faulty_root, model=model_uri
    )

    injected, by_client = s3_faults.faults(), s3_faults.by_client()
    print(f"requests {dict(s3_faults.requests)}, faults {injected}, by client {by_client}; "
          f"wall clean {clean.wall_s:.1f} s, faulty {faulty.wall_s:.1f} s")  # fmt: skip
    assert all(injected[kind] > 0 for kind in FAULTS), injected
    assert (tmp_path / "faulty" / "model-cache").is_dir()  # the model came through the proxy too

    assert faulty.version == clean.version
    assert (faulty.shards_committed, faulty.clips, faulty.captioned, faulty.failed) == (
        clean.shards_committed, clean.clips, clean.captioned, clean.failed)  # fmt: skip
    assert faulty.failure_reasons == clean.failure_reasons
    got = objects(s3_storage, captions_dir(faulty_root, faulty.version))
    want = objects(s3_storage, captions_dir(clean_root, clean.version))
    assert sorted(got) == sorted(want) and any(k.endswith(".parquet") and "/" not in k for k in got)
    assert not [k for k in got if k.rsplit("/", 1)[-1].startswith(".tmp-")]
    differ = [k for k in got if without_when(k, got[k]) != without_when(k, want[k])]
    assert not differ, f"caption objects that differ from the fault-free run: {differ}"
    sidecars = [k for k in got if k.endswith(".parquet") and "/" not in k]
    assert all(got[k] == want[k] for k in sidecars)  # the sidecars themselves: bytes, no exceptions
    # and nothing else under the dataset changed (shards, manifest: read, never rewritten)
    after = {k: v for k, v in objects(s3_storage, faulty_root).items() if not k.startswith("captions/")}
    assert after == inputs_before
