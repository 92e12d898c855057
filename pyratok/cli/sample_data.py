"""``pyratok sample-data OUT``: generate the small raw-video test corpus."""

from __future__ import annotations

from typing import Annotated

import typer

from pyratok.cli.common import ConfigOpt, SetOpt, echo, handles_user_errors, load_cli_config


@handles_user_errors
def sample_data(
    out: Annotated[str, typer.Argument(help="Folder or s3:// prefix to write the corpus to.")],
    clips: Annotated[int, typer.Option("--clips", min=0, help="Extra plain accepted OpenVid clips (e.g. 200 for benchmarks).")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Parallel ffmpeg encodes (default: CPU count).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Generate a small raw-video corpus with ffmpeg in each source's layout (OpenVid, UltraVideo,
    DropletVideo, manifest), bad inputs included; OUT/inputs.yaml lists the four datasets for
    `pyratok ingest --inputs OUT/inputs.yaml`."""
    from pyratok.core.storage import Storage, join
    from pyratok.pipelines.ingest.sample_data import INPUTS_FILE, write_sample_data

    cfg = load_cli_config(config, sets)
    summary = write_sample_data(out, clips=clips, threads=threads, storage=Storage(cfg.storage))
    echo(
        f"sample corpus: {summary['videos']} videos, {summary['rows']} metadata rows "
        f"({summary['accepted_expected']} expected to be accepted), {summary['bytes'] / 1e6:.1f} MB in {summary['out']}"
    )
    echo(f"ingest it with: pyratok ingest --inputs {join(summary['out'], INPUTS_FILE)} --output DIR")
