"""S3 in, S3 out: the corpus on a moto S3 server on 127.0.0.1; 4K inputs probed by presigned URL."""

import pytest

from pyratok.core import dataset as layout
from pyratok.core.storage import join
from pyratok.pipelines.ingest.job import run_ingest
from pyratok.pipelines.ingest.sample_data import INPUTS_FILE
from tests.pipelines.ingest.conftest import corpus_inputs, ingest_config, snapshot

pytestmark = pytest.mark.integration


def test_s3_to_s3_gives_the_same_shards_as_local(sample_corpus, clean_snapshot, ray_local, s3_server, s3_bucket, s3_storage, tmp_path):
    raw = join(s3_bucket, "raw")
    s3_storage.upload_dir(sample_corpus, raw)
    out = join(s3_bucket, "datasets", "sample")
    cfg = ingest_config(tmp_path / "work", f"storage.endpoint_url={s3_server}")
    inputs = corpus_inputs(sample_corpus, s3_storage, base=join(raw, INPUTS_FILE))
    assert all(i.metadata.startswith("s3://") and i.videos.startswith("s3://") for i in inputs)

    result = run_ingest(cfg, inputs=inputs, output=out)

    assert result.invariant_ok and all(u.startswith(f"{out}/shards/") for u in result.shards)
    # Same clips, same keys, same bytes as the local run (cuts read through presigned URLs).
    assert snapshot(s3_storage, out) == clean_snapshot
    rejects = s3_storage.read_parquet(layout.rejects_uri(out))
    assert not rejects["detail"].str.contains("X-Amz-Signature|http://", regex=True).any()
    assert rejects.set_index("source_id").loc["ov_truncated.mp4", "path"].startswith("s3://")
    assert not [u for u in s3_storage.list(out) if "/.tmp-" in u]
    again = run_ingest(cfg, inputs=inputs, output=out)
    assert (again.shards_written, again.shards_skipped) == (0, len(result.shards))
