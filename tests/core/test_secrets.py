import logging

from pyratok.core.secrets import REDACTED, SecretsFilter, redact, scrub_text, strip_url_credentials


def test_redact_sensitive_keys_and_url_credentials():
    data = {
        "storage": {"endpoint_url": "http://user:hunter22@minio:9000", "secret_key": "abc"},
        "tracking": {"token": "tok123456", "experiment": "e"},
        "lists": ["https://x/y?X-Amz-Signature=deadbeef&a=1"],
    }
    out = redact(data)
    assert out["storage"]["secret_key"] == REDACTED
    assert "hunter22" not in out["storage"]["endpoint_url"]
    assert out["tracking"]["token"] == REDACTED and out["tracking"]["experiment"] == "e"
    assert "deadbeef" not in out["lists"][0]


def test_numeric_settings_with_token_in_their_name_stay_readable():
    out = redact({"caption": {"sampling": {"max_new_tokens": 16}}, "ar": {"token_budget": 2048, "token": "tok123456"}})
    assert out["caption"]["sampling"]["max_new_tokens"] == 16 and out["ar"]["token_budget"] == 2048
    assert out["ar"]["token"] == REDACTED
    assert redact({"caption.sampling.max_new_tokens": "16"}) == {"caption.sampling.max_new_tokens": "16"}


def test_env_secret_values_are_scrubbed_from_text_and_logs(monkeypatch, caplog):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-xyz")
    assert "s3cr3t-value-xyz" not in scrub_text("key is s3cr3t-value-xyz")
    logger = logging.getLogger("pyratok.test.secrets")
    logger.addFilter(SecretsFilter())
    with caplog.at_level(logging.INFO, logger="pyratok.test.secrets"):
        logger.info("connecting with %s", "s3cr3t-value-xyz")
    assert "s3cr3t-value-xyz" not in caplog.text and REDACTED in caplog.text


def test_strip_url_credentials():
    assert strip_url_credentials("https://u:p@host:5000/x") == "https://host:5000/x"
    assert strip_url_credentials("http://host") == "http://host"
