"""The driver of a training stage: resolve inputs, open the MLflow run, run Ray Train, record the result.

``run_training`` is the Python API the CLI and the workflow layer call. It
fails fast on bad inputs (no shards, unknown caption version, missing
``--init-from``) before any worker starts, names the Ray Train run so that
``--resume`` can find it again, and after training logs the final checkpoint
URI and the exported tokenizer into the stage's MLflow run.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from pyratok.core.logging import get_logger
from pyratok.core.storage import Storage, is_s3, join

log = get_logger(__name__)

RUN_TAG_PREFIX = "pyratok.train."


@dataclass
class TrainResult:
    stage: int
    checkpoint_uri: str
    """The final Ray Train checkpoint (optimizer state included): ``--resume`` / ``--init-from`` material."""
    model_uri: str
    """The exported tokenizer inside it (``PyraTok.from_pretrained`` loads it)."""
    mlflow_run_id: str | None
    steps: int
    run_name: str
    storage_path: str
    skipped: dict[str, int] = field(default_factory=dict)
    restarts: list[int] = field(default_factory=list)
    """Steps the run restarted from (worker failures recovered by Ray Train, or --resume)."""
    init_from_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    registered: str | None = None
    """``models:/<name>/<version>`` of this stage's tokenizer in the Model Registry (alias ``stage<N>``)."""

    def to_dict(self) -> dict:
        return asdict(self)


def default_storage_path(cfg) -> str:
    path = cfg.train.checkpoint.storage_path
    if path:
        return path if is_s3(path) else str(Path(path).expanduser().resolve())
    return str((Path(cfg.work_dir).expanduser() / "checkpoints").resolve())


def ray_storage(storage: Storage, storage_path: str):
    """(storage_path, pyarrow filesystem) for Ray Train's RunConfig; S3 goes through our endpoint settings."""
    if not is_s3(storage_path):
        Path(storage_path).mkdir(parents=True, exist_ok=True)
        return storage_path, None
    fs, path = storage.pyarrow_filesystem(storage_path)
    return path, fs


def checkpoint_uri_of(result_checkpoint_path: str, storage_path: str) -> str:
    """Ray reports paths inside its filesystem ("bucket/key" for S3); give them their scheme back."""
    if is_s3(storage_path) and not result_checkpoint_path.startswith("s3://"):
        return f"s3://{result_checkpoint_path.lstrip('/')}"
    return result_checkpoint_path


def resolve_caption_version(storage: Storage, data: str, caption_version: str | None) -> str | None:
    if not caption_version:
        return None
    from pyratok.pipelines.caption.sidecars import resolve_version

    return resolve_version(storage, data, caption_version)


def _init_source(cfg, storage: Storage, stage: int, init_from: str | None, *, from_scratch: bool, resumed: bool,
                 tracking: bool):
    """Where stage ``stage`` starts: ``--init-from`` resolved, or None (stage 1, or an explicit ``--from-scratch``).

    Stages 2 and 3 fine-tune the previous stage's model; starting them from the bare VAE by omission
    would waste a run, so that needs ``--from-scratch``.
    """
    from pyratok.core.tracking import configure
    from pyratok.pipelines.train.checkpoint import RUN_ID, latest_stage_run, resolve_init_from

    if init_from and from_scratch:
        raise ValueError("--init-from and --from-scratch exclude each other")
    if not init_from:
        if stage > 1 and not from_scratch and not resumed:
            raise ValueError(
                f"stage {stage} fine-tunes stage {stage - 1}'s model: pass --init-from <exported model folder, "
                f"training checkpoint, MLflow run id, or 'latest' (the newest finished stage-{stage - 1} run in "
                f"this MLflow experiment)>, or --from-scratch to start stage {stage} from the pretrained VAE alone"
            )
        return None
    spec = str(init_from).strip()
    if spec == "latest":
        if stage == 1:
            raise ValueError("--init-from latest: stage 1 has no previous stage")
        if not tracking:
            raise ValueError("--init-from latest looks the previous stage up in MLflow, but tracking.enabled is false")
        return latest_stage_run(configure(cfg.tracking, cfg.work_dir), stage - 1)
    if tracking and RUN_ID.match(spec):
        configure(cfg.tracking, cfg.work_dir)  # --init-from names a run: look it up in this store
    return resolve_init_from(storage, spec)


def run_training(
    cfg,
    *,
    stage: int,
    data: str,
    caption_version: str | None = None,
    init_from: str | None = None,
    from_scratch: bool = False,
    resume: bool = False,
    strategy: str | None = None,
    address: str | None = None,
    run_name: str | None = None,
    overrides: Iterable[str] = (),
) -> TrainResult:
    """Train one stage on Ray Train and return where its checkpoint, model and MLflow run are."""
    from pyratok.core.ray_runtime import init_ray
    from pyratok.core.tracking import resolve_tracking_uri, stage_run
    from pyratok.pipelines.train.checkpoint import (
        CHECKPOINT_URI_TAG,
        INIT_RUN_TAG,
        MODEL_DIR,
        MODEL_URI_TAG,
        read_latest,
        write_latest,
    )
    from pyratok.pipelines.train.data import find_shards
    from pyratok.pipelines.train.loop import TrainJob
    from pyratok.pipelines.train.stages import stage_config
    from pyratok.pipelines.train.strategy import load_deepspeed_config

    overrides = list(overrides)
    if strategy:
        overrides.append(f"train.strategy.name={strategy}")
    cfg = stage_config(cfg, stage, overrides)
    train = cfg.train
    storage = Storage(cfg.storage)
    data = data if is_s3(data) else str(Path(data).expanduser().resolve())
    shards = find_shards(storage, data)
    version = resolve_caption_version(storage, data, caption_version)
    ds_config = load_deepspeed_config(train) if train.strategy.name == "deepspeed" else None
    storage_path = default_storage_path(cfg)
    previous: dict = {}
    if resume:
        previous = read_latest(storage, storage_path, stage)
        if run_name and run_name != previous.get("run_name"):
            previous = {"run_name": run_name}
        run_name = previous["run_name"]
        init_from = init_from or previous.get("init_from")
    run_name = run_name or f"stage{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid() % 10000:04d}"
    tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.work_dir) if cfg.tracking.enabled else None
    init = _init_source(cfg, storage, stage, init_from, from_scratch=from_scratch, resumed=bool(previous),
                        tracking=tracking_uri is not None)
    if init is not None and not _model_exists(storage, init.model_uri):
        raise FileNotFoundError(f"--init-from: exported model {init.model_uri} does not exist")

    log.info(
        "training stage %d on %d shard(s) from %s with %s x %d worker(s)%s",
        stage, len(shards), data, train.strategy.name, train.scaling.num_workers,
        f", starting from {init.model_uri}" if init else "",
    )  # fmt: skip
    init_ray(cfg.ray, address)
    tags = {f"{RUN_TAG_PREFIX}run_name": run_name, f"{RUN_TAG_PREFIX}data": data}
    if init is not None and init.run_id:
        tags[INIT_RUN_TAG] = init.run_id
    if previous.get("mlflow_run_id"):
        tags[f"{RUN_TAG_PREFIX}resumed_run"] = previous["mlflow_run_id"]
    with stage_run(cfg.tracking, cfg.work_dir, f"train-stage{stage}", cfg, tags=tags, sections=("model", "train")) as run:
        run_id = run.info.run_id if run is not None else None
        if run is not None:
            from pyratok.core.tracking import log_dataset, log_params

            log_dataset(storage, data, "training")

            log_params(
                {
                    "run.stage": stage, "run.data": data, "run.num_shards": len(shards),
                    "run.caption_version": version or "", "run.init_from": init.model_uri if init else "",
                    "run.init_from_run_id": (init.run_id or "") if init else "", "run.strategy": train.strategy.name,
                    "run.world_size": train.scaling.num_workers, "run.resume": resume, "run.ray_run_name": run_name,
                },
                run_id,
            )  # fmt: skip
        write_latest(
            storage, storage_path, stage,
            {"run_name": run_name, "mlflow_run_id": run_id, "init_from": init_from, "started": time.time()},
        )  # fmt: skip
        job = TrainJob(
            config=cfg.model_dump(mode="json"),
            stage=stage,
            run_name=run_name,
            shards=shards,
            data_root=data,
            strategy=train.strategy.name,
            caption_version=version,
            init_model_uri=init.model_uri if init else None,
            deepspeed_config=_filled_deepspeed(ds_config, train),
            tracking_uri=tracking_uri,
            mlflow_run_id=run_id,
            torch_extensions_dir=_extensions_dir(cfg),
            progress_bar=train.tracking.progress_bar and sys.stdout.isatty(),
        )
        result = _fit(job, cfg, storage, storage_path, run_name)
        checkpoint_uri = checkpoint_uri_of(result.checkpoint.path, storage_path)
        summary = _summarize(storage, checkpoint_uri, train.scaling.num_workers)
        model_uri = join(checkpoint_uri, MODEL_DIR)
        out = TrainResult(
            stage=stage,
            checkpoint_uri=checkpoint_uri,
            model_uri=model_uri,
            mlflow_run_id=run_id,
            steps=summary["step"],
            run_name=run_name,
            storage_path=storage_path,
            skipped=summary["skipped"],
            restarts=summary["restarts"],
            init_from_run_id=init.run_id if init else None,
            metrics={k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
        )
        if run is not None:
            _log_outputs(storage, out, train.tracking.log_model, CHECKPOINT_URI_TAG, MODEL_URI_TAG)
            if train.tracking.log_model and cfg.tracking.registered_model:
                out.registered = _register(cfg.tracking.registered_model, out, data)
    log.info("stage %d finished at step %d: checkpoint %s, model %s, MLflow run %s", stage, out.steps, checkpoint_uri, model_uri, run_id)
    return out


def _model_exists(storage: Storage, uri: str) -> bool:
    from pyratok.model.sources import is_reference

    if is_s3(uri):
        return bool(storage.list(uri))
    return Path(uri).is_dir() or (not os.path.isabs(uri) and is_reference(uri))  # MLflow/Hub: checked on load


def _register(name: str, out: TrainResult, data: str) -> str:
    """The stage's tokenizer as a Model Registry version (alias ``stage<N>``); returns its ``models:/`` URI."""
    from pyratok.core.registry import MODEL_URI_VERSION_TAG, register_tokenizer
    from pyratok.core.tracking import STAGE_TAG
    from pyratok.pipelines.train.checkpoint import INIT_RUN_TAG

    tags = {STAGE_TAG: f"train-stage{out.stage}", "pyratok.stage": out.stage, MODEL_URI_VERSION_TAG: out.model_uri,
            "pyratok.steps": out.steps, "pyratok.data": data, "pyratok.run_name": out.run_name}
    if out.init_from_run_id:
        tags[INIT_RUN_TAG] = out.init_from_run_id
    version = register_tokenizer(name, out.mlflow_run_id, alias=f"stage{out.stage}", tags=tags)
    return f"models:/{name}/{version.version}"


def _filled_deepspeed(ds_config: dict | None, train) -> dict | None:
    if ds_config is None:
        return None
    from pyratok.pipelines.train.strategy import fill_deepspeed_config

    return fill_deepspeed_config(ds_config, train, use_gpu=train.scaling.use_gpu)


def _extensions_dir(cfg) -> str:
    path = (
        cfg.train.strategy.torch_extensions_dir
        or os.environ.get("TORCH_EXTENSIONS_DIR")
        or str(Path.home() / ".cache" / "pyratok" / "torch_extensions")
    )
    return str(Path(path).expanduser().resolve())


def _fit(job, cfg, storage: Storage, storage_path: str, run_name: str):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pyratok.pipelines.train.loop import train_loop_per_worker

    train = cfg.train
    scaling = train.scaling
    backend = train.strategy.backend
    if backend == "auto":
        backend = "nccl" if scaling.use_gpu else "gloo"
    path, filesystem = ray_storage(storage, storage_path)
    from pyratok.core.ray_runtime import serves_state_api
    from pyratok.pipelines.train.ray_compat import trainer_without_placement_group_cleaner

    trainer_cls = TorchTrainer if serves_state_api() else trainer_without_placement_group_cleaner()
    trainer = trainer_cls(
        train_loop_per_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **scaling.resources_per_worker},
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=train.failure.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train.checkpoint.num_to_keep),
            # Ray Train's own INFO lines (per report: the whole metrics dict, "Checkpoint successfully
            # created", process-group set-up) drown our progress lines; they stay in its log files.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if log.isEnabledFor(logging.DEBUG) else "WARNING"),
        ),
    )
    return trainer.fit()


def _summarize(storage: Storage, checkpoint_uri: str, world_size: int) -> dict:
    from pyratok.pipelines.train.checkpoint import read_meta, read_rank_states
    from pyratok.pipelines.train.data import SKIP_PREFIX

    meta = read_meta(storage, checkpoint_uri)
    states = read_rank_states(storage, checkpoint_uri, int(meta.get("world_size", world_size)))
    skipped: dict[str, int] = {}
    for state in states:
        for key, count in state.events.items():
            if key.startswith(SKIP_PREFIX):
                reason = key[len(SKIP_PREFIX) :]
                skipped[reason] = skipped.get(reason, 0) + int(count)
    return {"step": int(meta["step"]), "skipped": skipped, "restarts": list(states[0].restarts)}


def _log_outputs(storage: Storage, out: TrainResult, log_model: bool, checkpoint_tag: str, model_tag: str) -> None:
    """Checkpoint URI (tag + checkpoint.json) and the exported tokenizer (``model/``) into the stage's run."""
    import json

    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(out.mlflow_run_id, checkpoint_tag, out.checkpoint_uri)
    client.set_tag(out.mlflow_run_id, model_tag, out.model_uri)
    for reason, count in out.skipped.items():
        client.log_metric(out.mlflow_run_id, f"data/skipped_total/{reason}", count, step=out.steps)
    with tempfile.TemporaryDirectory(prefix="pyratok-train-out-") as tmp:
        summary = Path(tmp) / "checkpoint.json"
        summary.write_text(json.dumps(out.to_dict(), indent=1, sort_keys=True, default=str))
        client.log_artifact(out.mlflow_run_id, str(summary))
        if log_model:
            local = out.model_uri
            if is_s3(local):
                local = str(storage.download_dir(out.model_uri, Path(tmp) / "model"))
            client.log_artifacts(out.mlflow_run_id, local, "model")



