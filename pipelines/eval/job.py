"""``pyratok eval``: a trained tokenizer scored on a dataset's held-out ``val`` clips, as a Ray Data job.

Shard-reading tasks stream the val samples (and their captions) to a pool of eval actors
(``worker.EvalWorker``: one model load each, batched); the driver gathers the per-clip rows and
computes what only the whole set gives: codebook utilisation, retrieval ranks, rFVD. Results go to
MLflow (metrics, a per-clip table, side-by-side mp4s, the eval config) and, in a pipeline, also to
the parent run at step = training stage (one curve per metric across the pipeline's evals).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from pyratok.core.dataset import manifest_uri, shard_uri
from pyratok.core.progress import stream_rows
from pyratok.core.storage import Storage
from pyratok.pipelines.eval.config import EvalConfig
from pyratok.pipelines.eval.metrics import frechet_distance, retrieval_recall, summarize
from pyratok.pipelines.eval.worker import METRIC_COLUMNS, EvalGeometryError, EvalWorker

log = logging.getLogger(__name__)
STAGE = "eval"


class EvalDataError(ValueError):
    """The dataset cannot be evaluated as asked (no val split, missing captions)."""


@dataclass
class EvalResult:
    model: str
    dataset: str
    clips: int = 0
    """Val clips scored."""
    failed: dict[str, int] = field(default_factory=dict)
    """Val clips that could not be scored, by reason."""
    metrics: dict[str, float] = field(default_factory=dict)
    table: pd.DataFrame | None = None
    run_id: str | None = None
    wall_s: float = 0.0

    def summary_lines(self) -> list[str]:
        m = self.metrics
        lines = [f"eval of {self.model} on {self.clips} val clips of {self.dataset}"
                 + (f" ({sum(self.failed.values())} skipped: {dict(self.failed)})" if self.failed else "")]
        if "psnr" in m:
            line = f"  reconstruction  PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}"
            if "lpips" in m:
                line += f"  LPIPS {m['lpips']:.4f}"
            if "rfvd" in m:
                line += f"  rFVD {m['rfvd']:.2f}"
            lines.append(line)
        if "vae_psnr" in m:
            lines.append(f"  VAE ceiling     PSNR {m['vae_psnr']:.2f} dB  SSIM {m['vae_ssim']:.4f}")
        if "untrained_psnr" in m:
            lines.append(f"  untrained       PSNR {m['untrained_psnr']:.2f} dB  (training gained {m['psnr_gain_db']:+.2f} dB)")
        if "codebook/all/utilisation" in m:
            lines.append(f"  tokens          {m['tokens_per_clip']:.0f}/clip  {m['bits_per_pixel']:.4f} bpp  "
                         f"compression {m['compression']:.0f}x  codebook used {m['codebook/all/used']:.0f} "
                         f"({100 * m['codebook/all/utilisation']:.3f}%)  perplexity {m['codebook/all/perplexity']:.1f}")
        if "retrieval/t2v/R@1" in m:
            ks = sorted({int(k.rsplit("@", 1)[1]) for k in m if k.startswith("retrieval/t2v/R@")})
            lines.append("  retrieval       " + "  ".join(
                f"t2v R@{k} {m[f'retrieval/t2v/R@{k}']:.2f} v2t R@{k} {m[f'retrieval/v2t/R@{k}']:.2f}" for k in ks))
        return lines


# -- inputs ---------------------------------------------------------------------------------------------------
def val_clips(storage: Storage, root: str, max_clips: int | None = None) -> pd.DataFrame:
    """The manifest's val rows (key, shard), sorted by key; a clear error when there are none."""
    uri = manifest_uri(root)
    if not storage.exists(uri):
        raise EvalDataError(f"{root}: no manifest at {uri} (is it a dataset written by `pyratok ingest`?)")
    manifest = storage.read_parquet(uri)
    if "split" not in manifest.columns or not (manifest["split"] == "val").any():
        raise EvalDataError(
            f"{root}: the dataset has no val clips (of {len(manifest)}); it was ingested with "
            "ingest.split.val_fraction=0. Re-ingest with e.g. `-s ingest.split.val_fraction=0.05` "
            "(only the shards holding the new val clips change)"
        )
    val = manifest[manifest["split"] == "val"][["key", "shard"]].sort_values("key").reset_index(drop=True)
    return val.head(max_clips) if max_clips else val


def check_captions(storage: Storage, root: str, version: str, val: pd.DataFrame) -> dict[str, dict[str, str]]:
    """shard -> {key: caption} of the version; every val clip must have one."""
    from pyratok.pipelines.caption.sidecars import load_captions

    out, missing = {}, []
    for shard, keys in val.groupby("shard")["key"]:
        try:
            captions = load_captions(storage, root, version, shard=shard)
        except FileNotFoundError:
            captions = {}
        out[shard] = {k: captions[k] for k in keys if k in captions}
        missing += [k for k in keys if k not in captions]
    if missing:
        raise EvalDataError(f"{root}: caption version {version} has no caption for {len(missing)} of {len(val)} val "
                            f"clips (e.g. {missing[:3]}); caption them first (`pyratok caption --shards {root}`)")
    return out


def read_val_shard(task: dict, *, storage: Storage) -> Iterator[dict]:
    """The val samples of one shard, each with its caption (the version's, else the sample json's)."""
    from pyratok.pipelines.caption.reader import shard_samples

    captions = task.get("captions") or {}
    for row in shard_samples({"shard": task["shard"], "uri": task["uri"], "keys": task["keys"]}, storage=storage):
        try:
            meta = json.loads(row["meta"]) if row["meta"] else {}
        except ValueError:
            meta = {}
        caption = captions.get(row["key"])
        if caption is None:
            caption = str(meta.get("caption") or "")
        yield {"key": row["key"], "shard": row["shard"], "video": row["video"], "caption": caption,
               "frames": int(meta.get("num_frames") or 0), "error": row["error"], "detail": row["detail"]}


# -- the job --------------------------------------------------------------------------------------------------
def resolve_model(storage: Storage, spec: str) -> tuple[str, str | None]:
    """``--model``: a model dir, a training checkpoint, ``runs:/<id>`` or a run id -> (model dir, its run id)."""
    from pyratok.pipelines.train.checkpoint import resolve_init_from

    source = resolve_init_from(storage, spec)
    return source.model_uri, source.run_id


def run_eval(cfg, *, model: str, data: str, caption_version: str | None = None, stage: int | None = None,
             address: str | None = None, parent_run_id: str | None = None) -> EvalResult:
    """Score ``model`` on the val clips of the dataset at ``data`` (``cfg.eval`` says how)."""
    import ray.data

    from pyratok.core.ray_runtime import init_ray
    from pyratok.core.tracking import configure, resolve_tracking_uri, stage_run
    from pyratok.pipelines.caption.sidecars import resolve_dataset_root, resolve_version

    ecfg: EvalConfig = cfg.eval
    storage = Storage(cfg.storage)
    tracking_uri = None
    if cfg.tracking.enabled:
        configure(cfg.tracking, cfg.work_dir)  # a run id in --model resolves against this store
        tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.work_dir)
    model_uri, model_run = resolve_model(storage, model)
    root = resolve_dataset_root(storage, data)
    val = val_clips(storage, root, ecfg.max_clips)
    version = resolve_version(storage, root, caption_version) if caption_version else None
    captions = check_captions(storage, root, version, val) if version else {}
    sample_keys = list(val["key"][: ecfg.samples_to_log])
    # the untrained model is the config's own model section (a random VAE stays random: the vae-warmup stage
    # is part of what the pipeline trains) with the training seed
    baseline = {"model": cfg.model.model_dump(mode="json"), "seed": cfg.train.seed} if ecfg.untrained_baseline else None
    log.info("eval %s on %d val clips of %s%s", model_uri, len(val), root, f" (captions {version})" if version else "")

    tags = {"pyratok.eval.model": model_uri, "pyratok.dataset_root": root}
    if model_run:
        tags["pyratok.eval.model_run"] = model_run
    if stage is not None:
        tags["pyratok.eval.after_stage"] = str(stage)
    result = EvalResult(model=model_uri, dataset=root)
    with stage_run(cfg.tracking, cfg.work_dir, STAGE, cfg, parent_run_id=parent_run_id, tags=tags,
                   sections=("eval",)) as run:
        if run is not None:
            from pyratok.core.tracking import log_dataset

            result.run_id = run.info.run_id
            log_dataset(storage, root, "validation")
        init_ray(cfg.ray, address)
        items = [{"shard": shard, "uri": shard_uri(root, shard), "keys": list(keys), "captions": captions.get(shard, {})}
                 for shard, keys in val.groupby("shard")["key"]]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.flat_map(read_val_shard, fn_kwargs={"storage": storage}, num_cpus=ecfg.decode_num_cpus)
        ds = ds.map_batches(
            EvalWorker,
            fn_constructor_kwargs={"model_uri": model_uri, "eval_cfg": ecfg.model_dump(mode="json"),
                                   "storage": storage.config.model_dump(mode="json"), "sample_keys": sample_keys,
                                   "baseline": baseline, "tracking_uri": tracking_uri},
            batch_size=ecfg.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=ecfg.concurrency),
            num_cpus=ecfg.num_cpus_per_actor, num_gpus=ecfg.num_gpus_per_actor or None,
        )  # fmt: skip
        started = time.perf_counter()
        try:
            rows = list(stream_rows(ds, total=len(val), desc="eval", unit="val clips", logger=log))
        except Exception as exc:  # a worker's own error (e.g. a geometry the model cannot take) reads best unwrapped
            raise _root_cause(exc) from exc
        result.wall_s = time.perf_counter() - started
        aggregate(result, rows, cfg, expected=len(val))
        if run is not None:
            log_eval(result, rows, ecfg, stage=stage, parent_run_id=parent_run_id)
            if cfg.tracking.registered_model:
                _tag_registered_version(cfg.tracking.registered_model, model_uri, result)
    for line in result.summary_lines():
        log.info("%s", line)
    return result


REGISTRY_METRICS = ("psnr", "ssim", "lpips", "rfvd", "psnr_gain_db", "codebook/all/utilisation")


def _tag_registered_version(name: str, model_uri: str, result: EvalResult) -> None:
    """The headline metrics onto the Model Registry version of the measured tokenizer (when it has one)."""
    from pyratok.core.registry import tag_eval

    metrics = {k: result.metrics[k] for k in REGISTRY_METRICS if k in result.metrics and math.isfinite(result.metrics[k])}
    version = tag_eval(name, model_uri, metrics)
    if version is not None:
        log.info("eval metrics tagged on models:/%s/%s", name, version)


def _root_cause(exc: BaseException) -> BaseException:
    """An eval actor's own error (its constructor's, which Ray reports as ActorDiedError text) as itself."""
    seen = exc
    while getattr(seen, "cause", None) is not None and seen.cause is not seen:
        seen = seen.cause
    if isinstance(seen, ValueError):
        return seen
    found = re.search(r"EvalGeometryError: ([^\n]+)", str(exc))
    return EvalGeometryError(found.group(1)) if found else exc


# -- aggregation ----------------------------------------------------------------------------------------------
def _floats(blob: Any) -> np.ndarray:
    return np.frombuffer(bytes(blob), dtype=np.float32)


def aggregate(result: EvalResult, rows: list[dict], cfg, *, expected: int) -> None:
    """Dataset-level metrics from the per-clip rows (into ``result``)."""
    from pyratok.model.metrics import CodebookUtilisation

    ok = [r for r in rows if not r["error"]]
    result.clips = len(ok)
    result.failed = dict(Counter(r["error"] for r in rows if r["error"]))
    lost = expected - len(rows)
    if lost:
        result.failed["not_read"] = lost
    m: dict[str, float] = {"clips": float(len(ok)), "failed": float(expected - len(ok))}
    m.update({f"failed.{k}": float(v) for k, v in result.failed.items()})
    if not ok:
        result.metrics = m
        result.table = pd.DataFrame(rows, columns=["key", "shard", "error", "detail"]) if rows else None
        return
    for name in (*METRIC_COLUMNS, "tokens", "bits_per_pixel", "compression"):
        values = [float(r[name]) for r in ok if not _nan(r[name])]
        if values:
            stats = summarize(values)
            m[name if name != "tokens" else "tokens_per_clip"] = stats["mean"] if stats else float("inf")
            if name in ("psnr", "ssim") and stats:
                m[f"{name}_std"], m[f"{name}_min"] = stats["std"], stats["min"]
    if "untrained_psnr" in m and "psnr" in m:
        m["psnr_gain_db"] = m["psnr"] - m["untrained_psnr"]
    if "vae_psnr" in m and "psnr" in m:
        m["psnr_gap_to_vae_db"] = m["vae_psnr"] - m["psnr"]

    levels = len(json.loads(ok[0]["histograms"]))
    usage = CodebookUtilisation(cfg.model.lapq.code_bits, levels)
    for r in ok:
        per_level = []
        for blob in json.loads(r["histograms"]):
            pairs = np.frombuffer(bytes.fromhex(blob), dtype=np.int64)
            half = pairs.size // 2
            per_level.append((torch.from_numpy(pairs[:half].copy()), torch.from_numpy(pairs[half:].copy())))
        usage.update_counts(per_level)
    m.update({f"codebook/{k}": v for k, v in usage.summary().items()})

    if len(ok) >= 2 and all(r["text"] for r in ok):
        video = torch.from_numpy(np.stack([_floats(r["semantics"]) for r in ok]))
        text = torch.from_numpy(np.stack([_floats(r["text"]) for r in ok]))
        ks = [k for k in cfg.eval.retrieval_k if k <= len(ok)] or [1]
        m.update({f"retrieval/{k}": v for k, v in retrieval_recall(video, text, ks).items()})
    if len(ok) >= 2 and all(r["fvd_real"] for r in ok):
        real = np.stack([_floats(r["fvd_real"]) for r in ok])
        fake = np.stack([_floats(r["fvd_recon"]) for r in ok])
        m["rfvd"] = frechet_distance(real, fake)
    result.metrics = m
    keep = ["key", "shard", "caption", *METRIC_COLUMNS, "tokens", "bits_per_pixel", "compression", "error", "detail"]
    table = pd.DataFrame(rows)[keep]
    result.table = table.dropna(axis=1, how="all")


def _nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def log_eval(result: EvalResult, rows: list[dict], ecfg: EvalConfig, *, stage: int | None,
             parent_run_id: str | None) -> None:
    import mlflow

    metrics = {k: v for k, v in result.metrics.items() if math.isfinite(v)}
    mlflow.log_metrics({"val/" + k.replace("@", "_at_"): v for k, v in metrics.items()} | {"wall_s": result.wall_s})
    mlflow.log_dict(ecfg.model_dump(mode="json"), "eval/config.json")
    if result.table is not None:
        mlflow.log_table(result.table, "eval/clips.json")
    with tempfile.TemporaryDirectory(prefix="pyratok-eval-") as tmp:
        for r in rows:
            if r.get("mp4"):
                path = os.path.join(tmp, f"{r['key']}.mp4")
                with open(path, "wb") as fh:
                    fh.write(bytes(r["mp4"]))
                mlflow.log_artifact(path, "eval/samples")  # original | reconstruction
    parent = parent_run_id or os.environ.get("PYRATOK_PARENT_RUN_ID")
    if parent and stage is not None:  # the pipeline's run: each metric as a curve over the training stages
        client = mlflow.MlflowClient()
        now = int(time.time() * 1000)
        from mlflow.entities import Metric

        wanted = ("psnr", "ssim", "lpips", "rfvd", "vae_psnr", "untrained_psnr", "psnr_gain_db",
                  "codebook/all/utilisation", "codebook/all/perplexity", "retrieval/t2v/R@1", "retrieval/v2t/R@1")
        client.log_batch(parent, metrics=[Metric("eval/" + k.replace("@", "_at_"), metrics[k], now, stage)
                                          for k in wanted if k in metrics])
