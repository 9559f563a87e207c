"""Hiding credentials in everything the pipeline prints or stores.

Credentials reach messages by many roads: a URI with `user:password@` that a library echoes back
without its scheme (botocore: `Invalid bucket name "USER:PASSWORD@bucket"`), the signature of a
pre-signed URL, an Authorization header in a debug log, a dict of client options in a repr. One
function, `redact_text`, rewrites all of these forms in any text; exception messages
(`PipelineError`), log records (`RedactingFilter`, on every pipeline logger and on the CLI's
handlers), the manifest, commit markers, `summary.json` and `spec.json` all go through it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "***"
# Names of options and parameters that carry credentials (s3fs's `key`/`secret`, Azure's `sig`, ...).
SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|access_?key|signature|^key$|^sig$", re.I)

# The user-information part of a URI, `user:password@`, with or without the scheme before it.
_USERINFO = re.compile(r"[^\s\"'<>()\[\]{}/?#@:]*:[^\s\"'<>/?#@]*@(?=[\w\[.-])")
# `name=value` (query parameters, headers) and `'name': 'value'` (reprs, JSON) where the name says
# secret; all AWS pre-signing parameters (X-Amz-Signature, X-Amz-Credential, ...).
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(\b(?:[\w.-]*(?:secret|passw(?:or)?d|token|credential|signature|access_?key)[\w.-]*|x-amz-[\w-]+|sig)"
    r"(?:\s*=\s*[\"']?|[\"']?\s*:\s*[\"']))([^\s\"'&;,)}\]]+)"
)


def redact_text(text: str) -> str:
    """`text` with every password of a URI and every secret-named value replaced by ***."""
    text = _USERINFO.sub(f"{REDACTED}@", text)
    return _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, text)


# A URI is text: one function for both, so no message escapes a second, weaker rule.
redact_uri = redact_text


def redact(value: Any) -> Any:
    """A copy of plain data (dicts, lists, strings) with secrets replaced: values of secret-named
    keys, and credentials inside strings."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and SECRET_NAME.search(k) and v else redact(v)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


class RedactingFilter(logging.Filter):
    """Redacts a log record's message, exception text and stack before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` with redaction: a logger's filters see only its own records, so
    every pipeline module takes its logger from here (whatever handlers the application set up)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def redact_log_handlers(logger: logging.Logger | None = None) -> None:
    """Redact everything the handlers of `logger` (default: the root logger) emit, including the
    records of other libraries (botocore, s3fs, Ray) that propagate to them."""
    for handler in (logger or logging.getLogger()).handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
