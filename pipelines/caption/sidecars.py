"""Caption sets on storage: versioned sidecars beside the shards, joined by sample key.

Layout (``pyratok.core.dataset``)::

    captions/<version>/version.json              what produced the set (model, prompt, sampling, ...)
    captions/<version>/<shard>.parquet           key -> caption (+ fields, tokens); its presence = shard done
    captions/<version>/failures/<shard>.parquet  one row per clip that got no caption, with a reason

Shards are never rewritten and original captions stay in ``<key>.txt`` /
``<key>.json``. Every file is written atomically (``Storage.atomic_write``), so
a killed run leaves no partial sidecar visible. The readers here are the
contract the training data loader codes against: ``resolve_version``,
``load_captions``, ``list_versions``.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable

from pyratok.core.dataset import (
    CAPTION_VERSION_FILE,
    caption_failures_uri,
    caption_sidecar_uri,
    caption_version_uri,
    captions_dir,
    list_shards,
    shards_dir,
)
from pyratok.core.storage import Storage, basename, join, parent

SIDECAR_COLUMNS = ("key", "caption", "fields", "generated_tokens", "truncated", "frames")
FAILURE_COLUMNS = ("key", "shard", "stage", "reason", "detail", "time")
SHARD_FAILURE_KEY = "*"
"""Ledger key of a failure that concerns the whole shard (e.g. an unreadable tar)."""


class CaptionVersionError(ValueError):
    """A caption version that cannot be found or is ambiguous; the message lists what exists."""


# -- dataset root ------------------------------------------------------------
def resolve_dataset_root(storage: Storage, shards: str) -> str:
    """The dataset root for ``--shards``: the root itself, or its ``shards/`` folder."""
    shards = str(shards).rstrip("/") if str(shards) != "/" else str(shards)
    if list_shards(storage, shards):
        return shards
    if basename(shards) == "shards" and storage.list(shards, suffix=".tar", recursive=False):
        return parent(shards)
    raise FileNotFoundError(
        f"{shards}: no WebDataset shards found (expected {shards_dir(shards)}/<shard>.tar from `pyratok ingest`)"
    )


# -- version records -----------------------------------------------------------
def read_version_record(storage: Storage, root: str, version: str) -> dict:
    return storage.read_json(caption_version_uri(root, version))


def write_version_record(storage: Storage, root: str, version: str, record: dict) -> None:
    storage.write_json(caption_version_uri(root, version), record)


def version_records(storage: Storage, root: str) -> list[dict]:
    """Every caption set's version.json under a dataset (sorted by creation time)."""
    base = captions_dir(root)
    records = []
    for uri in storage.list(base, suffix=CAPTION_VERSION_FILE):
        if parent(parent(uri)) != base.rstrip("/"):
            continue
        record = storage.read_json(uri)
        record.setdefault("version", basename(parent(uri)))
        records.append(record)
    return sorted(records, key=lambda r: (str(r.get("created", "")), r["version"]))


def _describe(records: Iterable[dict]) -> str:
    lines = [f"  {r['version']}  {r.get('name', '')}" for r in records]
    return "\n".join(lines) if lines else "  (none)"


def resolve_version(storage: Storage, dataset_root: str, name_or_hash: str) -> str:
    """A caption version id from its hash, a unique prefix of it, or its human name."""
    records = version_records(storage, dataset_root)
    if not records:
        raise CaptionVersionError(
            f"{dataset_root}: no caption versions under {captions_dir(dataset_root)} (run `pyratok caption` first)"
        )
    wanted = str(name_or_hash).strip()
    exact = [r for r in records if r["version"] == wanted]
    if exact:
        return exact[0]["version"]
    named = [r for r in records if r.get("name") == wanted]
    if len(named) == 1:
        return named[0]["version"]
    if len(named) > 1:
        raise CaptionVersionError(
            f"caption version name {wanted!r} is ambiguous in {dataset_root}; pick one by hash:\n{_describe(named)}"
        )
    prefixed = [r for r in records if wanted and r["version"].startswith(wanted)]
    if len(prefixed) == 1:
        return prefixed[0]["version"]
    what = "is an ambiguous prefix" if prefixed else "matches no caption version (hash, hash prefix or name)"
    raise CaptionVersionError(
        f"{wanted!r} {what} in {dataset_root}; available versions:\n{_describe(prefixed or records)}"
    )


# -- sidecars --------------------------------------------------------------------
def sidecar_uris(storage: Storage, root: str, version: str) -> list[str]:
    """Committed per-shard sidecars of a version (failure ledgers and temporaries excluded)."""
    return storage.list(captions_dir(root, version), suffix=".parquet", recursive=False)


def committed_shards(storage: Storage, root: str, version: str) -> set[str]:
    return {basename(u).removesuffix(".parquet") for u in sidecar_uris(storage, root, version)}


def read_sidecar(storage: Storage, root: str, version: str, shard: str):
    """One shard's sidecar as a DataFrame (empty with the right columns when absent)."""
    import pandas as pd

    uri = caption_sidecar_uri(root, version, shard)
    if not storage.exists(uri):
        return pd.DataFrame({c: [] for c in SIDECAR_COLUMNS})
    return storage.read_parquet(uri)


def write_sidecar(storage: Storage, root: str, version: str, shard: str, frame) -> None:
    frame = frame.loc[:, list(SIDECAR_COLUMNS)].sort_values("key").reset_index(drop=True)
    storage.write_parquet(caption_sidecar_uri(root, version, shard), frame)


def load_captions(storage: Storage, dataset_root: str, version_id: str, shard: str | None = None) -> dict[str, str]:
    """key -> caption of one shard (``shard``) or of the whole dataset."""
    if shard is not None:
        frame = read_sidecar(storage, dataset_root, version_id, shard)
        return dict(zip(frame["key"].astype(str), frame["caption"].astype(str)))
    uris = sidecar_uris(storage, dataset_root, version_id)
    if not uris and not storage.exists(caption_version_uri(dataset_root, version_id)):
        raise CaptionVersionError(
            f"{dataset_root}: caption version {version_id!r} does not exist; "
            f"available:\n{_describe(version_records(storage, dataset_root))}"
        )
    out: dict[str, str] = {}
    for uri in uris:
        frame = storage.read_parquet(uri)
        out.update(zip(frame["key"].astype(str), frame["caption"].astype(str)))
    return out


# -- failure ledger ----------------------------------------------------------------
def read_failures(storage: Storage, root: str, version: str, shard: str | None = None):
    """Ledger rows of one shard or of all shards (a DataFrame, possibly empty)."""
    import pandas as pd

    if shard is not None:
        uri = caption_failures_uri(root, version, shard)
        return storage.read_parquet(uri) if storage.exists(uri) else pd.DataFrame({c: [] for c in FAILURE_COLUMNS})
    uris = storage.list(join(captions_dir(root, version), "failures"), suffix=".parquet", recursive=False)
    frames = [storage.read_parquet(u) for u in uris]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in FAILURE_COLUMNS})


def write_failures(storage: Storage, root: str, version: str, shard: str, frame) -> None:
    """Replace a shard's ledger; an empty ledger removes the file (nothing left to retry)."""
    uri = caption_failures_uri(root, version, shard)
    if frame is None or len(frame) == 0:
        if storage.exists(uri):
            storage.delete(uri)
        return
    frame = frame.loc[:, list(FAILURE_COLUMNS)].sort_values("key").reset_index(drop=True)
    storage.write_parquet(uri, frame)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- listing -------------------------------------------------------------------------
def _parquet_rows(storage: Storage, uri: str) -> int:
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(uri)
    with fs.open_input_file(path) as handle:  # reads only the footer
        return pq.ParquetFile(handle).metadata.num_rows


def list_versions(storage: Storage, dataset_root: str) -> list[dict]:
    """One summary per caption set: version, name, model, prompt_hash, created, counts."""
    total_shards = len(list_shards(storage, dataset_root))
    out = []
    for record in version_records(storage, dataset_root):
        version = record["version"]
        sidecars = sidecar_uris(storage, dataset_root, version)
        ledgers = storage.list(join(captions_dir(dataset_root, version), "failures"), suffix=".parquet", recursive=False)
        out.append(
            {
                "version": version,
                "name": record.get("name", ""),
                "model": record.get("model", ""),
                "prompt_hash": record.get("prompt_hash", ""),
                "created": record.get("created", ""),
                "shards_done": len(sidecars),
                "shards_total": total_shards,
                "captions": sum(_parquet_rows(storage, u) for u in sidecars),
                "failures": sum(_parquet_rows(storage, u) for u in ledgers),
            }
        )
    return out
