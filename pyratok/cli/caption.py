"""``pyratok caption``: recaption shards with Qwen2.5-VL into versioned caption sidecars.

    pyratok caption --shards DIR_OR_URI --model DIR_OR_URI [--backend transformers|vllm] [--retry-failed]
    pyratok caption list --shards DIR_OR_URI
    pyratok caption init-tiny --out DIR
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pyratok.cli.common import AddressOpt, ConfigOpt, SetOpt, echo, load_cli_config, user_errors

app = typer.Typer(
    help="Recaption WebDataset shards with a multimodal LLM (Qwen2.5-VL) into versioned caption sidecars.",
    invoke_without_command=True,
)

ShardsOpt = Annotated[
    Optional[str],
    typer.Option("--shards", help="Dataset root written by `pyratok ingest` (local dir or s3://), or its shards/ folder."),
]


@app.callback(invoke_without_command=True)
def caption(
    ctx: typer.Context,
    shards: ShardsOpt = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", help="Qwen2.5-VL checkpoint dir or s3:// URI, or `tiny`. Default: caption.model of the config."),
    ] = None,
    backend: Annotated[
        Optional[str], typer.Option("--backend", help="transformers | vllm | auto. Default: caption.backend.")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Also re-caption the clips listed in the failure ledgers.")
    ] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    address: AddressOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result summary as JSON.")] = False,
) -> None:
    """Caption every shard not yet captioned for this caption version (reruns resume)."""
    if ctx.invoked_subcommand is not None:
        return
    if not shards:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    with user_errors():
        cfg = load_cli_config(config, sets)
        from pyratok.pipelines.caption.job import run_caption

        result = run_caption(cfg, shards_root=shards, model=model, backend=backend, retry_failed=retry_failed, address=address)
    if as_json:
        echo(json.dumps(result.summary(), indent=2))
        return
    echo(f"caption version {result.version} ({result.name}) under {result.dataset_root}/captions/{result.version}")
    echo(
        f"  shards: {result.shards_committed} committed this run, {result.shards_skipped} already done, "
        f"{result.shards_total} in the dataset"
    )
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(result.failure_reasons.items())) or "none"
    echo(f"  clips: {result.clips} ({result.captioned} captioned, {result.failed} failed: {reasons})")
    echo(f"  throughput: {result.clips_per_s:.2f} clips/s, {result.tokens_per_s:.1f} generated tokens/s")
    if result.run_id:
        echo(f"  MLflow run: {result.run_id}")


@app.command("list")
def list_cmd(
    shards: ShardsOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show the caption versions of a dataset with their counts."""
    if not shards:
        raise typer.BadParameter("--shards is required", param_hint="--shards")
    with user_errors():
        cfg = load_cli_config(config, sets)
        from pyratok.core.storage import Storage
        from pyratok.pipelines.caption.sidecars import list_versions, resolve_dataset_root

        storage = Storage(cfg.storage)
        root = resolve_dataset_root(storage, shards)
        versions = list_versions(storage, root)
    if as_json:
        echo(json.dumps(versions, indent=2))
        return
    if not versions:
        echo(f"no caption versions under {root}")
        return
    echo(f"{'VERSION':16}  {'NAME':32}  {'SHARDS':>9}  {'CAPTIONS':>8}  {'FAILED':>6}  {'PROMPT':12}  CREATED / MODEL")
    for v in versions:
        shards_col = f"{v['shards_done']}/{v['shards_total']}"
        echo(
            f"{v['version']:16}  {v['name'][:32]:32}  {shards_col:>9}  {v['captions']:>8}  {v['failures']:>6}  "
            f"{v['prompt_hash']:12}  {v['created']}  {v['model']}"
        )


@app.command("init-tiny")
def init_tiny_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the tiny checkpoint to.")],
    seed: Annotated[int, typer.Option("--seed", help="Weight/tokenizer seed.")] = 0,
) -> None:
    """Write a tiny offline Qwen2.5-VL (random weights, real file layout) that loads like a real checkpoint."""
    from pyratok.core.logging import setup_logging
    from pyratok.pipelines.caption.tiny import init_tiny

    setup_logging()
    with user_errors():
        path = init_tiny(out, seed=seed)
    echo(str(path))
