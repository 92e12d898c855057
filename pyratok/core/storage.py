"""One storage interface for local paths and ``s3://`` URIs.

Every stage reads and writes through :class:`Storage`, so "local dir or S3
prefix" is a property of the URI, not of the stage. S3 goes through boto3 and
works against any S3-compatible endpoint (``storage.endpoint_url`` in the
config, else boto3's own ``AWS_ENDPOINT_URL[_S3]``). Credentials are never
part of the config: boto3's chain reads them from the environment, a profile
or an instance role.

Writes are atomic: local files are written under a hidden temporary name in
the destination folder and committed with ``os.replace``; S3 objects become
visible only when their (multipart) upload completes. A reader therefore never
sees half a shard, whatever kills the writer.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Iterator
from urllib.parse import urlparse

from pydantic import Field, field_validator

from pyratok.core.config import StrictModel
from pyratok.core.s3_retry import S3RetryConfig

TMP_PREFIX = ".tmp-"


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the cause."""


class PreconditionFailed(StorageError):
    """A conditional write/delete lost: the object is not at the version the caller expected.

    Raised instead of overwriting what another writer put there (compare-and-swap).
    """


class StorageConfig(StrictModel):
    endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, Ceph, moto...). None: boto3's default / ``AWS_ENDPOINT_URL``."""
    region: str | None = None
    """None: boto3's default (``AWS_REGION`` / ``AWS_DEFAULT_REGION``), else us-east-1."""
    addressing_style: str = "auto"
    """``path`` for servers without virtual-host buckets; ``auto`` lets boto3 decide."""
    multipart_threshold_mb: int = 64
    multipart_chunk_mb: int = 64
    retries: S3RetryConfig = Field(default_factory=S3RetryConfig)
    """How hard boto3 and pyarrow retry 503 SlowDown and dropped connections (``pyratok.core.s3_retry``)."""

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials_in_endpoint(cls, value: str | None) -> str | None:
        if value and urlparse(value).password:
            raise ValueError("storage.endpoint_url must not carry credentials; use AWS_* environment variables")
        return value


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(str(uri))
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def join(base: str | os.PathLike, *parts: str) -> str:
    """Path join that keeps ``s3://`` URIs intact."""
    base = str(base)
    if is_s3(base):
        out = base.rstrip("/")
        for part in parts:
            out = f"{out}/{str(part).strip('/')}"
        return out
    return str(Path(base, *parts))


def basename(uri: str | os.PathLike) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str | os.PathLike) -> str:
    uri = str(uri).rstrip("/")
    if is_s3(uri):
        return uri.rsplit("/", 1)[0]
    return str(Path(uri).parent)


class Storage:
    """Local + S3 file operations. Picklable (the boto3 client is rebuilt per process)."""

    def __init__(self, config: StorageConfig | None = None):
        self.config = config or StorageConfig()
        self._client = None

    def __getstate__(self) -> dict:
        return {"config": self.config, "_client": None}

    # -- S3 plumbing -----------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            from pyratok.core.s3_retry import botocore_retries, read_error_bodies_inside_retries, resume_get_object_bodies

            client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.config.endpoint_url,
                region_name=self.config.region,
                config=Config(
                    s3={"addressing_style": self.config.addressing_style},
                    retries=botocore_retries(self.config.retries),
                ),
            )
            # botocore retries a request until its headers arrive; a GetObject error body that
            # breaks is read inside the retry loop instead, a GetObject body resumes
            read_error_bodies_inside_retries(client)
            resume_get_object_bodies(client, self.config.retries.max_attempts)
            self._client = client
        return self._client

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        mb = 1024 * 1024
        return TransferConfig(
            multipart_threshold=self.config.multipart_threshold_mb * mb,
            multipart_chunksize=self.config.multipart_chunk_mb * mb,
            num_download_attempts=self.config.retries.max_attempts,
        )

    def _s3_call(self, what: str, uri: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"{uri}: not found") from exc
            raise StorageError(f"{what} {uri} failed: {code} {exc.response.get('Error', {}).get('Message', '')}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"{what} {uri} failed: {exc}") from exc

    # -- queries ---------------------------------------------------------
    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return Path(uri).exists()
        bucket, key = split_s3(uri)
        try:
            self._s3_call("stat", uri, self.client.head_object, Bucket=bucket, Key=key)
            return True
        except FileNotFoundError:
            return False

    def size(self, uri: str) -> int:
        if not is_s3(uri):
            return Path(uri).stat().st_size
        bucket, key = split_s3(uri)
        return int(self._s3_call("stat", uri, self.client.head_object, Bucket=bucket, Key=key)["ContentLength"])

    def list(self, prefix: str, suffix: str | tuple[str, ...] | None = None, recursive: bool = True) -> list[str]:
        """Sorted URIs under ``prefix`` (a folder), skipping uncommitted temporaries."""
        suffixes = (suffix,) if isinstance(suffix, str) else suffix
        out: list[str] = []
        if is_s3(prefix):
            bucket, key = split_s3(prefix)
            key = key.rstrip("/") + "/" if key else ""
            paginator = self.client.get_paginator("list_objects_v2")
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
            if not recursive:
                kwargs["Delimiter"] = "/"
            try:
                for page in paginator.paginate(**kwargs):
                    for item in page.get("Contents", []):
                        if not item["Key"].endswith("/"):  # folder markers (pyarrow, consoles) are not files
                            out.append(f"s3://{bucket}/{item['Key']}")
            except Exception as exc:  # noqa: BLE001 - normalise boto errors into one message
                raise StorageError(f"listing {prefix} failed: {exc}") from exc
        else:
            root = Path(prefix)
            if not root.exists():
                return []
            it = root.rglob("*") if recursive else root.iterdir()
            out = [str(p) for p in it if p.is_file()]
        out = [u for u in out if not basename(u).startswith(TMP_PREFIX)]
        if suffixes:
            out = [u for u in out if u.endswith(suffixes)]
        return sorted(out)

    # -- reads -----------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            try:
                return Path(uri).read_bytes()
            except FileNotFoundError:
                raise FileNotFoundError(f"{uri}: not found") from None
        bucket, key = split_s3(uri)
        obj = self._s3_call("read", uri, self.client.get_object, Bucket=bucket, Key=key)
        return obj["Body"].read()

    def read_range(self, uri: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end of the object; S3: one ranged GET)."""
        if length <= 0:
            return b""
        if not is_s3(uri):
            with open(uri, "rb") as fh:
                fh.seek(offset)
                return fh.read(length)
        bucket, key = split_s3(uri)
        rng = f"bytes={offset}-{offset + length - 1}"
        obj = self._s3_call("read", uri, self.client.get_object, Bucket=bucket, Key=key, Range=rng)
        return obj["Body"].read()

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def open_read(self, uri: str) -> IO[bytes]:
        """A streaming binary reader (S3: the response body, read as it arrives)."""
        if not is_s3(uri):
            return open(uri, "rb")
        bucket, key = split_s3(uri)
        return self._s3_call("read", uri, self.client.get_object, Bucket=bucket, Key=key)["Body"]

    @contextlib.contextmanager
    def local_copy(self, uri: str) -> Iterator[Path]:
        """A local file with the object's bytes: the file itself when local, a temp download for S3."""
        if not is_s3(uri):
            if not Path(uri).exists():
                raise FileNotFoundError(f"{uri}: not found")
            yield Path(uri)
            return
        with tempfile.TemporaryDirectory(prefix="pyratok-") as tmp:
            dest = Path(tmp) / basename(uri)
            self.download(uri, dest)
            yield dest

    def download(self, uri: str, dest: str | os.PathLike) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not is_s3(uri):
            shutil.copyfile(uri, dest)
            return dest
        bucket, key = split_s3(uri)
        self._s3_call(
            "download", uri, self.client.download_file, bucket, key, str(dest), Config=self._transfer_config()
        )
        return dest

    def download_dir(self, uri: str, dest: str | os.PathLike) -> Path:
        """Mirror a folder/prefix locally (e.g. a model directory for ``from_pretrained``)."""
        dest = Path(dest)
        for item in self.list(uri):
            rel = item[len(uri.rstrip("/")) + 1 :]
            self.download(item, dest / rel)
        return dest

    def presigned_url(self, uri: str, expires_s: int = 3600) -> str:
        """An HTTP(S) URL ffprobe/ffmpeg can range-read without downloading the whole object.

        It carries a signature: pass it to subprocesses, never log it.
        """
        bucket, key = split_s3(uri)
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
        )

    # -- writes ----------------------------------------------------------
    @contextlib.contextmanager
    def atomic_write(self, uri: str) -> Iterator[Path]:
        """Yield a local path to write; on success it becomes ``uri`` in one step, on error nothing appears."""
        if not is_s3(uri):
            dest = Path(uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{dest.name}"
            try:
                yield tmp
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            return
        with tempfile.TemporaryDirectory(prefix="pyratok-") as tmpdir:
            tmp = Path(tmpdir) / basename(uri)
            yield tmp
            self.upload(tmp, uri)

    def upload(self, src: str | os.PathLike, uri: str) -> None:
        if not is_s3(uri):
            with self.atomic_write(uri) as tmp:
                shutil.copyfile(src, tmp)
            return
        bucket, key = split_s3(uri)
        # upload_file completes the multipart upload last, so the object appears whole or not at all.
        self._s3_call("upload", uri, self.client.upload_file, str(src), bucket, key, Config=self._transfer_config())

    def upload_dir(self, src: str | os.PathLike, uri: str) -> None:
        src = Path(src)
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            self.upload(path, join(uri, str(path.relative_to(src))))

    def write_bytes(self, uri: str, data: bytes) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self._s3_call("write", uri, self.client.put_object, Bucket=bucket, Key=key, Body=data)
            return
        with self.atomic_write(uri) as tmp:
            tmp.write_bytes(data)

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def write_json(self, uri: str, data: Any) -> None:
        self.write_bytes(uri, json.dumps(data, indent=2, sort_keys=True, default=str).encode("utf-8"))

    # -- compare-and-swap (small objects: pipeline state, driver locks) --------
    # A version tag ("etag") names one content of an object: S3's ETag, locally a hash of
    # the bytes. A conditional write names the version it replaces (None: the object must
    # not exist yet) and fails with PreconditionFailed instead of overwriting another
    # writer's version. S3 does this server-side (If-Match / If-None-Match); locally the
    # check and the atomic replace happen under an exclusive fcntl lock on a sidecar file,
    # which the kernel releases when its holder dies, so a killed writer never wedges it.
    def read_bytes_versioned(self, uri: str) -> tuple[bytes, str]:
        """``(bytes, etag)`` of one object; FileNotFoundError when it does not exist."""
        if not is_s3(uri):
            data = self.read_bytes(uri)
            return data, _content_etag(data)
        bucket, key = split_s3(uri)
        obj = self._s3_call("read", uri, self.client.get_object, Bucket=bucket, Key=key)
        return obj["Body"].read(), obj["ETag"]

    def write_bytes_if(self, uri: str, data: bytes, *, etag: str | None) -> str:
        """Write ``data`` only if the object is still at version ``etag`` (None: only if absent).

        Returns the new etag. Raises PreconditionFailed when another writer got there
        first (also when ``etag`` is given and the object is gone).
        """
        if not is_s3(uri):
            with self._local_cas_lock(uri):
                current = _local_etag(Path(uri))
                if current != etag:
                    raise _precondition(uri, etag, current)
                with self.atomic_write(uri) as tmp:
                    tmp.write_bytes(data)
            return _content_etag(data)
        bucket, key = split_s3(uri)
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            out = self._s3_call("write", uri, self.client.put_object, Bucket=bucket, Key=key, Body=data, **condition)
            return out["ETag"]
        except (StorageError, FileNotFoundError) as exc:
            if not isinstance(exc, FileNotFoundError) and not _is_precondition_error(exc):
                raise
            # A retried request whose first attempt landed fails its own precondition:
            # the object then holds exactly our bytes, and the write did happen.
            try:
                now, current = self.read_bytes_versioned(uri)
            except FileNotFoundError:
                now, current = None, None
            if now == data and current is not None:
                return current
            raise _precondition(uri, etag, current) from exc

    def delete_if(self, uri: str, *, etag: str) -> None:
        """Delete the object only if it is still at version ``etag`` (PreconditionFailed if not)."""
        if not is_s3(uri):
            with self._local_cas_lock(uri):
                current = _local_etag(Path(uri))
                if current != etag:
                    raise _precondition(uri, etag, current)
                Path(uri).unlink()
            return
        bucket, key = split_s3(uri)
        try:
            self._s3_call("delete", uri, self.client.delete_object, Bucket=bucket, Key=key, IfMatch=etag)
        except FileNotFoundError as exc:
            raise _precondition(uri, etag, None) from exc
        except StorageError as exc:
            if not _is_precondition_error(exc):
                raise
            raise _precondition(uri, etag, "another version") from exc

    @contextlib.contextmanager
    def _local_cas_lock(self, uri: str) -> Iterator[None]:
        """Exclusive lock on ``.<name>.lock`` beside ``uri`` (created once, never removed:
        removing it would let two writers lock two different files)."""
        import fcntl

        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    def delete(self, uri: str) -> None:
        if not is_s3(uri):
            Path(uri).unlink(missing_ok=True)
            return
        bucket, key = split_s3(uri)
        self._s3_call("delete", uri, self.client.delete_object, Bucket=bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Remove everything under a folder/prefix, temporaries included; returns the count."""
        if not is_s3(prefix):
            root = Path(prefix)
            if not root.exists():
                return 0
            count = sum(1 for p in root.rglob("*") if p.is_file())
            shutil.rmtree(root)
            return count
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/"
        count = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            items = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if items:
                self._s3_call("delete", prefix, self.client.delete_objects, Bucket=bucket, Delete={"Objects": items})
                count += len(items)
        return count

    def clean_temporaries(self, folder: str) -> int:
        """Remove leftovers of killed local writers (S3 has none: uploads are all-or-nothing)."""
        if is_s3(folder) or not Path(folder).exists():
            return 0
        stale = [p for p in Path(folder).rglob(f"{TMP_PREFIX}*") if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    # -- interop ---------------------------------------------------------
    def pyarrow_filesystem(self, uri: str):
        """``(pyarrow.fs.FileSystem, path)`` for pyarrow / Ray Data readers and writers."""
        import pyarrow.fs as pafs

        if not is_s3(uri):
            return pafs.LocalFileSystem(), str(Path(uri).resolve())
        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {}
        endpoint = self.config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        region = self.config.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        if self.config.addressing_style == "path":
            kwargs["force_virtual_addressing"] = False
        from pyratok.core.s3_retry import retrying_s3_filesystem

        return retrying_s3_filesystem(self.config.retries.max_attempts, kwargs), f"{bucket}/{key}"

    def read_parquet(self, uri: str):
        """A pandas DataFrame from a parquet object."""
        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.read_bytes(uri)))

    def write_parquet(self, uri: str, frame) -> None:
        with self.atomic_write(uri) as tmp:
            frame.to_parquet(tmp, index=False)


def _content_etag(data: bytes) -> str:
    """The local version tag: a hash of the content (what S3's ETag is for a simple upload)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()[:32]


def _local_etag(path: Path) -> str | None:
    try:
        return _content_etag(path.read_bytes())
    except FileNotFoundError:
        return None


def _precondition(uri: str, expected: str | None, current: str | None) -> PreconditionFailed:
    want = "absent" if expected is None else f"at version {expected}"
    have = "absent" if current is None else f"at version {current}"
    return PreconditionFailed(f"conditional write to {uri} refused: expected it {want}, it is {have} (another writer changed it)")


def _is_precondition_error(exc: BaseException) -> bool:
    """S3 answers a lost condition with 412 PreconditionFailed, or 409 ConditionalRequestConflict
    when two conditional writes to one key race."""
    cause = exc.__cause__
    response = getattr(cause, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409") or status in (412, 409)
