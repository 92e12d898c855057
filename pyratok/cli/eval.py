"""``pyratok eval``: score a trained tokenizer on a dataset's held-out val clips.

    pyratok eval --model DIR | runs:/RUN_ID | RUN_ID --data DATASET [--caption-version V] [--json]
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Optional

import typer

from pyratok.cli.common import AddressOpt, ConfigOpt, SetOpt, echo, load_cli_config, user_errors


def eval_cmd(
    model: Annotated[str, typer.Option("--model", help="Exported model dir, training checkpoint, `runs:/<id>` or an MLflow run id.")],
    data: Annotated[str, typer.Option("--data", help="Dataset root written by `pyratok ingest` (local dir or s3://).")],
    caption_version: Annotated[
        Optional[str], typer.Option("--caption-version", help="Caption version (hash, prefix or name) for the retrieval captions.")
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    address: AddressOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Reconstruction (PSNR, SSIM, LPIPS, rFVD), tokens (codebook use, bpp) and text retrieval on the val split."""
    with user_errors():
        cfg = load_cli_config(config, sets)
        from pyratok.pipelines.eval.job import run_eval

        result = run_eval(cfg, model=model, data=data, caption_version=caption_version, address=address)
    if as_json:
        metrics = {k: v for k, v in result.metrics.items() if math.isfinite(v)}
        echo(json.dumps({"model": result.model, "dataset": result.dataset, "clips": result.clips,
                         "failed": result.failed, "metrics": metrics, "mlflow_run_id": result.run_id}, indent=2))
        return
    for line in result.summary_lines():
        echo(line)
    if result.run_id:
        echo(f"  MLflow run: {result.run_id}")
