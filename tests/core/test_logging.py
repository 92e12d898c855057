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


def test_library_noise_is_off_by_default_and_errors_still_show(monkeypatch, caplog):
    import os

    from pyratok.core.logging import quiet_libraries, verbose

    monkeypatch.delenv("PYRATOK_LOG_LEVEL", raising=False)
    assert not verbose()
    quiet_libraries()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # transformers' "Loading weights" bars
    deepspeed = logging.getLogger("DeepSpeed")
    deepspeed.setLevel(logging.INFO)  # what DeepSpeed does to its logger at import: the cap survives it
    with caplog.at_level(logging.INFO):
        deepspeed.warning("Setting accelerator to CPU.")
        deepspeed.error("a real DeepSpeed error")
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
    assert [r.getMessage() for r in caplog.records] == ["a real DeepSpeed error"]
    for level, on in (("DEBUG", True), ("debug", True), ("10", True), ("INFO", False), ("WARNING", False)):
        monkeypatch.setenv("PYRATOK_LOG_LEVEL", level)
        assert verbose() is on, level


def test_library_prints_are_swallowed_unless_verbose(monkeypatch, capsys, caplog):
    from pyratok.core.logging import library_prints

    monkeypatch.delenv("PYRATOK_LOG_LEVEL", raising=False)
    with caplog.at_level(logging.INFO):
        with library_prints():
            print("DeepSpeed op built successfully")
            logging.getLogger().info("a print that Ray Train's patch turned into a root record")
            logging.getLogger().warning("a root warning")
            logging.getLogger("pyratok.test").info("our own line")
        logging.getLogger().info("after the block")
    assert "built successfully" not in capsys.readouterr().out
    assert [r.getMessage() for r in caplog.records] == ["a root warning", "our own line", "after the block"]
    monkeypatch.setenv("PYRATOK_LOG_LEVEL", "DEBUG")
    with library_prints():
        print("shown with -v")
    assert "shown with -v" in capsys.readouterr().out


def test_progress_in_a_log_writes_plain_lines_also_for_an_unknown_total(caplog):
    from pyratok.core.progress import Progress

    with caplog.at_level(logging.INFO, logger="pyratok.test"):
        with Progress(None, "caption", unit="clips", logger=logging.getLogger("pyratok.test"), every_s=3600) as p:
            p.update(4)
            p.update(3)
        with Progress(5, "ingest: write", unit="shards", logger=logging.getLogger("pyratok.test"), every_s=3600) as p:
            for _ in range(5):
                p.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("caption: 7 clips (") and lines[1].startswith("ingest: write: 5/5 shards (")
