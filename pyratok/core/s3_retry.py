"""One retry policy for every S3 client pyratok runs: boto3, pyarrow's S3 filesystem, ffmpeg.

S3 at scale answers ``503 SlowDown`` and drops connections as a matter of course; a job of many
thousands of requests meets them every run. Each client retries on its own terms, and each has
a gap that a retry count alone does not close:

* **boto3** retries a request until its response headers arrive, but a ``GetObject`` body that
  breaks halfway (``ResponseStreamingError``) is the caller's problem.
  :func:`resume_get_object_bodies` makes every body of a client re-issue its GET from the byte
  it reached (``Range`` + ``If-Match`` on the ETag, so a resumed read never splices two
  versions of an object). botocore also reads a ``GetObject``'s error body (``404
  NoSuchKey``) after its retry loop, so a reset there escapes as a raw urllib3
  ``ProtocolError``; :func:`read_error_bodies_inside_retries` moves that read inside it.
* **pyarrow** (Ray Train checkpoints, parquet footers, Ray Data) retries through the AWS C++
  SDK, but ``S3FileSystem`` forgets its ``retry_strategy`` when pickled, and Ray ships the
  filesystem to every worker by pickle: workers would silently fall back to 3 attempts. And
  the SDK gives up on a small ranged read that meets a 503. :func:`retrying_s3_filesystem`
  builds a filesystem that pickles with its policy and retries those reads.
* **ffmpeg/ffprobe** read presigned URLs and by default give up on the first 503 or reset;
  :func:`ffmpeg_reconnect_options` turns on their reconnect logic (open, seek and mid-read).

Retrying is safe because every pyratok write is idempotent: whole objects put under a
deterministic name, multipart uploads whose completion S3 answers the same way when repeated.
"""

from __future__ import annotations

import functools
import io
import time
from typing import Any, Literal

from pydantic import Field

from pyratok.core.config import StrictModel


class S3RetryConfig(StrictModel):
    mode: Literal["standard", "adaptive", "legacy"] = "adaptive"
    """botocore's retry mode. ``adaptive`` also slows the client down while S3 answers SlowDown."""
    max_attempts: int = Field(8, ge=1, le=50)
    """Attempts per request, the first included, for boto3, pyarrow and resumed body reads. ffmpeg's
    presigned reads (ingest) use this default: their command lines are built without the config."""


# -- boto3 -----------------------------------------------------------------------------------------
_PARAMS_KEY = "pyratok_get_object_params"
_CONDITIONS = ("Range", "IfMatch", "IfNoneMatch", "IfModifiedSince", "IfUnmodifiedSince")


def botocore_retries(cfg: S3RetryConfig) -> dict[str, Any]:
    """The ``retries`` argument of ``botocore.config.Config``."""
    return {"mode": cfg.mode, "max_attempts": cfg.max_attempts}


def read_error_bodies_inside_retries(client) -> None:
    """Read the error body of a streaming request (``GetObject`` -> ``404 NoSuchKey``) while it
    can still be retried, so a connection broken inside it is retried like one broken inside
    the headers instead of raising urllib3's ``ProtocolError`` to the caller.

    botocore reads a non-streaming answer's body inside its send (and retries it), but a
    streaming request's error body only later, in ``convert_to_response_dict``, outside the
    try block its retries watch. A ``before-send`` handler that returns the response is
    botocore's own hook for supplying one, and runs inside that try block.
    """
    client.meta.events.register("before-send.s3", functools.partial(_send_reading_error_body, client=client))


def _send_reading_error_body(request, client, **_):
    from botocore.exceptions import ResponseStreamingError

    if not request.stream_output:
        return None  # botocore reads (and retries) these bodies itself
    response = client._endpoint.http_session.send(request)
    if response.status_code >= 300:
        try:
            response.content  # noqa: B018 - read (and cache) the error now, inside the retry loop
        except _stream_errors() as exc:
            raise ResponseStreamingError(error=exc) from exc  # an HTTPClientError: botocore retries it
    return response


def resume_get_object_bodies(client, max_attempts: int) -> None:
    """Make every ``GetObject`` body of ``client`` resume where it broke instead of raising.

    Installed on the client, not per call site, so every reader (whole-object reads, ranged
    reads, streaming shard readers, s3transfer downloads) gets it, including ones added later.
    """
    events = client.meta.events
    events.register("before-parameter-build.s3.GetObject", _remember_params)
    events.register("after-call.s3.GetObject", functools.partial(_wrap_body, client=client, max_attempts=max_attempts))


def _remember_params(params, context, **_):
    context[_PARAMS_KEY] = dict(params)


def _wrap_body(http_response, parsed, context, client, max_attempts, **_):
    params = context.get(_PARAMS_KEY)
    body = parsed.get("Body")
    if params is None or body is None or "PartNumber" in params or getattr(http_response, "status_code", 200) >= 300:
        return
    raw = getattr(body, "_raw_stream", None)
    if raw is None or isinstance(raw, ResumingStream):
        return
    first, last = _span(parsed)
    body._raw_stream = ResumingStream(raw, client, params, parsed.get("ETag"), first, last, max_attempts)


def _span(parsed: dict) -> tuple[int, int]:
    """First and last byte of the object this response carries (its ``Content-Range``, else all of it)."""
    content_range = parsed.get("ContentRange")  # "bytes 100-199/1000"
    if content_range and content_range.startswith("bytes ") and "-" in content_range:
        first, last = content_range[len("bytes ") :].split("/", 1)[0].split("-", 1)
        return int(first), int(last)
    return 0, int(parsed.get("ContentLength") or 0) - 1


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What a raw urllib3 body raises when its connection breaks, truncates or stalls."""
    import http.client

    from urllib3.exceptions import ProtocolError, ReadTimeoutError

    return (ProtocolError, ReadTimeoutError, http.client.HTTPException, OSError)


class ResumingStream:
    """The raw stream under a botocore ``StreamingBody`` that reconnects at the byte it reached.

    The resumed GET asks for ``bytes=<next>-<last>`` with ``If-Match`` on the first response's
    ETag, so an object replaced mid-read fails (``PreconditionFailed``) instead of yielding a
    splice of two versions. The body above (length and checksum checks included) sees one
    uninterrupted stream. ``max_attempts`` bounds consecutive failures without progress.
    """

    def __init__(self, raw, client, params: dict, etag: str | None, first: int, last: int, max_attempts: int):
        self._raw, self._client = raw, client
        self._params = {k: v for k, v in params.items() if k not in _CONDITIONS}
        self._etag, self._first, self._last = etag, first, last
        self._max_attempts = max_attempts
        self._delivered = 0

    def __getattr__(self, name):  # _fp, release_conn, ...: whatever else callers reach for
        if name == "_raw":
            raise AttributeError(name)
        return getattr(self._raw, name)

    def _remaining(self) -> int:
        return self._last + 1 - self._first - self._delivered

    def read(self, amt=None) -> bytes:
        if amt is None or amt < 0:
            chunks = []
            while chunk := self.read(1024 * 1024):
                chunks.append(chunk)
            return b"".join(chunks)
        data = self._attempt(lambda: self._raw.read(amt), amt)
        self._delivered += len(data)
        return data

    def readinto(self, buffer) -> int:
        count = self._attempt(lambda: self._raw.readinto(buffer), len(buffer))
        self._delivered += count
        return count

    def _attempt(self, op, wanted: int):
        errors = _stream_errors()
        failures = 0
        while True:
            try:
                out = op()
                if wanted > 0 and not out and self._remaining() > 0:
                    raise ConnectionError(f"body ended {self._remaining()} bytes early")
                return out
            except errors:
                failures += 1
                if failures >= self._max_attempts or self._remaining() <= 0:
                    raise
                time.sleep(min(0.1 * 2 ** (failures - 1), 5.0))
                self._reopen()

    def _reopen(self) -> None:
        try:
            self._raw.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
            pass
        extra = {"IfMatch": self._etag} if self._etag else {}
        start = self._first + self._delivered
        response = self._client.get_object(**self._params, Range=f"bytes={start}-{self._last}", **extra)
        raw = response["Body"]._raw_stream
        self._raw = raw._raw if isinstance(raw, ResumingStream) else raw

    def close(self) -> None:
        self._raw.close()


# -- pyarrow ----------------------------------------------------------------------------------------
RETRYABLE_ARROW_ERRORS = (
    "AWS Error INTERNAL_FAILURE", "AWS Error NETWORK_CONNECTION", "AWS Error SLOW_DOWN", "AWS Error THROTTLING",
    "AWS Error SERVICE_UNAVAILABLE", "AWS Error UNKNOWN (HTTP status 5",
)  # fmt: skip
"""pyarrow ``OSError`` messages of transient S3 failures (the ones Ray Data's ``retried_io_errors`` retries)."""

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".br", ".lz4", ".zst")
"""What ``open_input_stream(compression="detect")`` decompresses (left to pyarrow)."""

_CLASS = None


def retrying_s3_filesystem(max_attempts: int, kwargs: dict[str, Any]):
    """A ``pyarrow.fs.S3FileSystem`` (``kwargs``) that keeps ``max_attempts`` when pickled to Ray workers.

    Its ``open_input_file`` / ``open_input_stream`` also retry reads the AWS SDK gives up on: a
    small ranged read (a parquet footer: 8 bytes) is received into a buffer of exactly its size,
    so an error answer's XML (a 503 SlowDown: ~250 bytes) overflows it, and the SDK reports a
    non-retryable ``INTERNAL_FAILURE`` ("Failed to flush response stream") instead of the 503
    (see apache/doris#66557 for the same SDK behaviour). Reads that pyarrow's C++ code makes on
    its own (datasets, ``copy_files``) cannot be reached from here; Ray Data retries those itself.
    """
    global _CLASS
    if _CLASS is None:  # built on first use: importing this module does not import pyarrow
        import pyarrow as pa
        import pyarrow.fs as pafs

        class RetryingS3FileSystem(pafs.S3FileSystem):
            """``S3FileSystem`` whose retry strategy survives pickling (pyarrow's own ``__reduce__`` drops it)."""

            def __init__(self, max_attempts: int, kwargs: dict[str, Any]):
                self._max_attempts, self._kwargs = max_attempts, dict(kwargs)
                super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts), **kwargs)

            def __reduce__(self):
                return retrying_s3_filesystem, (self._max_attempts, self._kwargs)

            def open_input_file(self, path):
                opener = functools.partial(super().open_input_file, path)
                return pa.PythonFile(RetryingInput(opener, self._max_attempts), mode="r")

            def open_input_stream(self, path, compression="detect", buffer_size=None):
                compressed = compression not in (None, "detect") or (
                    compression == "detect" and str(path).endswith(COMPRESSED_SUFFIXES))
                if compressed or buffer_size:  # pyarrow's own decompressing / buffered stream
                    return super().open_input_stream(path, compression=compression, buffer_size=buffer_size)
                return self.open_input_file(path)

        _CLASS = RetryingS3FileSystem
    return _CLASS(max_attempts, kwargs)


def _arrow_transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and any(marker in str(exc) for marker in RETRYABLE_ARROW_ERRORS)


def _retry_arrow(op, max_attempts: int):
    for attempt in range(max_attempts):
        try:
            return op()
        except OSError as exc:
            if attempt + 1 >= max_attempts or not _arrow_transient(exc):
                raise
            time.sleep(min(0.1 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


class RetryingInput(io.RawIOBase):
    """A seekable reader over a pyarrow S3 input file that re-opens it after a transient failure."""

    def __init__(self, opener, max_attempts: int):
        super().__init__()
        self._opener, self._max_attempts = opener, max_attempts
        self._file = _retry_arrow(opener, max_attempts)
        self._size = self._file.size()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), max(0, self._size - self._pos))
        if not want:
            return 0

        def read_at() -> bytes:
            if self._file is None:
                self._file = self._opener()
            try:
                return self._file.read_at(want, self._pos)
            except OSError as exc:
                if _arrow_transient(exc):  # the handle may be unusable after this: open it again
                    self._file = None
                raise

        data = _retry_arrow(read_at, self._max_attempts)
        memoryview(buffer).cast("B")[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        finally:
            super().close()


# -- ffmpeg -----------------------------------------------------------------------------------------
def ffmpeg_reconnect_options(max_attempts: int) -> dict[str, str]:
    """ffmpeg HTTP input options: reconnect on 5xx and network errors, at open, seek and mid-read.

    ffmpeg waits 0, 1, 3, 7, ... s between reconnects and gives up once the next wait would pass
    ``reconnect_delay_max``; that cap is set so it tries ``max_attempts`` times in all.
    """
    if max_attempts <= 1:
        return {}
    delay_max = 2 ** (max_attempts - 2) - 1
    return {
        "reconnect": "1",
        "reconnect_on_network_error": "1",
        "reconnect_on_http_error": "5xx",
        "reconnect_delay_max": str(min(delay_max, 4294)),
    }
