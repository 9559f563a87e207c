"""The driver's log: one line per event, readable by people (text) or machines (JSON lines).

Events (a sequence started, finished, failed or is retried; an actor started or was lost) carry
their facts as fields: in text they follow the message as `key=value`, in JSON they are keys of
the line's object. The same lines reach a Ray job's log, because a job's driver writes to stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Literal

from .redaction import redact, redact_log_handlers

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False, *, fmt: LogFormat = "text", stream=None) -> None:
    """Log INFO (DEBUG if verbose) and above to stderr, as text or one JSON object per line, with
    credentials redacted from every library's records (botocore's too)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    redact_log_handlers()


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...event fields}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(redact(getattr(record, "fields", {})))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_event(
    logger: logging.Logger, event: str, level: int = logging.INFO, *, message: str | None = None, **fields: Any
) -> None:
    """Log `event` with its fields. The text is `message` if given, else the fields:
    `sequence_done sequence_id=a attempt=1 frames=8 seconds=3.200`."""
    if message is None:
        message = " ".join([event, *(f"{k}={_text(v)}" for k, v in fields.items() if v is not None)])
    logger.log(level, "%s", message, extra={"fields": {"event": event, **fields}})


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    value = str(value)
    if not value or any(c.isspace() or c in "\"=" for c in value):
        return json.dumps(value)
    return value
