"""The caption job: a Ray Data pipeline over shards, committing one sidecar per shard as it completes.

    shard tasks --flat_map--> sample rows --map (CPU)--> sampled frames
                --map_batches (actor pool, one model per actor)--> captions / failures
                --> driver: per-shard sidecar + failure ledger, written atomically

The driver streams the results (``iter_batches``) and commits a shard the
moment all of its rows are in, so a killed run keeps every finished shard
and a rerun skips them (resume). ``retry_failed`` re-captions only the clips in
the failure ledgers (plus any shard not yet done).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyratok.config import PyratokConfig
from pyratok.core.dataset import captions_dir, list_shards, shard_name
from pyratok.core.logging import get_logger
from pyratok.core.progress import stream_rows
from pyratok.core.storage import Storage
from pyratok.pipelines.caption import sidecars
from pyratok.pipelines.caption.backends import resolve_backend
from pyratok.pipelines.caption.config import TINY_MODEL, CaptionConfig
from pyratok.pipelines.caption.models import check_model, ensure_tiny_model, model_location
from pyratok.pipelines.caption.versioning import default_version_name, model_identity, prompt_hash, version_id, version_spec
from pyratok.pipelines.caption.vision import VisionSpec
from pyratok.pipelines.caption.worker import CaptionWorker, shard_frames

log = get_logger(__name__)

STAGE = "caption"


@dataclass
class CaptionResult:
    version: str
    name: str
    dataset_root: str
    backend: str
    shards_total: int = 0
    shards_skipped: int = 0
    """Already committed before this run (resume)."""
    shards_committed: int = 0
    clips: int = 0
    captioned: int = 0
    failed: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    generated_tokens: int = 0
    wall_s: float = 0.0
    run_id: str | None = None
    samples: list[dict] = field(default_factory=list)

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("samples")
        data.update(clips_per_s=round(self.clips_per_s, 3), generated_tokens_per_s=round(self.tokens_per_s, 2))
        return data


@dataclass
class ShardTask:
    shard: str
    uri: str
    retry_keys: list[str] = field(default_factory=list)
    """Empty: caption the whole shard. Else: only these keys (from the failure ledger)."""


def plan_tasks(storage: Storage, root: str, version: str, retry_failed: bool) -> tuple[list[ShardTask], int, int]:
    """(tasks, shards in the dataset, shards skipped as already committed)."""
    shards = list_shards(storage, root)
    done = sidecars.committed_shards(storage, root, version)
    tasks = [ShardTask(shard_name(u), u) for u in shards if shard_name(u) not in done]
    if retry_failed:
        uris = {shard_name(u): u for u in shards}
        ledger = sidecars.read_failures(storage, root, version)
        for shard, keys in ledger.groupby("shard")["key"]:
            if shard in done and shard in uris:
                tasks.append(ShardTask(shard, uris[shard], sorted(set(keys.astype(str)))))
    skipped = len(done) - sum(1 for t in tasks if t.retry_keys)
    return tasks, len(shards), skipped


class ShardCommitter:
    """Collects result rows per shard on the driver and writes each shard's files once it is complete."""

    def __init__(self, storage: Storage, root: str, version: str, tasks: list[ShardTask], samples_to_keep: int):
        self.storage, self.root, self.version = storage, root, version
        self.tasks = {t.shard: t for t in tasks}
        self.rows: dict[str, dict[str, dict]] = defaultdict(dict)
        """shard -> key -> row (by key: a retried Ray task may deliver a row twice)."""
        self.expected: dict[str, int] = {}
        self.committed: set[str] = set()
        self.reasons: Counter = Counter()
        self.clips = self.captioned = self.failed = self.tokens = 0
        self.samples: list[dict] = []
        self.samples_to_keep = samples_to_keep

    def add(self, row: dict) -> None:
        shard = row["shard"]
        if shard in self.committed or row["key"] in self.rows[shard]:
            return
        self.rows[shard][row["key"]] = row
        self.expected[shard] = int(row["expected"])
        self.clips += 1
        self.tokens += int(row["generated_tokens"])
        if row["error"]:
            self.failed += 1
            self.reasons[row["error"]] += 1
        else:
            self.captioned += 1
            if len(self.samples) < self.samples_to_keep:
                self.samples.append({"shard": shard, "key": row["key"], "caption": row["caption"]})
        if len(self.rows[shard]) >= self.expected[shard]:
            self.commit(shard)

    def finish(self) -> None:
        """Shards that produced no rows at all (empty tars) still get an (empty) sidecar."""
        for shard, task in self.tasks.items():
            if shard not in self.committed and not self.rows.get(shard) and not task.retry_keys:
                self.commit(shard)
        incomplete = [s for s, rows in self.rows.items() if rows and s not in self.committed]
        if incomplete:
            raise RuntimeError(f"shards with missing results (not committed, rerun resumes them): {incomplete}")

    def fill(self, result: "CaptionResult") -> None:
        result.shards_committed = len(self.committed)
        result.clips, result.captioned, result.failed = self.clips, self.captioned, self.failed
        result.failure_reasons = dict(self.reasons)
        result.generated_tokens = self.tokens
        result.samples = self.samples

    def commit(self, shard: str) -> None:
        import pandas as pd

        rows = list(self.rows.pop(shard, {}).values())
        ok = pd.DataFrame([r for r in rows if not r["error"]], columns=sidecars.SIDECAR_COLUMNS)
        ok = ok.astype({"key": str, "caption": str, "fields": str, "generated_tokens": "int32", "truncated": bool, "frames": "int32"})
        stamp = sidecars.now_iso()
        bad = pd.DataFrame(
            [{"key": r["key"], "shard": shard, "stage": r["stage"], "reason": r["error"], "detail": r["detail"], "time": stamp}
             for r in rows if r["error"]],
            columns=sidecars.FAILURE_COLUMNS,
        )  # fmt: skip
        task = self.tasks[shard]
        if task.retry_keys:
            # Sidecar first: a crash between the two writes leaves stale ledger rows (retried again), never lost captions.
            old = sidecars.read_sidecar(self.storage, self.root, self.version, shard)
            merged = pd.concat([old[~old["key"].isin(ok["key"])], ok], ignore_index=True)
            sidecars.write_sidecar(self.storage, self.root, self.version, shard, merged)
            ledger = sidecars.read_failures(self.storage, self.root, self.version, shard)
            ledger = pd.concat([ledger[~ledger["key"].isin(task.retry_keys)], bad], ignore_index=True)
            sidecars.write_failures(self.storage, self.root, self.version, shard, ledger)
        else:
            # Ledger first: a committed sidecar (the "shard done" mark) always has its ledger beside it.
            sidecars.write_failures(self.storage, self.root, self.version, shard, bad)
            sidecars.write_sidecar(self.storage, self.root, self.version, shard, ok)
        self.committed.add(shard)
        log.debug("committed %s: %d captions, %d failures", shard, len(ok), len(bad))  # progress lines say how far


def _version_record(cfg: CaptionConfig, version: str, location: str, backend: str) -> dict:
    return {
        "version": version,
        "name": default_version_name(cfg),
        "model": model_identity(cfg),
        "model_location": location,
        "prompt_hash": prompt_hash(cfg),
        "spec": version_spec(cfg),
        "created": sidecars.now_iso(),
        "backend": backend,
    }


def ensure_version_record(storage: Storage, root: str, cfg: CaptionConfig, version: str, location: str, backend: str) -> dict:
    """Create version.json on first use; later runs keep it (renaming only when a name is set explicitly)."""
    try:
        record = sidecars.read_version_record(storage, root, version)
    except FileNotFoundError:
        record = _version_record(cfg, version, location, backend)
        sidecars.write_version_record(storage, root, version, record)
        return record
    if cfg.version_name and record.get("name") != cfg.version_name:
        record["name"] = cfg.version_name
        sidecars.write_version_record(storage, root, version, record)
    return record


def prepare_model(cfg: CaptionConfig, storage: Storage, work_dir: str) -> str:
    """Where the workers load the model from (built first for ``tiny``); fails fast when it is not there."""
    if not cfg.model:
        raise ValueError("caption.model is not set: pass --model DIR_OR_URI (or set caption.model in the config)")
    if cfg.model == TINY_MODEL:
        ensure_tiny_model(work_dir)
    location = model_location(cfg.model, work_dir)
    check_model(storage, location)
    return location


def actor_pool(concurrency: int | tuple[int, int]):
    """A fixed pool for an int, an autoscaling one for ``(min, max)``."""
    import ray.data

    if isinstance(concurrency, int):
        return ray.data.ActorPoolStrategy(size=concurrency)
    low, high = concurrency
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high)


def build_dataset(tasks: list[ShardTask], *, storage: Storage, cfg: CaptionConfig, spec: VisionSpec, backend: str,
                  location: str, cache_dir: str):  # fmt: skip
    import ray.data

    items = [{"shard": t.shard, "uri": t.uri, "keys": t.retry_keys} for t in tasks]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # Read + decode run as CPU tasks beside the model actors. Their memory reservation also keeps Ray
    # Data from fusing them into the actor (it fuses ops whose resource requests match, e.g. CPU-only),
    # which would serialise decoding with generation inside each actor.
    ds = ds.flat_map(
        shard_frames, fn_kwargs={"storage": storage, "frames": cfg.frames, "spec": spec},
        num_cpus=cfg.decode_num_cpus, memory=cfg.decode_memory_mb * 1024 * 1024,
        compute=ray.data.TaskPoolStrategy(size=cfg.decode_concurrency),
    )  # fmt: skip
    return ds.map_batches(
        CaptionWorker,
        fn_constructor_kwargs={
            "caption": cfg.model_dump(mode="json"), "backend": backend, "location": location,
            "cache_dir": cache_dir, "storage": storage.config.model_dump(mode="json"),
        },
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=actor_pool(cfg.concurrency),
        num_gpus=cfg.num_gpus_per_actor or None,
        num_cpus=cfg.num_cpus_per_actor,
    )  # fmt: skip


def run_caption(
    cfg: PyratokConfig,
    *,
    shards_root: str,
    model: str | None = None,
    backend: str | None = None,
    retry_failed: bool = False,
    address: str | None = None,
    parent_run_id: str | None = None,
) -> CaptionResult:
    """Caption a dataset's shards into the caption set of ``cfg.caption`` (+ overrides); returns what happened."""
    from pyratok.core.ray_runtime import init_ray
    from pyratok.core.tracking import stage_run

    updates = {k: v for k, v in (("model", model), ("backend", backend)) if v}
    ccfg = CaptionConfig.model_validate({**cfg.caption.model_dump(), **updates})
    cfg = cfg.model_copy(update={"caption": ccfg})
    storage = Storage(cfg.storage)
    root = sidecars.resolve_dataset_root(storage, shards_root)
    version = version_id(ccfg)
    location = prepare_model(ccfg, storage, cfg.work_dir)
    backend_name = resolve_backend(ccfg.backend, num_gpus_per_actor=ccfg.num_gpus_per_actor)
    spec = VisionSpec.from_storage(storage, location)
    record = ensure_version_record(storage, root, ccfg, version, location, backend_name)
    storage.clean_temporaries(captions_dir(root, version))
    tasks, total, skipped = plan_tasks(storage, root, version, retry_failed)
    result = CaptionResult(version, record.get("name", ""), root, backend_name, shards_total=total, shards_skipped=skipped)
    log.info(
        "caption version %s (%s): %d shards, %d already done, %d to process%s",
        version, result.name, total, skipped, len(tasks), " (incl. failure retries)" if retry_failed else "",
    )  # fmt: skip
    cache_dir = str(Path(ccfg.model_cache_dir or Path(cfg.work_dir) / "model-cache").expanduser().resolve())
    tags = {"pyratok.caption_version": version}
    with stage_run(cfg.tracking, cfg.work_dir, STAGE, cfg, parent_run_id=parent_run_id, tags=tags,
                   sections=("caption",)) as run:
        if run is not None:
            from pyratok.core.tracking import log_dataset

            result.run_id = run.info.run_id
            log_dataset(storage, root, "caption")
        if tasks:
            init_ray(cfg.ray, address)
            committer = ShardCommitter(storage, root, version, tasks, ccfg.samples_to_log)
            ds = build_dataset(
                tasks, storage=storage, cfg=ccfg, spec=spec, backend=backend_name, location=location, cache_dir=cache_dir
            )
            started = time.perf_counter()
            for row in stream_rows(ds, total=None, desc="caption", unit="clips", logger=log):
                committer.add(row)
            committer.finish()
            result.wall_s = time.perf_counter() - started
            committer.fill(result)
        if run is not None:
            _log_run(result, record, storage, root)
    log.info(
        "caption %s: %d clips (%d captioned, %d failed) in %.1fs: %.2f clips/s, %.1f generated tokens/s",
        version, result.clips, result.captioned, result.failed, result.wall_s, result.clips_per_s, result.tokens_per_s,
    )  # fmt: skip
    return result


SAMPLES_TABLE = "sample_captions.json"


def _log_run(result: CaptionResult, record: dict, storage: Storage, root: str) -> None:
    import mlflow
    import pandas as pd

    # Tags, not params: the caption section is already logged as params (caption.version_name included).
    mlflow.set_tags(
        {"pyratok.caption_version": result.version, "pyratok.caption_version_name": result.name,
         "pyratok.caption_backend": result.backend, "pyratok.dataset_root": root,
         "pyratok.caption_prompt_hash": record.get("prompt_hash", "")}
    )  # fmt: skip
    metrics = {
        "shards_total": result.shards_total, "shards_skipped": result.shards_skipped,
        "shards_committed": result.shards_committed, "clips": result.clips, "captioned": result.captioned,
        "failed": result.failed, "generated_tokens": result.generated_tokens, "wall_s": result.wall_s,
        "clips_per_s": result.clips_per_s, "generated_tokens_per_s": result.tokens_per_s,
    }  # fmt: skip
    metrics.update({f"failed.{reason}": n for reason, n in result.failure_reasons.items()})
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    with tempfile.TemporaryDirectory(prefix="pyratok-caption-") as tmp:
        if result.samples:  # a table the MLflow UI shows (and mlflow.load_table reads back)
            mlflow.log_table(pd.DataFrame(result.samples, columns=["shard", "key", "caption"]),
                             f"caption/{SAMPLES_TABLE}")
        version_file = os.path.join(tmp, "version.json")
        Path(version_file).write_text(json.dumps(record, indent=2, sort_keys=True))
        mlflow.log_artifact(version_file, "caption")
        summary = os.path.join(tmp, "caption_summary.json")
        Path(summary).write_text(json.dumps(result.summary(), indent=2))
        mlflow.log_artifact(summary, "caption")
