"""Credentials never shown: one redaction function for every form a library may print (issue 20, item 5)."""

from __future__ import annotations

import logging

import pytest

from pipeline.errors import InfrastructureError, SpecError
from pipeline.redaction import get_logger, redact, redact_text


@pytest.mark.parametrize(
    "text, hidden, kept",
    [
        ("s3://USER:PASSWORD@bucket/in", "PASSWORD", "s3://***@bucket/in"),
        ('Invalid bucket name "USER:PASSWORD@bucket": Bucket name must match', "PASSWORD", '"***@bucket"'),
        ("ftp://u:p%40ss@host:21/x and sftp://me:pw@h/y", "p%40ss", "sftp://***@h/y"),
        ("http://u:hunter2@[::1]:80/x", "hunter2", "http://***@[::1]:80/x"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=beef&part=1", "beef", "part=1"),
        ("https://acct.blob.core.windows.net/c/b?sv=2021&sig=c2VjcmV0&se=2030", "c2VjcmV0", "se=2030"),
        ("Authorization: AWS4-HMAC-SHA256 Credential=AKIAX/2025/s3, Signature=abcd1234", "abcd1234", "Credential=***,"),
        ("{'aws_secret_access_key': 'wJalrXUt', 'region': 'eu'}", "wJalrXUt", "'region': 'eu'"),
        ("password=hunter2 token = 'abc123'", "abc123", "password=***"),
    ],
)
def test_every_form_of_credential_is_redacted(text, hidden, kept):
    out = redact_text(text)
    assert hidden not in out and "***" in out
    assert kept in out
    assert redact_text(out) == out  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "ExpiredToken: The provided token has expired.",
        "user@example.com wrote at 12:30 about s3://bucket/key",
        "sequence p_q failed (input): fewer than min_frames=2 frames",
    ],
)
def test_plain_text_is_left_alone(text):
    assert redact_text(text) == text


def test_pipeline_errors_never_show_credentials():
    assert "PASSWORD" not in str(InfrastructureError('cannot read: Invalid bucket name "USER:PASSWORD@bucket"'))
    assert "PASSWORD" not in str(SpecError("no sequences in s3://USER:PASSWORD@b/x"))
    assert redact({"options": {"secret": "x", "region": "eu"}, "uri": "s3://a:b@c/d"}) == {
        "options": {"secret": "***", "region": "eu"},
        "uri": "s3://***@c/d",
    }


def test_log_records_are_redacted_whatever_the_handler(caplog):
    logger = get_logger("pipeline.tests.redaction")
    try:
        raise OSError('Invalid bucket name "USER:PASSWORD@bucket"')
    except OSError:
        with caplog.at_level(logging.INFO):
            logger.exception("cannot read %s", "s3://USER:PASSWORD@bucket/in")
    assert "PASSWORD" not in caplog.text
    assert "cannot read s3://***@bucket/in" in caplog.text and '"***@bucket"' in caplog.text


def test_every_pipeline_module_logs_through_the_redacting_logger():
    """A module that took a plain logging.getLogger would log secrets unredacted."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "pipeline"
    plain = [p.name for p in root.rglob("*.py") if "logging.getLogger(__name__)" in p.read_text()]
    assert plain == [], plain
