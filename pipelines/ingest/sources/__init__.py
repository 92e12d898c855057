"""Source formats: DropletVideo-10M, OpenVid-1M, UltraVideo and a generic manifest."""

from __future__ import annotations

from pyratok.pipelines.ingest.sources.base import RowError, SourceFormat, SourceRow
from pyratok.pipelines.ingest.sources.droplet import Droplet
from pyratok.pipelines.ingest.sources.manifest import Manifest
from pyratok.pipelines.ingest.sources.openvid import OpenVid
from pyratok.pipelines.ingest.sources.ultravideo import UltraVideo

FORMATS: dict[str, SourceFormat] = {f.name: f for f in (Droplet(), OpenVid(), UltraVideo(), Manifest())}


def source_format(name: str) -> SourceFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; expected one of {', '.join(sorted(FORMATS))}") from None


__all__ = ["FORMATS", "RowError", "SourceFormat", "SourceRow", "source_format"]
