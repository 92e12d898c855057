"""Training with shards and checkpoints on S3 through a proxy that answers 503 SlowDown and resets connections.

Ray Train uploads each checkpoint from its workers through pyarrow's S3 filesystem (which Ray
ships to them by pickle), the data loader streams shards with boto3, and the driver reads the
checkpoint back: all of it through the fault-injecting proxy (``tests.s3_faults``). The run
finishes, its checkpoint lands whole, and the exported tokenizer in it loads, with the same
weights as a fault-free run of the same data and seed.
"""

from __future__ import annotations

import numpy as np
import pytest

from pyratok.core.storage import Storage, StorageConfig
from pyratok.pipelines.train.checkpoint import read_meta
from pyratok.pipelines.train.runner import run_training
from pyratok.pipelines.train.stages import load_stage_config
from tests.pipelines.train.conftest import tiny_train_overrides
from tests.s3_faults import FAULTS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 2


def train(tmp_path, name: str, endpoint: str, bucket: str):
    overrides = [*tiny_train_overrides(tmp_path / name, 1, steps=STEPS, every=1), "tracking.enabled=false",
                 f"storage.endpoint_url={endpoint}", f"train.checkpoint.storage_path={bucket}/{name}/checkpoints"]  # fmt: skip
    cfg = load_stage_config("local", 1, overrides)
    return run_training(cfg, stage=1, data=f"{bucket}/data", strategy="ddp", overrides=overrides)


def test_checkpoints_upload_through_s3_faults_and_load(ray_local, train_dataset, s3_server, s3_bucket, s3_storage, s3_faults, tmp_path):
    from pyratok.model import PyraTok

    for shard in sorted((train_dataset / "shards").glob("*.tar")):
        s3_storage.upload(shard, f"{s3_bucket}/data/shards/{shard.name}")

    clean = train(tmp_path, "clean", s3_server, s3_bucket)
    faulty = train(tmp_path, "faulty", s3_faults.url, s3_bucket)

    injected, by_client = s3_faults.faults(), s3_faults.by_client()
    print(f"requests {dict(s3_faults.requests)}, faults {injected}, by client {by_client}")
    assert all(injected[kind] > 0 for kind in FAULTS), injected
    assert by_client.get("pyarrow", 0) > 0 and by_client.get("boto3", 0) > 0, by_client  # Ray Train's uploads, our reads

    assert faulty.steps == clean.steps == STEPS and faulty.restarts == []
    assert faulty.checkpoint_uri.startswith(f"{s3_bucket}/faulty/checkpoints/")
    assert read_meta(s3_storage, faulty.checkpoint_uri)["step"] == STEPS
    assert faulty.skipped == clean.skipped
    # the checkpoint holds every file the fault-free one does, and its tokenizer loads (read directly from moto)
    rel = lambda uris, root: sorted(u[len(root) :] for u in uris)  # noqa: E731
    assert rel(s3_storage.list(faulty.checkpoint_uri), faulty.checkpoint_uri) == rel(
        s3_storage.list(clean.checkpoint_uri), clean.checkpoint_uri)  # fmt: skip
    direct = Storage(StorageConfig(endpoint_url=s3_server))
    got = PyraTok.from_pretrained(faulty.model_uri, storage=direct).state_dict()
    want = PyraTok.from_pretrained(clean.model_uri, storage=direct).state_dict()
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k].numpy(), want[k].numpy()) for k in got)  # same data, seed and steps
