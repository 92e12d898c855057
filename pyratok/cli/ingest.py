"""``pyratok ingest``: raw video datasets -> filtered WebDataset shards (a Ray Data job)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pyratok.cli.common import AddressOpt, ConfigOpt, SetOpt, echo, load_cli_config, user_errors

SOURCES = ("droplet", "openvid", "ultravideo", "manifest")


def ingest(
    source: Annotated[Optional[str], typer.Option("--source", help=f"Source format: {', '.join(SOURCES)}.")] = None,
    metadata: Annotated[Optional[str], typer.Option("--metadata", help="Metadata table (CSV/JSONL/JSON/parquet), path or s3:// URI.")] = None,
    videos: Annotated[Optional[str], typer.Option("--videos", help="Folder or s3:// prefix holding the videos.")] = None,
    inputs: Annotated[Optional[str], typer.Option("--inputs", help="YAML listing several datasets (source, metadata, videos), e.g. sample-data's inputs.yaml.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Dataset root (folder or s3:// prefix). Default: ingest.output, else <work_dir>/dataset.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete the output's shards, manifest and rejects first and redo everything.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Probe, filter, cut and shard raw videos into WebDataset shards (+ manifest.parquet, rejects.parquet).

    Reruns skip committed shards; bad videos end up in rejects.parquet with a reason. Exit code 2 means a
    configuration, metadata or storage problem (named in the message)."""
    from pyratok.core.storage import Storage
    from pyratok.pipelines.ingest.config import InputSpec
    from pyratok.pipelines.ingest.job import run_ingest
    from pyratok.pipelines.ingest.sample_data import load_inputs_file

    if source is not None and source not in SOURCES:
        typer.secho(f"error: --source must be one of {', '.join(SOURCES)}, got {source!r}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    with user_errors():  # MetadataError is a ValueError: exit 2 with its message
        cfg = load_cli_config(config, sets)
        specs = None
        if inputs:
            specs = [InputSpec(**item) for item in load_inputs_file(inputs, Storage(cfg.storage))]
        result = run_ingest(
            cfg, inputs=specs, source=source, metadata=metadata, videos=videos, output=output,
            overwrite=overwrite, address=address,
        )  # fmt: skip
    echo(format_summary(result))


def format_summary(result) -> str:
    reasons = ", ".join(f"{reason} {n}" for reason, n in result.rejected_by_reason.items()) or "none"
    lines = [
        f"ingest -> {result.output}",
        f"  inputs    {result.inputs}",
        f"  accepted  {result.accepted}",
        f"  rejected  {result.rejected} ({reasons})",
        f"  invariant inputs = accepted + rejected: {'OK' if result.invariant_ok else 'VIOLATED'}",
        f"  shards    {len(result.shards)} ({result.shards_written} written, {result.shards_skipped} already committed"
        + (f", {result.shards_deleted} stale removed" if result.shards_deleted else "") + ")",
        f"  bytes     {result.bytes / 1e6:.2f} MB",
        f"  speed     {result.videos_per_s:.2f} videos/s, {result.mb_per_s:.2f} MB/s ({result.wall_s:.1f} s)",
    ]
    if result.run_id:
        lines.append(f"  mlflow    run {result.run_id}")
    return "\n".join(lines)
