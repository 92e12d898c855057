"""Keep credentials out of logs, MLflow params and artifacts.

Credentials only ever come from the environment. Two guards: :func:`redact`
scrubs structured data before it is logged as params or written as an
artifact; :class:`SecretsFilter` scrubs log records of the values of
credential-like environment variables, wherever they would otherwise appear.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any
from urllib.parse import urlparse, urlunparse

REDACTED = "***"
SENSITIVE_KEY = re.compile(r"(secret|password|passwd|token|credential|access_key|session_key|api_key|private_key)", re.I)
_SIGNED_QUERY = re.compile(r"([?&](X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=)[^&\s]+", re.I)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_MIN_SECRET_LEN = 6  # shorter values would redact ordinary words


def is_sensitive_key(key: str) -> bool:
    return bool(SENSITIVE_KEY.search(key.rsplit(".", 1)[-1]))


def scrub_text(text: str) -> str:
    """Userinfo out of URLs, signatures out of presigned query strings, env secret values out of text."""
    text = _SIGNED_QUERY.sub(lambda m: m.group(1) + REDACTED, text)
    text = re.sub(r"(\w+://)[^/\s:@]+:[^/\s@]+@", r"\1" + REDACTED + "@", text)
    for value in secret_values():
        text = text.replace(value, REDACTED)
    return text


def _is_number(value: Any) -> bool:
    """Numbers (also as text, as params are logged) are never credentials: keeps counts like
    ``max_new_tokens`` or ``token_budget`` readable."""
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and bool(_NUMBER.match(value.strip()))


def redact(data: Any, key: str = "") -> Any:
    """A copy of ``data`` with sensitive keys and embedded credentials replaced by ``***``."""
    if key and is_sensitive_key(key) and data not in (None, "", False) and not _is_number(data):
        return REDACTED
    if isinstance(data, dict):
        return {k: redact(v, str(k)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(redact(v) for v in data)
    if isinstance(data, str):
        return scrub_text(data)
    return data


def strip_url_credentials(url: str) -> str:
    parsed = urlparse(url)
    if not parsed.password and not parsed.username:
        return url
    host = parsed.hostname or ""
    if parsed.port:
        host = f"{host}:{parsed.port}"
    return urlunparse(parsed._replace(netloc=host))


def secret_values() -> list[str]:
    """Values of credential-like environment variables, longest first."""
    # Snapshot the keys first: other threads (e.g. MLflow telemetry) add/remove variables meanwhile.
    found = ((k, os.environ.get(k)) for k in list(os.environ))
    values = {v for k, v in found if v and is_sensitive_key(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


class SecretsFilter(logging.Filter):
    """Rewrites each record's message with :func:`scrub_text` before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is not ours to fix here
            return True
        clean = scrub_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True
