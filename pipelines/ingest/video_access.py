"""How a worker reaches a source video: a local path, or a presigned URL for ``s3://``.

ffprobe/ffmpeg read presigned URLs with HTTP range requests, so a 4K/8K object
is probed from its header and cut from the bytes of its window instead of
being downloaded whole. A presigned URL carries a signature: it is handed to
subprocesses only, and scrubbed from any message that could reach a log or
the rejects table.
"""

from __future__ import annotations

import os
import stat

from pyratok.core.s3_retry import S3RetryConfig, ffmpeg_reconnect_options
from pyratok.core.secrets import scrub_text
from pyratok.core.storage import Storage, is_s3


class VideoAccess:
    def __init__(self, storage: Storage, presign_expiry_s: int):
        self.storage = storage
        self.presign_expiry_s = presign_expiry_s

    def size(self, uri: str) -> int | None:
        """Size in bytes; ``None`` for something that is not a regular file (a FIFO, a device).

        Raises FileNotFoundError when it does not exist.
        """
        if is_s3(uri):
            return self.storage.size(uri)
        st = os.stat(uri)
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def target(self, uri: str) -> str:
        """What to hand to ffprobe/ffmpeg for ``uri``."""
        return self.storage.presigned_url(uri, self.presign_expiry_s) if is_s3(uri) else uri

    @staticmethod
    def scrub(text: str, uri: str, target: str) -> str:
        """A message about ``target`` that names ``uri`` instead and holds no signature."""
        return scrub_text(text.replace(target, uri) if target != uri else text)


def http_input_options(target: str, network_timeout_s: float | None) -> dict[str, str]:
    """ffmpeg/ffprobe input options for ``target``: for an http(s) URL, an I/O timeout and reconnects.

    S3 answers a share of requests with ``503 SlowDown`` or drops the connection; without
    reconnects one such answer would reject a good video as ``probe_failed`` / ``cut_failed``.
    ffmpeg reconnects at open, on seeks and mid-read, with the default storage retry budget
    (:class:`~pyratok.core.s3_retry.S3RetryConfig`).
    """
    if not target.startswith(("http://", "https://")):
        return {}
    options = ffmpeg_reconnect_options(S3RetryConfig().max_attempts)
    if network_timeout_s:
        options["rw_timeout"] = str(int(network_timeout_s * 1_000_000))
    return options
