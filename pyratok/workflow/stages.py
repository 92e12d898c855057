"""The pipeline's stages: each a thin binding of a stage's Python API into the workflow.

A stage declares the config keys that decide its result; everything else in
the config (Ray address, MLflow URI, logging) can change without invalidating
it. Output fingerprints are computed from what was produced (clip hashes,
caption sidecars, checkpoints), so a rerun that reproduces the same outputs
does not invalidate what was built on them.
"""

from __future__ import annotations

import math

from pyratok.core.config import fingerprint
from pyratok.core.storage import join
from pyratok.workflow.config import STAGE_ORDER
from pyratok.workflow.stage import Resources, StageContext, StageOutputs, StageSpec

def _dataset_root(ctx: StageContext) -> str:
    return ctx.config.ingest.output or join(ctx.root, "dataset")


def _dataset_and_captions(ctx: StageContext) -> tuple[str, str | None]:
    """The dataset a training or eval stage reads, and its caption version when the pipeline captions."""
    if "caption" in ctx.upstream:
        return ctx.output_of("caption", "dataset"), ctx.output_of("caption", "caption_version")
    return ctx.output_of("ingest", "dataset"), None


# -- sample-data -------------------------------------------------------------
def run_sample_data(ctx: StageContext) -> StageOutputs:
    from pyratok.pipelines.ingest.sample_data import INPUTS_FILE, write_sample_data

    out = join(ctx.root, "raw")
    summary = write_sample_data(out, clips=ctx.config.pipeline.sample_clips, storage=ctx.storage)
    summary.pop("out", None)
    return StageOutputs({"corpus": out, "inputs": join(out, INPUTS_FILE)}, fingerprint(summary))


# -- ingest ------------------------------------------------------------------
def run_ingest_stage(ctx: StageContext) -> StageOutputs:
    from pyratok.pipelines.ingest.config import InputSpec
    from pyratok.pipelines.ingest.job import run_ingest
    from pyratok.pipelines.ingest.sample_data import load_inputs_file

    inputs = None
    if "sample-data" in ctx.upstream:
        items = load_inputs_file(ctx.output_of("sample-data", "inputs"), ctx.storage)
        inputs = [InputSpec(**item) for item in items]
    output = _dataset_root(ctx)
    result = run_ingest(ctx.config, inputs=inputs, output=output)
    if not result.invariant_ok:
        raise RuntimeError(f"ingest into {output}: inputs != accepted + rejected; see its summary")
    if result.accepted == 0:
        raise RuntimeError(f"ingest into {output} accepted no clips ({result.rejected_by_reason}); nothing to train on")
    manifest = ctx.storage.read_parquet(join(output, "manifest.parquet"))
    clips = sorted(zip(manifest["key"], manifest["sha256"]))
    return StageOutputs(
        {"dataset": output, "manifest": join(output, "manifest.parquet")},
        fingerprint({"clips": clips, "shards": [s.rsplit("/", 1)[-1] for s in result.shards]}),
        result.run_id,
        {"accepted": result.accepted, "rejected": result.rejected},
    )


# -- caption -----------------------------------------------------------------
def run_caption_stage(ctx: StageContext) -> StageOutputs:
    from pyratok.core.dataset import captions_dir
    from pyratok.pipelines.caption.job import run_caption

    dataset = ctx.output_of("ingest", "dataset")
    result = run_caption(ctx.config, shards_root=dataset)
    sidecars = ctx.storage.list(captions_dir(dataset, result.version), suffix=".parquet")
    listing = [(uri.rsplit("/", 1)[-1], ctx.storage.size(uri)) for uri in sidecars]
    return StageOutputs(
        {"dataset": dataset, "caption_version": result.version},
        fingerprint({"version": result.version, "sidecars": listing}),
        result.run_id,
        {"captioned": result.captioned, "failed": result.failed},
    )


# -- vae-warmup ----------------------------------------------------------------
def run_vae_warmup(ctx: StageContext) -> StageOutputs:
    import ray

    from pyratok.core.ray_runtime import init_ray
    from pyratok.core.tracking import stage_run
    from pyratok.pipelines.train.vae_warmup import warm_up_vae

    cfg, out = ctx.config, join(ctx.root, "vae-warmup", "vae")
    with stage_run(cfg.tracking, cfg.work_dir, "vae-warmup", cfg, sections=("train.vae_warmup", "model.backbone")) as run:
        init_ray(cfg.ray)
        task = ray.remote(num_cpus=cfg.train.vae_warmup.num_cpus)(warm_up_vae)
        result = ray.get(task.remote(cfg, data=ctx.output_of("ingest", "dataset"), out=out))
        metrics = {"steps": float(result.steps), "clips": float(result.clips), "final_l1": result.final_l1,
                   "train_psnr": result.train_psnr, "wall_s": result.wall_s}
        if run is not None:
            import mlflow

            mlflow.log_metrics(metrics)
    files = sorted((uri.rsplit("/", 1)[-1], ctx.storage.size(uri)) for uri in ctx.storage.list(out))
    return StageOutputs({"vae": out}, fingerprint({"files": files, "l1": round(result.final_l1, 6)}),
                        run.info.run_id if run is not None else None,
                        {"train_psnr": result.train_psnr, "final_l1": result.final_l1})


# -- train stages 1..3 ----------------------------------------------------------
def _training_stage(stage: int):
    def run(ctx: StageContext) -> StageOutputs:
        from pyratok.pipelines.train.checkpoint import latest_pointer_uri
        from pyratok.pipelines.train.runner import default_storage_path, run_training

        data, version = _dataset_and_captions(ctx)
        init_from = ctx.output_of(f"train{stage - 1}", "checkpoint") if stage > 1 else None
        cfg = _with_checkpoints_under_root(ctx)
        if "vae-warmup" in ctx.upstream:  # the warmed-up VAE is this preset's backbone from here on
            cfg = _with_overrides(cfg, [f"model.backbone.path={ctx.output_of('vae-warmup', 'vae')}"])
        # Resume only what actually started: a stage that failed before training has no run to resume.
        resume = ctx.resume and ctx.storage.exists(latest_pointer_uri(default_storage_path(cfg), stage))
        result = run_training(cfg, stage=stage, data=data, caption_version=version, init_from=init_from, resume=resume)
        outputs = {"checkpoint": result.checkpoint_uri, "model": result.model_uri, "steps": str(result.steps)}
        if result.registered:
            outputs["registered"] = result.registered
        return StageOutputs(
            outputs,
            fingerprint({"checkpoint": result.checkpoint_uri, "steps": result.steps}),
            result.mlflow_run_id,
            {"steps": float(result.steps)},
        )

    return run


def _with_checkpoints_under_root(ctx: StageContext):
    """Training checkpoints live with the pipeline's other outputs unless the preset says otherwise."""
    if ctx.config.train.checkpoint.storage_path:
        return ctx.config
    return _with_overrides(ctx.config, [f"train.checkpoint.storage_path={join(ctx.root, 'checkpoints')}"])


def _with_overrides(cfg, overrides: list[str]):
    from pyratok.core.config import apply_overrides

    return type(cfg).model_validate(apply_overrides(cfg.model_dump(mode="json"), overrides))


def _stage_resolver(stage: int):
    def resolve(cfg):
        from pyratok.pipelines.train.stages import stage_config

        return stage_config(cfg, stage)

    return resolve


def _training_spec(stage: int) -> StageSpec:
    previous = (f"train{stage - 1}",) if stage > 1 else ()
    return StageSpec(
        f"train{stage}", _training_stage(stage), after=("ingest", "caption", "vae-warmup", *previous),
        # What decides the weights: the model, this stage's scale, data/optimiser/schedule/strategy
        # and world size. Checkpoint cadence, logging and failure handling do not count, nor do
        # the other stages' scales.
        config_keys=("model", f"train.stages.stage{stage}", "train.seed", "train.scaling", "train.data",
                     "train.optim", "train.schedule", "train.strategy"),
        resources=Resources(gpus_per_worker=1, workers="train.scaling.num_workers"),
        description=f"PyraTok training stage {stage}",
        resolve=_stage_resolver(stage),
    )  # fmt: skip


# -- eval ----------------------------------------------------------------------
def _eval_stage(after: int):
    def run(ctx: StageContext) -> StageOutputs:
        from pyratok.pipelines.eval.job import run_eval

        data, version = _dataset_and_captions(ctx)
        model = ctx.output_of(f"train{after}", "model")
        result = run_eval(ctx.config, model=model, data=data, caption_version=version, stage=after)  # logs its summary
        if result.clips == 0:
            raise RuntimeError(f"eval of {model} scored no val clip ({result.failed})")
        metrics = {k: v for k, v in result.metrics.items() if math.isfinite(v)}
        shown = ("psnr", "ssim", "psnr_gain_db", "codebook/all/utilisation")
        return StageOutputs({"model": model}, fingerprint(metrics), result.run_id,
                            {k: metrics[k] for k in shown if k in metrics})

    return run


def _eval_spec(after: int) -> StageSpec:
    name = "eval" if after == 3 else f"eval{after}"
    return StageSpec(
        name, _eval_stage(after), after=("ingest", "caption", f"train{after}"),
        # what decides the scores: the model (an upstream output), the eval geometry and metrics (not its
        # batch sizes or pools), and the seed of the untrained baseline
        config_keys=("eval.frames", "eval.height", "eval.width", "eval.max_clips", "eval.tile", "eval.vae_ceiling",
                     "eval.untrained_baseline", "eval.retrieval_k", "eval.samples_to_log", "eval.fvd", "train.seed"),
        resources=Resources(cpus_per_task=1, gpus_per_worker=1, workers="eval.concurrency"),
        description=f"score the stage-{after} tokenizer on the val split",
        enabled=(lambda cfg: True) if after == 3 else (lambda cfg: cfg.eval.after_each_stage),
    )  # fmt: skip


def default_stages() -> list[StageSpec]:
    specs = [
        StageSpec(
            "sample-data", run_sample_data,
            config_keys=("pipeline.sample_clips",),
            description="generate the sample corpus (embedded default)",
            enabled=lambda cfg: cfg.pipeline.sample_data,
        ),
        StageSpec(
            "ingest", run_ingest_stage, after=("sample-data",),
            # ingest.execution (batching, threads, timeouts) changes speed, not shards.
            config_keys=("ingest.inputs", "ingest.output", "ingest.filters", "ingest.captions",
                         "ingest.sources", "ingest.cut", "ingest.shards", "ingest.split"),
            resources=Resources(cpus_per_task=1),
            description="raw videos -> filtered >=720p WebDataset shards",
        ),
        StageSpec(
            "caption", run_caption_stage, after=("ingest",),
            # What the caption version hashes (+ post-processing); batch sizes and pools do not count.
            config_keys=("caption.model", "caption.model_id", "caption.version_name", "caption.frames",
                         "caption.prompt", "caption.sampling", "caption.postprocess"),
            resources=Resources(cpus_per_task=1, gpus_per_worker=1),
            description="recaption shards with Qwen2.5-VL into a versioned sidecar set",
        ),
        StageSpec(
            "vae-warmup", run_vae_warmup, after=("ingest",),
            config_keys=("train.vae_warmup", "model.backbone", "train.seed"),
            resources=Resources(cpus_per_task=1),
            description="train the random backbone VAE as an autoencoder (presets without VAE weights)",
            enabled=lambda cfg: cfg.train.vae_warmup.steps > 0,
        ),
        _training_spec(1), _eval_spec(1), _training_spec(2), _eval_spec(2), _training_spec(3), _eval_spec(3),
    ]  # fmt: skip
    return [s for s in specs if s.name in STAGE_ORDER]


def pipeline_stages(config) -> list[StageSpec]:
    """The stages the config's ``pipeline.stages`` selects, in pipeline order."""
    wanted = set(config.pipeline.stages)
    return [s for s in default_stages() if s.name in wanted]
