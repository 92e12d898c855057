"""Process-wide logging: one format, secrets scrubbed, library noise turned down."""

from __future__ import annotations

import logging
import os
import sys

from pyratok.core.secrets import SecretsFilter

_CONFIGURED = False
_NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "filelock", "alembic", "httpx", "fsspec", "PIL")


def setup_logging(level: str | int | None = None) -> None:
    """Idempotent; level from the argument, ``$PYRATOK_LOG_LEVEL``, else INFO."""
    global _CONFIGURED
    level = level or os.environ.get("PYRATOK_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    if not _CONFIGURED:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler.addFilter(SecretsFilter())
        root.addHandler(handler)
        for name in _NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)
        _CONFIGURED = True
    root.setLevel(level)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
