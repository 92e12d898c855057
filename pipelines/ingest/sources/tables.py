"""Read a metadata table (CSV / JSONL / JSON / parquet) into rows of raw values.

Real metadata dumps are messy: captions with commas, quotes and newlines (CSV
quoting handles them), bytes that are not UTF-8, a JSONL line that is not
JSON. None of that may lose the other rows, so text is decoded with
``surrogateescape`` (the bad bytes survive as lone surrogates that the caption
cleaner flags) and an unparsable JSONL line becomes a row carrying its error.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from pyratok.core.storage import Storage

ERROR_FIELD = "__error__"
"""Key set on a row the table reader could not parse; the row is rejected as bad metadata."""

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")


class MetadataError(ValueError):
    """The metadata table as a whole is unusable (missing, wrong format, missing columns)."""


@dataclass(frozen=True)
class Table:
    uri: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    """In file order: row ``i`` is the ``i``-th data row (its id in manifest and rejects)."""


def table_format(uri: str) -> str:
    name = uri.rsplit("/", 1)[-1].lower()
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    ext = name.rsplit(".", 1)[-1] if "." in name else ""
    if ext == "ndjson":
        return "jsonl"
    if ext in FORMATS:
        return ext
    raise MetadataError(f"metadata {uri}: unknown table format {ext!r} (expected one of {', '.join(FORMATS)})")


def _decompress(uri: str, data: bytes) -> bytes:
    lower = uri.lower()
    if lower.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    if lower.endswith(".bz2"):
        import bz2

        return bz2.decompress(data)
    if lower.endswith(".xz"):
        import lzma

        return lzma.decompress(data)
    if lower.endswith(".zst"):
        raise MetadataError(f"metadata {uri}: zstd tables are not supported; decompress it first")
    return data


def read_table(storage: Storage, uri: str) -> Table:
    """All rows of the table as dicts, with the table's column names."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise MetadataError(f"metadata {uri} not found") from None
    fmt = table_format(uri)
    data = _decompress(uri, data)
    try:
        if fmt in ("csv", "tsv"):
            columns, rows = _read_delimited(data, "\t" if fmt == "tsv" else ",")
        elif fmt == "jsonl":
            rows = _read_jsonl(data)
            columns = _columns_of(rows)
        elif fmt == "json":
            rows = _read_json(data, uri)
            columns = _columns_of(rows)
        else:
            columns, rows = _read_parquet(data)
    except MetadataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure means the table as a whole is unreadable
        raise MetadataError(f"metadata {uri} is not a readable {fmt} table: {exc}") from exc
    return Table(uri=uri, columns=tuple(columns), rows=rows)


def _read_delimited(data: bytes, sep: str) -> tuple[list[str], list[dict[str, Any]]]:
    # The csv module (not pandas' C parser) because it takes surrogate-escaped text as is.
    text = data.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header = next(reader, None)
    if header is None:
        return [], []
    columns = [c.strip() for c in header]
    rows: list[dict[str, Any]] = []
    for cells in reader:
        if not cells:
            continue  # blank line
        if len(cells) != len(columns):
            rows.append({ERROR_FIELD: f"CSV record ending on line {reader.line_num} has {len(cells)} fields, header has {len(columns)}"})
            continue
        rows.append(dict(zip(columns, cells)))
    return columns, rows


def _read_jsonl(data: bytes) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(data.decode("utf-8", errors="surrogateescape").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append({ERROR_FIELD: f"line {number} is not JSON: {exc.msg}"})
            continue
        rows.append(value if isinstance(value, dict) else {ERROR_FIELD: f"line {number} is not a JSON object"})
    return rows


def _read_json(data: bytes, uri: str) -> list[dict[str, Any]]:
    value = json.loads(data.decode("utf-8", errors="surrogateescape"))
    if isinstance(value, dict):
        value = next((v for v in value.values() if isinstance(v, list)), None)
    if not isinstance(value, list):
        raise MetadataError(f"metadata {uri}: a JSON table must be a list of objects (or hold one)")
    return [row if isinstance(row, dict) else {ERROR_FIELD: f"item {i} is not a JSON object"} for i, row in enumerate(value)]


def _read_parquet(data: bytes) -> tuple[list[str], list[dict[str, Any]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    return table.column_names, table.to_pylist()


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update((k, None) for k in row if k != ERROR_FIELD)
    return list(seen)
