"""The caption stage: recaption WebDataset shards with Qwen2.5-VL into versioned caption sidecars.

Modules, in the order data flows through them:

- ``config``: ``CaptionConfig`` (the ``caption:`` section): model, prompt, sampling, frames, pools.
- ``reader``: shard -> sample rows (with each shard's row count, for streaming commits).
- ``frames``: the frame plan (fps, min/max frames) and PyAV decoding straight to small frames.
- ``vision``: the model's input geometry and the torch patchify (``pixel_values_videos``).
- ``prompts`` / ``postprocess``: chat prompt templates; cleaning and rejecting generations.
- ``backends``: ``transformers`` (default) and ``vllm`` captioners behind one interface.
- ``worker``: the Ray Data stages (decode tasks, the captioning actor).
- ``job``: ``run_caption`` (the Ray Data job + per-shard commits + MLflow run).
- ``versioning`` / ``sidecars``: caption version ids, and the on-storage caption sets
  (``resolve_version``, ``load_captions``, ``list_versions`` are what readers use).
- ``models`` / ``tiny``: where model files come from (local, ``s3://``, the tiny offline model).
"""
