"""Process-wide logging: one format, secrets scrubbed, library noise turned down.

The console shows pyratok's own lines. What libraries print for their own developers (progress
bars of weight loading, DeepSpeed's op builds and accelerator guess, Ray Data's executor plans,
MLflow's schema migrations, deprecations inside torch.distributed that DeepSpeed calls) is off
unless ``PYRATOK_LOG_LEVEL=DEBUG`` (``pyratok -v``) asks for it: :func:`verbose`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from typing import Iterator

from pyratok.core.secrets import SecretsFilter

LEVEL_ENV = "PYRATOK_LOG_LEVEL"
_CONFIGURED = False
_NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "filelock", "alembic", "httpx", "fsspec", "PIL",
          "mlflow.store.db.utils")
_CAPPED = {"DeepSpeed": logging.ERROR,
           # "token authentication is enabled" at every local start (the embedded Ray listens on loopback only)
           "ray._private.authentication.authentication_token_setup": logging.ERROR}
"""Loggers whose library resets their level at import: capped by a filter, which it leaves alone."""
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
"""Set before the libraries import (transformers reads them then); a local Ray's workers inherit them."""
_QUIET_WARNINGS = (
    r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",  # DeepSpeed's calls
)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is *now*: test runners and notebooks swap (and close)
    the stream a handler captured at set-up, which turns every later record into a logging error."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def verbose() -> bool:
    """Whether library noise is on: ``$PYRATOK_LOG_LEVEL`` is DEBUG (``pyratok -v`` sets it)."""
    level = os.environ.get(LEVEL_ENV, "INFO").upper()
    return logging.getLevelName(level) == logging.DEBUG if not level.isdigit() else int(level) <= logging.DEBUG


def setup_logging(level: str | int | None = None) -> None:
    """Idempotent; level from the argument, ``$PYRATOK_LOG_LEVEL``, else INFO."""
    global _CONFIGURED
    level = level or os.environ.get(LEVEL_ENV, "INFO")
    root = logging.getLogger()
    if not _CONFIGURED:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler.addFilter(SecretsFilter())
        root.addHandler(handler)
        quiet_libraries()
        _CONFIGURED = True
    root.setLevel(level)


class _BelowLevel(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def quiet_libraries() -> None:
    """Chatty third-party loggers to WARNING, their progress bars and deprecation notices off
    (also called in Ray workers, which log on their own). Nothing is touched when :func:`verbose`."""
    if verbose():
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, level in _CAPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _BelowLevel) for f in logger.filters):
            logger.addFilter(_BelowLevel(level))
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


class _RootInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and record.levelno <= logging.INFO)


@contextlib.contextmanager
def library_prints() -> Iterator[None]:
    """Swallow what a library ``print``s inside the block (DeepSpeed announces each op it builds, on
    every rank) unless :func:`verbose`: then it prints as usual. Ray Train's workers turn ``print``
    into root-logger INFO records (its print patch), so those are held back for the block too."""
    if verbose():
        yield
        return
    root, only_ours = logging.getLogger(), _RootInfo()
    root.addFilter(only_ours)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(only_ours)


def quiet_ray_data() -> None:
    """Ray Data's console lines to WARNING (its executor plans and, in a log, its multi-line progress
    blocks); its own log file under the Ray session keeps everything. On a terminal its live
    progress bars stay: they are one display per running dataset, closed when it ends."""
    if verbose():
        return
    import ray.data  # noqa: F401 - configures the "ray.data" logger on import

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)  # the console one; Ray Data's session file handler is no stream


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
