"""Process-wide logging: one format, secrets scrubbed, library noise turned down."""

from __future__ import annotations

import logging
import os
import sys

from pyratok.core.secrets import SecretsFilter

_CONFIGURED = False
_NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "filelock", "alembic", "httpx", "fsspec", "PIL")


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


def setup_logging(level: str | int | None = None) -> None:
    """Idempotent; level from the argument, ``$PYRATOK_LOG_LEVEL``, else INFO."""
    global _CONFIGURED
    level = level or os.environ.get("PYRATOK_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    if not _CONFIGURED:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler.addFilter(SecretsFilter())
        root.addHandler(handler)
        quiet_libraries()
        _CONFIGURED = True
    root.setLevel(level)


def quiet_libraries() -> None:
    """Chatty third-party loggers to WARNING (also called in Ray workers, which log on their own)."""
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
