"""Each S3 client pyratok uses survives 503 SlowDown and reset connections (``tests.s3_faults`` proxy).

Every test meets the worst case a ``max_consecutive`` budget allows: ``fraction=1`` makes each
request fail that many times in a row before one gets through. Where a client at its stock
settings would fail, the test shows that too, so it proves the fault is real and the fix needed.
"""

from __future__ import annotations

import os
import pickle
import subprocess

import pytest

from pyratok.core.config import load_config
from pyratok.core.s3_retry import S3RetryConfig, ffmpeg_reconnect_options
from pyratok.core.storage import Storage, StorageConfig, join, split_s3
from tests.s3_faults import FaultPlan, FaultProxy

pytestmark = pytest.mark.integration


def always(*kinds: str, consecutive: int = 3, seed: int = 1) -> FaultPlan:
    return FaultPlan(seed=seed, fraction=1.0, weights=dict.fromkeys(kinds, 1.0), max_consecutive=consecutive)


def test_retry_settings_are_typed_with_defaults():
    cfg = StorageConfig()
    assert (cfg.retries.mode, cfg.retries.max_attempts) == ("adaptive", 8)
    cfg = load_config(StorageConfig, overrides=["retries.max_attempts=3", "retries.mode=standard"])
    assert cfg.retries == S3RetryConfig(mode="standard", max_attempts=3)
    with pytest.raises(ValueError):
        StorageConfig(retries={"max_attempts": 0})
    # ffmpeg waits 0, 1, 3, 7 ... s between tries; its cap allows exactly max_attempts tries
    assert ffmpeg_reconnect_options(1) == {} and ffmpeg_reconnect_options(2)["reconnect_delay_max"] == "0"
    assert ffmpeg_reconnect_options(5)["reconnect_delay_max"] == "7"


def test_reads_resume_where_the_body_broke(s3_server, s3_bucket, s3_storage):
    import boto3
    from botocore.exceptions import ResponseStreamingError

    uri = join(s3_bucket, "blob.bin")
    data = os.urandom(3 * 1024 * 1024 + 17)
    s3_storage.write_bytes(uri, data)
    bucket, key = split_s3(uri)
    with FaultProxy(s3_server, always("reset_response")) as proxy:
        plain = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1")
        with pytest.raises(ResponseStreamingError):  # stock boto3: the broken body is the caller's problem
            plain.get_object(Bucket=bucket, Key=key)["Body"].read()

        storage = Storage(StorageConfig(endpoint_url=proxy.url))
        assert storage.read_bytes(uri) == data
        with storage.open_read(uri) as stream:
            assert b"".join(iter(lambda: stream.read(100_000), b"")) == data
        ranged = storage.client.get_object(Bucket=bucket, Key=key, Range="bytes=1000-2099999")["Body"].read()
        assert ranged == data[1000:2100000]
        with storage.local_copy(uri) as path:  # s3transfer downloads
            assert path.read_bytes() == data
        assert proxy.faults()["reset_response"] >= 10


def test_a_reset_inside_a_get_objects_error_body_is_retried(s3_server, s3_bucket, s3_storage):
    """botocore reads a GetObject's 404 XML after its retry loop; a reset there must be retried too."""
    import boto3
    from urllib3.exceptions import ProtocolError

    bucket, _ = split_s3(s3_bucket)
    missing = join(s3_bucket, "no/such/version.json")
    with FaultProxy(s3_server, always("reset_response")) as proxy:
        plain = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1")
        with pytest.raises(ProtocolError):  # stock boto3: the reset escapes its retries
            plain.get_object(Bucket=bucket, Key="no/such/other.json")
        proxy.reset_counts()

        storage = Storage(StorageConfig(endpoint_url=proxy.url))
        for _ in range(2):
            with pytest.raises(FileNotFoundError, match="no/such/version.json"):
                storage.read_bytes(missing)
        assert proxy.faults()["reset_response"] == 6, proxy.faults()  # each read met three in a row
        assert proxy.requests["boto3"] == 8


def test_a_resumed_read_never_splices_two_versions(s3_server, s3_bucket, s3_storage):
    from botocore.exceptions import ClientError

    uri = join(s3_bucket, "changing.bin")
    s3_storage.write_bytes(uri, os.urandom(2 * 1024 * 1024))
    with FaultProxy(s3_server, always("reset_response", consecutive=1)) as proxy:
        stream = Storage(StorageConfig(endpoint_url=proxy.url)).open_read(uri)
        s3_storage.write_bytes(uri, os.urandom(2 * 1024 * 1024))  # replaced while being read
        with pytest.raises(ClientError, match="PreconditionFailed"):
            stream.read()
        assert proxy.faults()["reset_response"] == 1


def test_multipart_upload_survives_faults_on_every_step(s3_server, s3_bucket, s3_storage, tmp_path):
    """Create, each part, and the completion: each executed and its answer lost, three times over."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(6 * 1024 * 1024 + 5))  # two parts of s3transfer's 5 MiB minimum
    uri = join(s3_bucket, "big.bin")
    with FaultProxy(s3_server, always("reset_response", "slowdown", "reset_request")) as proxy:
        storage = Storage(StorageConfig(endpoint_url=proxy.url, multipart_threshold_mb=1, multipart_chunk_mb=5))
        storage.upload(src, uri)
        assert sum(proxy.faults().values()) >= 3 * 4  # create, 2 parts, complete
    assert s3_storage.read_bytes(uri) == src.read_bytes()
    assert s3_storage.client.head_object(Bucket=split_s3(uri)[0], Key=split_s3(uri)[1])["ETag"].endswith('-2"')


def test_pyarrow_filesystem_keeps_its_retries_when_pickled(s3_server, s3_bucket, s3_storage):
    """Ray ships the filesystem to its workers by pickle; pyarrow's own pickling drops retry_strategy."""
    import pyarrow.fs as pafs

    uri = join(s3_bucket, "ckpt", "a.bin")
    s3_storage.write_bytes(uri, b"checkpoint bytes" * 1000)
    with FaultProxy(s3_server, always("slowdown", "reset_request", "reset_response")) as proxy:
        fs, path = Storage(StorageConfig(endpoint_url=proxy.url, retries={"max_attempts": 6})).pyarrow_filesystem(uri)
        shipped = pickle.loads(pickle.dumps(fs))
        assert isinstance(shipped, pafs.S3FileSystem) and shipped._max_attempts == 6
        with shipped.open_input_file(path) as handle:
            assert handle.read() == b"checkpoint bytes" * 1000

        stock = pickle.loads(pickle.dumps(pafs.S3FileSystem(endpoint_override=proxy.url.split("//")[1], scheme="http",
                                                            retry_strategy=pafs.AwsStandardS3RetryStrategy(6))))  # fmt: skip
        with pytest.raises(OSError):  # back to 3 attempts: 3 faults in a row end it
            stock.get_file_info(path.replace("a.bin", "b.bin"))


def test_pyarrow_small_reads_survive_slowdown(s3_server, s3_bucket, s3_storage):
    """A small ranged read (a parquet footer) cannot hold a 503's XML: the SDK calls that a
    non-retryable INTERNAL_FAILURE, so the filesystem retries such reads itself."""
    import pandas as pd
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    tiny, table = join(s3_bucket, "tiny.json"), join(s3_bucket, "table.parquet")
    s3_storage.write_bytes(tiny, b'{"step": 2}')
    s3_storage.write_parquet(table, pd.DataFrame({"key": list("abc")}))
    with FaultProxy(s3_server, always("slowdown", consecutive=2)) as proxy:
        fs, path = Storage(StorageConfig(endpoint_url=proxy.url)).pyarrow_filesystem(tiny)
        stock = pafs.S3FileSystem(endpoint_override=proxy.url.split("//")[1], scheme="http")
        with pytest.raises(OSError, match="INTERNAL_FAILURE"):
            with stock.open_input_file(path) as handle:
                handle.read()
        with fs.open_input_file(path) as handle:
            assert handle.read() == b'{"step": 2}'
        with fs.open_input_stream(path) as handle:
            assert handle.read() == b'{"step": 2}'
        with fs.open_input_file(split_s3(table)[0] + "/table.parquet") as handle:
            assert pq.ParquetFile(handle).metadata.num_rows == 3
        assert proxy.faults()["slowdown"] >= 6


def test_ffprobe_and_ffmpeg_reconnect_through_faults(s3_server, s3_bucket, s3_storage, tmp_path):
    from pyratok.pipelines.ingest.probe import probe
    from pyratok.pipelines.ingest.video_access import http_input_options

    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=8:duration=1",
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", str(clip)], check=True)  # fmt: skip
    uri = join(s3_bucket, "clip.mp4")
    s3_storage.upload(clip, uri)
    with FaultProxy(s3_server, always("slowdown", "reset_request", "reset_response", consecutive=2)) as proxy:
        url = Storage(StorageConfig(endpoint_url=proxy.url)).presigned_url(uri)
        stock = subprocess.run(["ffprobe", "-v", "error", "-show_format", url], capture_output=True)
        assert stock.returncode != 0  # without reconnects the first fault ends it

        info = probe(url, timeout_s=60, network_timeout_s=10)
        assert (info.width, info.height) == (64, 64)
        options = [a for k, v in http_input_options(url, 10).items() for a in (f"-{k}", v)]
        out = tmp_path / "copy.mp4"
        done = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", *options, "-i", url, "-c", "copy", "-y", str(out)],
                              capture_output=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert proxy.by_client().get("ffmpeg", 0) >= 4
    assert out.stat().st_size > 0
