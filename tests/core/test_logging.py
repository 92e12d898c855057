"""Process-wide logging set-up."""

import io
import logging
import sys

from pyratok.core.logging import get_logger, setup_logging


def test_records_go_to_the_current_stderr_even_after_the_old_one_closed(monkeypatch):
    setup_logging("INFO")
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    get_logger("pyratok.test").info("one")
    assert "INFO pyratok.test: one" in first.getvalue()
    first.close()  # what pytest's capture does to the stream of a finished test
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("pyratok.test").info("two")
    assert "two" in second.getvalue()


def test_secrets_are_scrubbed_from_records(monkeypatch):
    setup_logging("INFO")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-123")
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    logging.getLogger("pyratok.test").info("key is %s", "very-secret-value-123")
    assert "very-secret-value-123" not in out.getvalue()
