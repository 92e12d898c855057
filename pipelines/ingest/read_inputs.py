"""Driver side of ingest: metadata tables -> one row per input, or its rejection.

Runs before any video is touched and settles what can be settled from
metadata alone: unparsable rows, duplicates, captions, score thresholds and
(for DropletVideo, whose file names carry a quality label the metadata lacks)
the file lookup. Row ``i`` of input ``n`` is the identity used by the
accepted/rejected invariant.
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from pyratok.core.dataset import sample_key
from pyratok.core.logging import get_logger
from pyratok.core.storage import Storage, StorageError, basename, is_s3, join, split_s3
from pyratok.pipelines.ingest import filters, reasons
from pyratok.pipelines.ingest.caption_text import clean_caption, has_invalid_utf8, repair_utf8
from pyratok.pipelines.ingest.config import IngestConfig, InputSpec
from pyratok.pipelines.ingest.paths import resolve_video
from pyratok.pipelines.ingest.reasons import RejectError, Rejection
from pyratok.pipelines.ingest.sources import RowError, SourceRow, source_format
from pyratok.pipelines.ingest.sources.droplet import clip_file_prefix, suffix_rank
from pyratok.pipelines.ingest.sources.tables import ERROR_FIELD, MetadataError, read_table

log = get_logger(__name__)

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".flv")


@dataclass
class ParsedInputs:
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Inputs that still need their video probed."""
    rejects: list[dict[str, Any]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    """Input rows per input spec."""

    @property
    def total(self) -> int:
        return sum(self.counts)


def reject_record(row: dict[str, Any], rejection: Rejection) -> dict[str, Any]:
    """A rejects-table row (``pyratok.core.dataset.REJECT_COLUMNS`` + where the input came from)."""
    return {
        "source": row["source"],
        "source_id": row.get("source_id", ""),
        "path": row.get("video", ""),
        "reason": rejection.reason,
        "detail": rejection.detail,
        "key": row.get("key", ""),
        "metadata": row["metadata"],
        "row": int(row["row"]),
        "input": int(row["input"]),
    }


def _droplet_index(storage: Storage, videos: str) -> dict[str, str]:
    """``"{ytid}--{start}_{end}-"`` -> file URI, from one listing of the videos folder."""
    candidates: dict[str, list[tuple[float, str]]] = {}
    for uri in storage.list(videos, suffix=VIDEO_SUFFIXES):
        parsed = clip_file_prefix(basename(uri).rsplit(".", 1)[0])
        if parsed is not None:
            candidates.setdefault(parsed[0], []).append((suffix_rank(parsed[1]), uri))
    # several files of one clip: the best score (or quality label), then the first name
    return {prefix: min(found, key=lambda f: (-f[0], f[1]))[1] for prefix, found in candidates.items()}


def check_videos_location(storage: Storage, videos: str) -> None:
    """Fail early, naming it, when the videos folder/prefix cannot be reached at all.

    Otherwise every row would end up a ``missing_file`` reject and the cause (a typo, a missing
    bucket, wrong credentials) would be buried in the rejects table.
    """
    if not is_s3(videos):
        if not Path(videos).is_dir():
            raise ValueError(f"videos folder {videos} does not exist")
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(videos)
    try:
        storage.client.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/" if key else "", MaxKeys=1)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise StorageError(f"videos location {videos}: {error.get('Code', '?')} {error.get('Message', '')}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"videos location {videos}: {exc}") from exc


def _all_absolute(rows: list[dict[str, Any]], column: str) -> bool:
    """A manifest whose paths are all absolute or URIs does not use the videos folder."""
    return all(is_s3(str(r.get(column, ""))) or str(r.get(column, "")).startswith("/") for r in rows)


def _normalize(parsed: SourceRow, cfg: IngestConfig) -> tuple[dict[str, Any], Rejection | None]:
    """Cleaned captions + score filter; the fields of a probe-task row."""
    issues: list[str] = []
    caption, found, rejection = clean_caption(parsed.caption, cfg.captions)
    issues += found
    captions = {}
    for name, text in parsed.captions.items():
        clean, found, rej = clean_caption(text, cfg.captions, name)
        captions[name] = clean
        issues += [f"{name}:{i}" for i in found]
        rejection = rejection or rej
    rejection = rejection or filters.check_scores(parsed.scores, cfg.filters)
    start, end = parsed.window if parsed.window else (-1.0, -1.0)
    fields = {
        "source_id": parsed.source_id,
        "window_start": start,
        "window_end": end,
        "caption": caption,
        "captions": json.dumps(captions, sort_keys=True, ensure_ascii=False),
        "scores": json.dumps(parsed.scores, sort_keys=True),
        "tags": json.dumps({k: clean_caption(v, cfg.captions, k)[0] for k, v in parsed.tags.items()}, sort_keys=True),
        "caption_issues": ",".join(issues),
    }
    return fields, rejection


def read_inputs(storage: Storage, cfg: IngestConfig, specs: list[InputSpec]) -> ParsedInputs:
    """Parse every input's metadata; raise :class:`MetadataError` when a table as a whole is unusable."""
    out = ParsedInputs()
    seen: dict[str, tuple[int, int]] = {}
    for index, spec in enumerate(specs):
        fmt = source_format(spec.source)
        table = read_table(storage, spec.metadata)
        missing = [c for c in fmt.required(cfg.sources) if c not in table.columns]
        if table.rows and missing:
            raise MetadataError(
                f"metadata {spec.metadata} ({spec.source}) lacks column(s) {', '.join(map(repr, missing))}; "
                f"it has {', '.join(map(repr, table.columns[:30]))}"
            )
        if table.rows and not (spec.source == "manifest" and _all_absolute(table.rows, cfg.sources.manifest_path_column)):
            check_videos_location(storage, spec.videos)
        droplet_files = _droplet_index(storage, spec.videos) if spec.source == "droplet" else {}
        out.counts.append(len(table.rows))
        for number, record in enumerate(table.rows):
            base = {"input": index, "metadata": spec.metadata, "row": number, "source": spec.source}
            if record.get(ERROR_FIELD):
                out.rejects.append(reject_record(base, Rejection(reasons.BAD_METADATA, record[ERROR_FIELD])))
                continue
            try:
                parsed = fmt.parse(record, cfg.sources)
            except RowError as exc:
                out.rejects.append(reject_record(base, Rejection(reasons.BAD_METADATA, str(exc))))
                continue
            if has_invalid_utf8(parsed.source_id + parsed.video):
                detail = f"video/id {repair_utf8(parsed.video)!r} is not valid UTF-8"
                out.rejects.append(reject_record(base, Rejection(reasons.BAD_METADATA, detail)))
                continue
            window = parsed.window or (None, None)
            row = {**base, "key": sample_key(spec.source, parsed.source_id, *window)}
            fields, rejection = _normalize(parsed, cfg)
            row.update(fields)
            if parsed.video_is_prefix:
                found = droplet_files.get(parsed.video)
                row["video"] = found or join(spec.videos, parsed.video + "*.mp4")
                if found is None:
                    rejection = rejection or Rejection(
                        reasons.MISSING_FILE, f"no file named {parsed.video}<quality>.<ext> in {spec.videos}"
                    )
                else:  # listed inside the root, but it may be a symlink out of it
                    try:
                        resolve_video(spec.videos, found, allow_outside=cfg.allow_paths_outside_root)
                    except RejectError as exc:
                        rejection = rejection or exc.rejection
            else:
                row["video"] = parsed.video
                try:
                    row["video"] = resolve_video(spec.videos, parsed.video, allow_outside=cfg.allow_paths_outside_root)
                except RejectError as exc:
                    rejection = rejection or exc.rejection
            if rejection is None and row["key"] in seen:
                first_input, first_row = seen[row["key"]]
                rejection = Rejection(
                    reasons.DUPLICATE, f"same clip as row {first_row} of {specs[first_input].metadata} (key {row['key']})"
                )
            if rejection is not None:
                out.rejects.append(reject_record(row, rejection))
                continue
            seen[row["key"]] = (index, number)
            out.rows.append(row)
        log.info("%s: %d rows in %s", spec.source, len(table.rows), spec.metadata)
    return out
