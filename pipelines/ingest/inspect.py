"""Per input row: find the video, probe it, filter it, plan its clip (a Ray Data probe task).

Everything here reads headers and packet flags only. The outcome of each row
is either a rejection (reason + detail) or an accepted clip with its probe
info and cut plan; nothing is lost, whatever the file holds.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyratok.core.secrets import scrub_text
from pyratok.core.storage import Storage, StorageError
from pyratok.pipelines.ingest import filters, reasons
from pyratok.pipelines.ingest.clip import ClipPlan, plan_clip
from pyratok.pipelines.ingest.config import IngestConfig
from pyratok.pipelines.ingest.integrity import check_index, is_iso_bmff
from pyratok.pipelines.ingest.probe import ProbeError, VideoInfo, keyframes_near, probe
from pyratok.pipelines.ingest.reasons import RejectError, Rejection
from pyratok.pipelines.ingest.video_access import VideoAccess

ACCEPTED = "accepted"
REJECTED = "rejected"
STORAGE_ERROR = "storage_error"
"""Not an outcome of the input: storage itself failed (credentials, endpoint). The driver raises it,
because Ray Data re-raises task exceptions as a generic UserCodeException that loses the type."""


@dataclass(frozen=True)
class Inspector:
    """Picklable context of a probe task."""

    storage: Storage
    cfg: IngestConfig

    def __call__(self, batch):
        """Ray Data ``map_batches`` UDF: a pandas batch of input rows -> the same rows with outcomes.

        The file-level work (size, probe, stream filters, index check, content hash) runs once per
        source file of the batch, however many windows of it the batch holds (DropletVideo lists a
        dozen clips per source video); only the clip plan is per row.
        """
        import pandas as pd

        records = batch.to_dict(orient="records")
        uris = list(dict.fromkeys(rec["video"] for rec in records))
        threads = min(self.cfg.execution.probe_threads, max(1, len(uris)))
        with ThreadPoolExecutor(threads) as pool:
            files = dict(zip(uris, pool.map(self.inspect_file, uris)))
            outcomes = list(pool.map(lambda rec: self.inspect(rec, files[rec["video"]]), records))
        return pd.DataFrame([{**rec, **out} for rec, out in zip(records, outcomes)])

    def inspect_file(self, uri: str) -> "SourceFile | dict[str, Any]":
        """What every row reading ``uri`` shares, or the outcome dict every such row gets."""
        try:
            return self._inspect_file(uri)
        except Exception as exc:  # noqa: BLE001 - routed per row below, with the same rules
            return _outcome_of(exc)

    def inspect(self, row: dict[str, Any], source: "SourceFile | dict[str, Any] | None" = None) -> dict[str, Any]:
        """``{"status", "reason", "detail", "info", "plan", "est_bytes", "sha256"}`` for one input row."""
        source = self.inspect_file(row["video"]) if source is None else source
        if isinstance(source, dict):
            return source
        try:
            plan = self._plan(row, source)
        except Exception as exc:  # noqa: BLE001 - one odd file must not kill the task; keep the evidence
            return _outcome_of(exc)
        info = source.info
        fraction = plan.duration_s / info.duration_s if info.duration_s > 0 else 1.0
        return {
            "status": ACCEPTED,
            "reason": "",
            "detail": "",
            "info": json.dumps(info.to_dict(), sort_keys=True),
            "plan": json.dumps(plan.to_dict(), sort_keys=True),
            "est_bytes": int(info.size_bytes * min(1.0, fraction)),
            "sha256": source.sha256,
        }

    def _inspect_file(self, uri: str) -> "SourceFile":
        execution = self.cfg.execution
        access = VideoAccess(self.storage, execution.presign_expiry_s)
        try:
            size = access.size(uri)
        except FileNotFoundError:
            raise RejectError(reasons.MISSING_FILE, f"{uri} does not exist") from None
        if size == 0:
            raise RejectError(reasons.EMPTY_FILE, f"{uri} is empty (0 bytes)")
        target = access.target(uri)
        try:
            info = probe(target, timeout_s=execution.probe_timeout_s, network_timeout_s=execution.network_timeout_s)
        except ProbeError as exc:
            raise ProbeError(exc.reason, access.scrub(exc.detail, uri, target)) from None
        if size is not None and info.size_bytes <= 0:
            info = _with_size(info, size)
        rejection = filters.check_stream(info, self.cfg.filters)
        if rejection:
            raise RejectError(*rejection)
        if self.cfg.integrity.check_index and size is not None and is_iso_bmff(info.format_name):
            check_index(lambda offset, length: self.storage.read_range(uri, offset, length), size, uri)
        sha256 = self._content_sha256(uri) if self.cfg.dedup.content else ""
        return SourceFile(access=access, target=target, info=info, sha256=sha256)

    def _plan(self, row: dict[str, Any], source: "SourceFile") -> ClipPlan:
        execution = self.cfg.execution

        def find_keyframes(at_s: float, tolerance_s: float) -> list[float]:
            return keyframes_near(
                source.target, at_s, tolerance_s,
                timeout_s=execution.probe_timeout_s, network_timeout_s=execution.network_timeout_s,
            )  # fmt: skip

        try:
            plan = plan_clip(source.info, _window(row), self.cfg.cut, find_keyframes)
        except ProbeError as exc:
            raise ProbeError(exc.reason, source.access.scrub(exc.detail, row["video"], source.target)) from None
        if isinstance(plan, Rejection):
            raise RejectError(*plan)
        rejection = filters.check_duration(plan.duration_s, self.cfg.filters)
        if rejection:
            raise RejectError(*rejection)
        return plan

    def _content_sha256(self, uri: str) -> str:
        """sha256 of the source file (streamed; the exact-duplicate check compares it with the window)."""
        digest = hashlib.sha256()
        with self.storage.open_read(uri) as stream:
            while chunk := stream.read(HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


@dataclass(frozen=True)
class SourceFile:
    """One source file's shared facts within a probe batch."""

    access: VideoAccess
    target: str
    """What ffprobe/ffmpeg open: a local path or a presigned URL."""
    info: VideoInfo
    sha256: str


def _outcome_of(exc: Exception) -> dict[str, Any]:
    """The row outcome an exception during inspection stands for (messages scrubbed of any signature)."""
    if isinstance(exc, RejectError):
        return _rejected(exc.rejection)
    if isinstance(exc, StorageError):  # the job's problem, not this row's: fail the job, naming it
        return {**_rejected(Rejection("", str(exc))), "status": STORAGE_ERROR}
    return _rejected(Rejection(reasons.PROBE_FAILED, scrub_text(f"{type(exc).__name__}: {exc}")))


HASH_CHUNK = 8 << 20


def _rejected(rejection: Rejection) -> dict[str, Any]:
    return {"status": REJECTED, "reason": rejection.reason, "detail": rejection.detail, "info": "", "plan": "",
            "est_bytes": 0, "sha256": ""}  # fmt: skip


def _window(row: dict[str, Any]) -> tuple[float, float] | None:
    start, end = row.get("window_start"), row.get("window_end")
    if start is None or end is None or start != start or end != end or start < 0:  # NaN/-1 = no window
        return None
    return float(start), float(end)


def _with_size(info: VideoInfo, size: int) -> VideoInfo:
    from dataclasses import replace

    return replace(info, size_bytes=size)
