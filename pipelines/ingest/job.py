"""The ingest job: metadata rows -> probe/filter (Ray Data) -> shard plan -> cut + write shards (Ray Data).

Driver steps, in order:
1. parse every input's metadata (rejects what metadata alone settles);
2. Ray Data probe stage: find, probe, filter and plan each remaining input;
3. plan shards deterministically (sort by key, pack by a fixed rule);
4. reconcile with what the output already holds: keep committed shards whose
   digest matches, delete stale ones, write the rest (Ray Data shard stage);
5. manifest.parquet + rejects.parquet + ingest.json, the inputs = accepted +
   rejected check, and the MLflow run (config, counts, throughput, artifacts).

:func:`run_ingest` is the API the CLI and the workflow layer call.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pyratok.core import dataset as layout
from pyratok.core.config import fingerprint
from pyratok.core.logging import get_logger
from pyratok.core.progress import stream_rows
from pyratok.core.storage import Storage, StorageError, join
from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.config import IngestConfig, InputSpec
from pyratok.pipelines.ingest.inspect import ACCEPTED, STORAGE_ERROR, Inspector
from pyratok.pipelines.ingest.read_inputs import ParsedInputs, read_inputs, reject_record
from pyratok.pipelines.ingest.reasons import Rejection
from pyratok.pipelines.ingest.shard_plan import ShardSpec, plan_shards
from pyratok.pipelines.ingest.shard_writer import ShardWriter

if TYPE_CHECKING:
    from pyratok.config import PyratokConfig

log = get_logger(__name__)

STAGE = "ingest"
REJECT_SORT = ["input", "row"]


class InvariantError(RuntimeError):
    """Some input is neither accepted nor rejected, or both: a bug, reported with the row ids."""


@dataclass
class IngestResult:
    output: str
    inputs: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    shards: list[str]
    """Committed shard URIs, sorted."""
    shards_written: int
    shards_skipped: int
    shards_deleted: int
    bytes: int
    """Bytes of all committed shard tars."""
    video_bytes: int
    wall_s: float
    """Seconds of the job itself (Ray start-up excluded; see ``timings_s``)."""
    videos_per_s: float
    mb_per_s: float
    invariant_ok: bool
    run_id: str | None = None
    config_fingerprint: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_inputs(
    cfg: IngestConfig, inputs: list[InputSpec] | None, source: str | None, metadata: str | None, videos: str | None
) -> list[InputSpec]:
    """Explicit inputs, else ``--source/--metadata/--videos``, else ``ingest.inputs`` of the config."""
    given = [source, metadata, videos]
    if any(given) and not all(given):
        raise ValueError("--source, --metadata and --videos go together (one dataset); give all three")
    specs = list(inputs or [])
    if all(given):
        specs.append(InputSpec(source=source, metadata=metadata, videos=videos))
    if not specs:
        specs = list(cfg.inputs)
    if not specs:
        raise ValueError("nothing to ingest: give --source/--metadata/--videos, --inputs FILE, or ingest.inputs in the config")
    return specs


def resolve_output(cfg: PyratokConfig, output: str | None) -> str:
    return output or cfg.ingest.output or join(cfg.work_dir, "dataset")


def run_ingest(
    cfg: PyratokConfig,
    *,
    inputs: list[InputSpec] | None = None,
    source: str | None = None,
    metadata: str | None = None,
    videos: str | None = None,
    output: str | None = None,
    overwrite: bool = False,
    address: str | None = None,
    parent_run_id: str | None = None,
) -> IngestResult:
    """Ingest one or more raw datasets into a WebDataset dataset root; one MLflow run.

    ``cfg`` is the root :class:`pyratok.config.PyratokConfig`. Raises ``ValueError``/
    ``MetadataError`` for bad configuration or metadata tables and ``StorageError``
    for storage trouble; bad *videos* never raise, they end up in ``rejects.parquet``.
    """
    from pyratok.core.ray_runtime import init_ray
    from pyratok.core.tracking import stage_run

    specs = resolve_inputs(cfg.ingest, inputs, source, metadata, videos)
    root = resolve_output(cfg, output)
    storage = Storage(cfg.storage)
    resolved = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"inputs": specs, "output": root})})
    with stage_run(cfg.tracking, cfg.work_dir, STAGE, resolved, parent_run_id=parent_run_id,
                   sections=("ingest", "storage")) as run:
        job = IngestJob(storage=storage, cfg=resolved.ingest, root=root, overwrite=overwrite)
        try:
            result = job.run(lambda: init_ray(cfg.ray, address))
        except BaseException as exc:  # Ctrl-C too: ingest.json must not keep saying "running"
            job.record_failure(exc)
            raise
        if run is not None:
            result.run_id = run.info.run_id
            _log_to_mlflow(storage, root, result, job.shard_stats)
    return result


class IngestJob:
    def __init__(self, *, storage: Storage, cfg: IngestConfig, root: str, overwrite: bool = False):
        self.storage = storage
        self.cfg = cfg
        self.root = root
        self.overwrite = overwrite
        self.shard_stats: list[dict[str, Any]] = []

    # -- the steps -----------------------------------------------------------
    def run(self, start_ray=lambda: None) -> IngestResult:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        self._prepare_output()
        parsed = read_inputs(self.storage, self.cfg, self.cfg.inputs)
        timings["parse_s"] = time.perf_counter() - t0
        log.info("%d input rows; %d settled from metadata, %d to probe", parsed.total, len(parsed.rejects), len(parsed.rows))

        t_ray = time.perf_counter()
        start_ray()
        ray_start = time.perf_counter() - t_ray
        timings["ray_start_s"] = ray_start
        t1 = time.perf_counter()
        inspected = self._inspect(parsed.rows)
        timings["probe_s"] = time.perf_counter() - t1
        accepted, duplicates = drop_content_duplicates([r for r in inspected if r["status"] == ACCEPTED])
        probe_rejects = [self._reject_row(r) for r in inspected if r["status"] != ACCEPTED] + duplicates

        specs = plan_shards(accepted, self.cfg)
        keep, todo, deleted = self._reconcile(specs)
        log.info("%d shards planned: %d already committed, %d to write, %d stale removed", len(specs), len(keep), len(todo), deleted)
        t2 = time.perf_counter()
        written = self._write_shards(todo)
        timings["shards_s"] = time.perf_counter() - t2

        stats_by_name = {**keep, **written}
        self.shard_stats = [_with_row_ids(stats_by_name[s.name], s) for s in specs]
        clips = [c for stats in self.shard_stats for c in stats["clips"]]
        rejects = parsed.rejects + probe_rejects + [r for stats in self.shard_stats for r in stats["rejects"]]
        invariant_ok = self._check_invariant(parsed, clips, rejects)
        self._write_tables(clips, rejects)
        # Throughput is over the job's own work: connecting to (or starting) Ray is not ingest.
        wall = time.perf_counter() - t0 - ray_start
        timings["total_s"] = wall + ray_start
        tar_bytes = sum(s["tar_bytes"] for s in self.shard_stats)
        result = IngestResult(
            output=self.root,
            inputs=parsed.total,
            accepted=len(clips),
            rejected=len(rejects),
            rejected_by_reason=dict(sorted(Counter(r["reason"] for r in rejects).items())),
            shards=[layout.shard_uri(self.root, s.name) for s in specs],
            shards_written=len(written),
            shards_skipped=len(keep),
            shards_deleted=deleted,
            bytes=tar_bytes,
            video_bytes=sum(s["video_bytes"] for s in self.shard_stats),
            wall_s=round(wall, 3),
            videos_per_s=round(parsed.total / wall, 3) if wall > 0 else 0.0,
            mb_per_s=round(tar_bytes / 1e6 / wall, 3) if wall > 0 else 0.0,
            invariant_ok=invariant_ok,
            config_fingerprint=fingerprint(self.cfg.model_dump(mode="json", exclude={"execution"})),
            timings_s={k: round(v, 3) for k, v in timings.items()},
        )
        self.storage.write_json(layout.ingest_summary_uri(self.root), {"status": "complete", **result.to_dict()})
        if not invariant_ok:
            raise InvariantError(f"inputs != accepted + rejected in {self.root}; see the log above")
        return result

    def _prepare_output(self) -> None:
        root = self.root
        if self.overwrite:
            removed = self.storage.delete_prefix(layout.shards_dir(root))
            for uri in (layout.manifest_uri(root), layout.rejects_uri(root), layout.ingest_summary_uri(root)):
                self.storage.delete(uri)
            log.info("--overwrite: removed %d files under %s", removed, layout.shards_dir(root))
        self.storage.clean_temporaries(layout.shards_dir(root))
        try:
            self.storage.write_json(layout.ingest_summary_uri(root), {"status": "running", "inputs": [s.model_dump() for s in self.cfg.inputs]})
        except OSError as exc:
            raise StorageError(f"cannot write to output {root}: {exc}") from exc

    def record_failure(self, exc: BaseException) -> None:
        """Mark ``ingest.json`` failed with the error (keeping any counts it has), best effort:
        when the output itself is what failed, the error still reaches the caller."""
        uri = layout.ingest_summary_uri(self.root)
        try:
            summary = self.storage.read_json(uri) if self.storage.exists(uri) else None
            if summary is None:
                return  # failed before it wrote anything: nothing claims to be running
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.storage.write_json(uri, {**summary, "status": "failed", "error": error})
        except Exception as write_exc:  # noqa: BLE001 - never mask the job's own error
            log.warning("could not record the failure in %s: %s", uri, write_exc)

    def _inspect(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not rows:
            return []
        import ray.data

        execution = self.cfg.execution
        blocks = max(1, -(-len(rows) // execution.probe_batch_size))
        ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            Inspector(self.storage, self.cfg),
            batch_size=execution.probe_batch_size,
            batch_format="pandas",
            num_cpus=execution.probe_num_cpus,
        )
        out = list(stream_rows(ds, total=len(rows), desc="ingest: probe", unit="inputs", logger=log))
        failed = [r for r in out if r["status"] == STORAGE_ERROR]
        if failed:
            raise StorageError(f"{len(failed)} input(s) could not be read; first: {failed[0]['video']}: {failed[0]['detail']}")
        if len(out) != len(rows):
            raise InvariantError(f"probe stage returned {len(out)} rows for {len(rows)} inputs")
        return out

    def _reject_row(self, row: dict[str, Any]) -> dict[str, Any]:
        return reject_record(row, Rejection(row["reason"], row["detail"]))

    def _reconcile(self, specs: list[ShardSpec]) -> tuple[dict[str, dict], list[ShardSpec], int]:
        """(committed stats to keep by name, shards to write, stale files deleted)."""
        existing_tars = {layout.shard_name(u) for u in layout.list_shards(self.storage, self.root)}
        stats_files = self.storage.list(layout.shards_dir(self.root), suffix=layout.STATS_SUFFIX, recursive=False)
        existing_stats = {u.rsplit("/", 1)[-1][: -len(layout.STATS_SUFFIX)]: u for u in stats_files}
        planned = {s.name for s in specs}
        keep: dict[str, dict] = {}
        todo: list[ShardSpec] = []
        for spec in specs:
            stats = None
            if spec.name in existing_tars and spec.name in existing_stats:
                try:
                    stats = self.storage.read_json(existing_stats[spec.name])
                except (ValueError, FileNotFoundError):
                    stats = None
            if stats and stats.get("digest") == spec.digest and self._tar_matches(spec.name, stats):
                keep[spec.name] = stats
            else:
                todo.append(spec)
        deleted = 0
        for name in sorted((existing_tars | set(existing_stats)) - planned):
            self.storage.delete(layout.shard_uri(self.root, name))
            self.storage.delete(layout.shard_stats_uri(self.root, name))
            deleted += 1
        return keep, todo, deleted

    def _tar_matches(self, name: str, stats: dict) -> bool:
        try:
            return self.storage.size(layout.shard_uri(self.root, name)) == stats.get("tar_bytes")
        except FileNotFoundError:
            return False

    def _write_shards(self, todo: list[ShardSpec]) -> dict[str, dict]:
        if not todo:
            return {}
        import ray.data

        # Largest first, so a big shard does not start last and hold up the end of the job.
        items = [s.to_item() for s in sorted(todo, key=lambda s: -s.est_bytes)]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map(
            ShardWriter(self.storage, self.cfg, self.root), num_cpus=self.cfg.execution.shard_num_cpus
        )
        rows = list(stream_rows(ds, total=len(items), desc="ingest: write", unit="shards", logger=log))
        failed = [r for r in rows if r["error"]]
        if failed:
            raise StorageError(f"{len(failed)} shard(s) could not be written; first: {failed[0]['name']}: {failed[0]['error']}")
        return {row["name"]: json.loads(row["stats"]) for row in rows}

    def _check_invariant(self, parsed: ParsedInputs, clips: list[dict], rejects: list[dict]) -> bool:
        expected = {(i, r) for i, count in enumerate(parsed.counts) for r in range(count)}
        accepted_ids = [(c["input"], c["row"]) for c in clips]
        rejected_ids = [(r["input"], r["row"]) for r in rejects]
        seen = Counter(accepted_ids + rejected_ids)
        missing = expected - set(seen)
        doubled = [k for k, n in seen.items() if n > 1]
        extra = set(seen) - expected
        ok = not missing and not doubled and not extra
        log_fn = log.info if ok else log.error
        log_fn(
            "invariant inputs = accepted + rejected: %d = %d + %d -> %s%s",
            parsed.total, len(clips), len(rejects), "OK" if ok else "VIOLATED",
            "" if ok else f" (missing {sorted(missing)[:10]}, doubled {doubled[:10]}, unknown {sorted(extra)[:10]})",
        )  # fmt: skip
        return ok

    def _write_tables(self, clips: list[dict], rejects: list[dict]) -> None:
        import pandas as pd

        manifest = pd.DataFrame(clips, columns=list(MANIFEST_TABLE_COLUMNS))
        manifest["split"] = manifest["split"].fillna("train")  # shards kept from before splits existed
        rejected = pd.DataFrame(rejects, columns=list(REJECT_TABLE_COLUMNS))
        rejected = rejected.sort_values(REJECT_SORT, kind="stable").reset_index(drop=True)
        self.storage.write_parquet(layout.manifest_uri(self.root), manifest)
        self.storage.write_parquet(layout.rejects_uri(self.root), rejected)


MANIFEST_TABLE_COLUMNS = (
    *layout.MANIFEST_COLUMNS, "bytes", "clip_start_s", "clip_end_s", "cut", "video", "metadata", "row", "input",
)  # fmt: skip
REJECT_TABLE_COLUMNS = (*layout.REJECT_COLUMNS, "key", "metadata", "row", "input")


def drop_content_duplicates(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows to keep, ``duplicate`` rejects): rows whose source bytes (sha256) and window are the same.

    The kept copy is the group's smallest key, whichever copy the metadata lists first, so the same
    inputs in another order give the same shards.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    kept = [row for row in rows if not row.get("sha256")]  # not hashed (ingest.dedup.content off)
    for row in rows:
        if row.get("sha256"):
            plan = json.loads(row["plan"])
            groups.setdefault((row["sha256"], round(plan["start_s"], 3), round(plan["end_s"], 3)), []).append(row)
    rejects = []
    for group in groups.values():
        first, *copies = sorted(group, key=lambda r: (r["key"], r["input"], r["row"]))
        kept.append(first)
        for row in copies:
            detail = (f"same content as {first['key']} (row {first['row']} of {first['metadata']}; "
                      f"sha256 {row['sha256'][:16]}, window {json.loads(row['plan'])['start_s']:.3f} s)")  # fmt: skip
            rejects.append(reject_record(row, Rejection(reasons.DUPLICATE, detail)))
    kept.sort(key=lambda r: (r["input"], r["row"]))
    return kept, rejects


def _with_row_ids(stats: dict[str, Any], spec: ShardSpec) -> dict[str, Any]:
    """Stats of a shard with each clip's/reject's input row taken from this run's plan.

    A kept shard's stats may come from a run where the same clips sat in other rows.
    """
    ids = {c["key"]: {"input": c["input"], "metadata": c["metadata"], "row": c["row"]} for c in spec.clips}
    clips = [{**c, **ids.get(c["key"], {})} for c in stats["clips"]]
    rejects = [{**r, **ids.get(r.get("key", ""), {})} for r in stats["rejects"]]
    return {**stats, "clips": clips, "rejects": rejects}


def _log_to_mlflow(storage: Storage, root: str, result: IngestResult, shard_stats: list[dict]) -> None:
    import tempfile
    from pathlib import Path

    import mlflow

    from pyratok.core.tracking import log_file_artifact, log_params

    run_id = mlflow.active_run().info.run_id
    log_params({"output": root, "config_fingerprint": result.config_fingerprint}, run_id)
    metrics = {
        "inputs": result.inputs,
        "accepted": result.accepted,
        "rejected": result.rejected,
        "shards": len(result.shards),
        "shards_written": result.shards_written,
        "shards_skipped": result.shards_skipped,
        "bytes": result.bytes,
        "wall_s": result.wall_s,
        "videos_per_s": result.videos_per_s,
        "mb_per_s": result.mb_per_s,
        "invariant_ok": float(result.invariant_ok),
        **{f"rejected.{reason}": n for reason, n in result.rejected_by_reason.items()},
        **{f"time.{k}": v for k, v in result.timings_s.items()},
    }
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, run_id=run_id)
    for uri in (layout.manifest_uri(root), layout.rejects_uri(root), layout.ingest_summary_uri(root)):
        log_file_artifact(storage, uri, "dataset", run_id)
    with tempfile.TemporaryDirectory(prefix="pyratok-ingest-") as tmp:
        combined = Path(tmp) / "shard_stats.json"
        slim = [{k: v for k, v in s.items() if k not in ("clips", "rejects")} for s in shard_stats]
        combined.write_text(json.dumps(slim, indent=1, sort_keys=True))
        mlflow.MlflowClient().log_artifact(run_id, str(combined), "dataset")
