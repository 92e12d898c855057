"""Shard -> sample rows for the caption job (a Ray Data ``flat_map``).

Each row says how many rows its shard produces (``expected``), so the driver
can commit a shard's sidecar the moment its last caption arrives while the
rest of the dataset is still streaming. A shard that cannot be read yields a
single shard-level failure row, so it is accounted for and retried with
``--retry-failed``.
"""

from __future__ import annotations

import contextlib
import tarfile
from typing import Iterator

from webdataset.tariterators import base_plus_ext

from pyratok.core.storage import Storage, StorageError
from pyratok.pipelines.caption.sidecars import SHARD_FAILURE_KEY

VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")


def _row(shard: str, key: str, expected: int, *, video: bytes = b"", meta: str = "", error: str = "", detail: str = "") -> dict:
    return {"shard": shard, "key": key, "expected": expected, "video": video, "meta": meta, "error": error, "detail": detail}


def sample_groups(tar: tarfile.TarFile) -> dict[str, dict[str, tarfile.TarInfo]]:
    """key -> {extension: member}, with WebDataset's key rule (split at the first dot of the basename)."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    for member in tar.getmembers():
        if not member.isfile():
            continue
        prefix, ext = base_plus_ext(member.name)
        if prefix is None:
            continue
        groups.setdefault(prefix, {})[ext.lower()] = member
    return groups


def shard_samples(task: dict, *, storage: Storage) -> Iterator[dict]:
    """Rows of one shard task ``{"shard", "uri", "keys"}``; ``keys`` (non-empty) limits it to a retry set."""
    shard, uri = task["shard"], task["uri"]
    wanted = set(task.get("keys") or ())
    if SHARD_FAILURE_KEY in wanted:
        wanted = set()  # the whole shard failed last time: redo all of it
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(storage.local_copy(uri))
            tar = stack.enter_context(tarfile.open(path))
            groups = sample_groups(tar)  # reads every header: a damaged tar fails here, before any row
        except (tarfile.TarError, OSError, EOFError, StorageError) as exc:
            yield _row(shard, SHARD_FAILURE_KEY, 1, error="shard_unreadable", detail=f"{uri}: {type(exc).__name__}: {exc}")
            return
        keys = [k for k in groups if not wanted or k in wanted]
        missing = sorted(wanted - set(groups))
        expected = len(keys) + len(missing)
        for key in missing:
            yield _row(shard, key, expected, error="missing_sample", detail=f"{key} is no longer in {uri}")
        for key in keys:
            yield _sample_row(tar, shard, key, groups[key], expected, uri)


def _sample_row(tar: tarfile.TarFile, shard: str, key: str, files: dict, expected: int, uri: str) -> dict:
    try:
        meta = tar.extractfile(files["json"]).read().decode("utf-8", "replace") if "json" in files else ""
        video_ext = next((e for e in VIDEO_EXTS if e in files), None)
        if video_ext is None:
            return _row(shard, key, expected, meta=meta, error="missing_video", detail=f"no video file for {key} in {uri}")
        return _row(shard, key, expected, video=tar.extractfile(files[video_ext]).read(), meta=meta)
    except (tarfile.TarError, OSError, EOFError) as exc:
        return _row(shard, key, expected, error="unreadable_sample", detail=f"{key} in {uri}: {exc}")
