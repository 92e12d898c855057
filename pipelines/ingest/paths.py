"""Where a metadata row's video may come from: inside its input's videos root, and nowhere else.

On a shared cluster a manifest is untrusted input: ``../secret/private.mp4``, an absolute path or a
symlink inside the root that points out of it would otherwise be read and packed into shards that
other users can read. Every path is resolved (``..`` and, locally, symlinks) before it is allowed;
absolute paths and full URIs outside the root need ``ingest.allow_paths_outside_root``.
"""

from __future__ import annotations

import os
import posixpath

from pyratok.core.storage import is_s3, join, split_s3
from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.reasons import RejectError

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
"""Linux's PATH_MAX and NAME_MAX (S3 allows 1024-byte keys; a longer name fails on any local disk)."""


def check_path_text(path: str) -> None:
    """Control characters, NUL and overlong names are rejects (``bad_path``), not crashes in ffmpeg or open()."""
    for position, char in enumerate(path):
        if ord(char) < 32 or ord(char) == 127:
            raise RejectError(reasons.BAD_PATH, f"path {path!r} holds control character U+{ord(char):04X} at {position}")
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        raise RejectError(reasons.BAD_PATH, f"path of {size} bytes (more than {MAX_PATH_BYTES}): {path[:80]!r}...")
    for name in path.split("/"):
        if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise RejectError(reasons.BAD_PATH, f"path component of more than {MAX_NAME_BYTES} bytes: {name[:80]!r}...")


def _inside_local(path: str, root: str) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _inside_s3(uri: str, root: str) -> bool:
    bucket, key = split_s3(uri)
    root_bucket, prefix = split_s3(root)
    if bucket != root_bucket or any(part in ("..", ".") for part in key.split("/")):
        return False  # S3 keeps ".." literally, but presigned URLs pass through HTTP path normalisers
    prefix = prefix.strip("/")
    return not prefix or key.startswith(prefix + "/")


def resolve_video(videos: str, path: str, *, allow_outside: bool) -> str:
    """The URI of ``path`` (relative to ``videos``, or absolute/URI); ``RejectError`` ``outside_root``
    when it leaves the root, ``bad_path`` when the name itself is unusable."""
    check_path_text(path)
    absolute = is_s3(path) or path.startswith("/") or "://" in path
    if absolute:
        uri: str | None = path
    elif is_s3(videos):
        normal = posixpath.normpath(path)
        uri = None if normal == ".." or normal.startswith(("../", "/")) else join(videos, normal)
    else:
        uri = join(videos, path)
    if allow_outside:
        return uri if uri is not None else join(videos, path)
    if uri is None:
        inside = False
    elif is_s3(uri):
        inside = is_s3(videos) and _inside_s3(uri, videos)
    elif "://" in uri or is_s3(videos):
        inside = False
    else:
        inside = _inside_local(uri, videos)
    if not inside:
        what = "an absolute path/URI" if absolute else "a path"
        raise RejectError(
            reasons.OUTSIDE_ROOT,
            f"{what} {path!r} resolves outside the videos root {videos} (set ingest.allow_paths_outside_root: true "
            "to allow it)",
        )
    return uri
