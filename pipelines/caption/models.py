"""Where the captioning model's files come from: a local dir, an ``s3://`` prefix, or the tiny model.

``from_pretrained`` needs a local directory, so an S3 checkpoint is mirrored
once per machine into a cache (``Storage.download_dir``), under a file lock so
several actors on one node download it once, and committed by rename so a
killed download is never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from pyratok.core.logging import get_logger
from pyratok.core.storage import Storage, is_s3, join
from pyratok.pipelines.caption.config import TINY_MODEL

log = get_logger(__name__)

TINY_DIR = Path("models") / "tiny-qwen2.5-vl"
COMPLETE_MARKER = ".pyratok-complete"


def tiny_model_dir(work_dir: str | os.PathLike) -> Path:
    return Path(work_dir).expanduser().resolve() / TINY_DIR


def model_location(model: str, work_dir: str | os.PathLike) -> str:
    """What workers load: an absolute local path or an ``s3://`` URI (``tiny`` -> its dir under work_dir)."""
    if model == TINY_MODEL:
        return str(tiny_model_dir(work_dir))
    if is_s3(model):
        return model.rstrip("/")
    return str(Path(model).expanduser().resolve())


def ensure_tiny_model(work_dir: str | os.PathLike) -> Path:
    """Build the tiny offline model under work_dir unless a complete one is there."""
    from filelock import FileLock

    target = tiny_model_dir(work_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / COMPLETE_MARKER).exists():
            return target
        from pyratok.pipelines.caption.tiny import init_tiny

        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        init_tiny(tmp)
        (tmp / COMPLETE_MARKER).touch()
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def check_model(storage: Storage, location: str) -> None:
    """Fail fast on the driver when the model is not where the config says."""
    config = join(location, "config.json")
    if not storage.exists(config):
        raise FileNotFoundError(
            f"caption model {location}: no config.json there (expected a Qwen2.5-VL checkpoint dir or s3:// prefix; "
            "`pyratok caption init-tiny --out DIR` writes a tiny offline one)"
        )


def local_model_dir(storage: Storage, location: str, cache_dir: str | os.PathLike) -> Path:
    """A local directory holding the model files (downloaded once per machine for ``s3://``)."""
    if not is_s3(location):
        path = Path(location)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"caption model {location}: no config.json in that directory")
        return path
    from filelock import FileLock

    cache = Path(cache_dir).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / hashlib.sha1(location.encode()).hexdigest()[:16]
    with FileLock(str(target) + ".lock"):
        if (target / COMPLETE_MARKER).exists():
            return target
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("downloading %s to %s", location, target)
        storage.download_dir(location, tmp)
        if not (tmp / "config.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileNotFoundError(f"caption model {location}: no config.json under that prefix")
        (tmp / COMPLETE_MARKER).touch()
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target
