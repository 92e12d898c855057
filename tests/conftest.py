"""Shared fixtures: real S3 (moto) and MLflow servers on 127.0.0.1, a local Ray, a sample corpus."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from pyratok.workflow import services

# Tests never talk to a real cloud or a user's cluster, whatever the shell exports.
for _var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
    os.environ.pop(_var, None)
# Fake S3 credentials from the start: Ray workers snapshot the environment when the (session)
# Ray starts, which may be before the moto server fixture runs (moto accepts any pair).
for _var, _value in (("AWS_ACCESS_KEY_ID", "test-access-key"), ("AWS_SECRET_ACCESS_KEY", "test-secret-key"),
                     ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
    os.environ[_var] = _value
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server; yields its endpoint URL. Its (fake) credentials are set in the environment."""
    server = services.start_s3(tmp_path_factory.mktemp("moto"))
    creds = {k: v for k, v in server.env.items() if k != "AWS_ENDPOINT_URL"}
    saved = {k: os.environ.get(k) for k in creds}
    os.environ.update(creds)
    yield server.url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh bucket on the moto server; yields ``s3://<bucket>``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def s3_storage(s3_server):
    from pyratok.core.storage import Storage, StorageConfig

    return Storage(StorageConfig(endpoint_url=s3_server))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (sqlite backend, local artifacts); yields its URL."""
    server = services.start_mlflow(tmp_path_factory.mktemp("mlflow-server"))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the session (2 CPUs), shut down at the end."""
    from pyratok.core.ray_runtime import RayConfig, init_ray, shutdown_ray

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=512))
    yield
    shutdown_ray()


@pytest.fixture
def work_dir(tmp_path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    """The raw-video corpus of ``pyratok sample-data`` (real ffmpeg files), generated once per session.

    A folder with ``inputs.yaml`` (the four datasets: openvid, ultravideo, droplet, manifest,
    paths relative to the folder), ``expected.json`` (the outcome of every metadata row under
    ``configs/local.yaml``'s filters) and each source's metadata + ``videos/`` folder. Read-only:
    copy it before changing anything.
    """
    from pyratok.pipelines.ingest.sample_data import write_sample_data

    root = tmp_path_factory.mktemp("sample-corpus")
    write_sample_data(str(root))
    return root


@pytest.fixture(scope="session")
def ingested_dataset(sample_corpus, ray_local, tmp_path_factory) -> str:
    """A dataset root made by the real ingest Ray Data job over ``sample_corpus`` (local storage).

    All four sources go into ONE root with ``configs/local.yaml``'s ingest settings (4 clips
    per shard): ``shards/{droplet,manifest,openvid,ultravideo}-NNNNNN.tar`` (+ ``.stats.json``),
    ``manifest.parquet``, ``rejects.parquet`` and ``ingest.json`` (counts). 15 accepted clips in
    5 shards: h264/hevc/vp9, 720p to 2160p, one portrait, whole-file, remuxed, stream-copied and
    re-encoded clips. Layout: ``pyratok.core.dataset``. Read-only: copy it before writing into it
    (e.g. ``shutil.copytree``), or write caption sidecars into a copy.
    """
    from pyratok.config import load
    from pyratok.pipelines.ingest.config import InputSpec
    from pyratok.pipelines.ingest.job import run_ingest
    from pyratok.pipelines.ingest.sample_data import INPUTS_FILE, load_inputs_file

    work = tmp_path_factory.mktemp("ingest-work")
    # every clip train: the reader's tests count all 15 (the eval tests ingest a val split of their own)
    cfg = load(overrides=[f"work_dir={work}", "tracking.enabled=false", "ingest.split.val_fraction=0"])
    inputs = [InputSpec(**item) for item in load_inputs_file(str(sample_corpus / INPUTS_FILE))]
    result = run_ingest(cfg, inputs=inputs, output=str(work / "dataset"))
    assert result.invariant_ok and result.accepted > 0
    return result.output


@pytest.fixture
def s3_faults(s3_server):
    """A fault-injecting proxy (``tests.s3_faults``) in front of the moto server: 15% of requests get
    503 SlowDown or a reset connection, seeded. Point a client at ``.url``; ``.faults()`` counts
    what it injected. ``.enabled = False`` passes everything through."""
    from tests.s3_faults import FaultPlan, FaultProxy

    with FaultProxy(s3_server, FaultPlan(seed=12, fraction=0.15)) as proxy:
        yield proxy
