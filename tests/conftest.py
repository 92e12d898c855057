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
