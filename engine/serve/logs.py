"""Structured server logs: one JSON object per line, for log shippers (Loki, CloudWatch, ELK).

log.info("scored", extra={"request_id": rid, "route": "/predict", "status": 200,
                          "latency_ms": 12.5})
-> {"time": "2025-01-01T12:00:00.123+00:00", "level": "INFO", "logger": "engine.serve.app",
    "message": "scored", "request_id": "...", "route": "/predict", "status": 200,
    "latency_ms": 12.5}
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from datetime import datetime, timezone
from typing import IO, Any

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


class JsonFormatter(logging.Formatter):
    """One JSON line per record: time (ISO 8601, UTC), level, logger, message, the `extra=`
    fields, and `exception` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot hold (a Path, an exception) still gets logged.
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: int | str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Send the root logger's records to `stream` (default stderr) as JSON lines.

    Replaces a handler installed by an earlier call, so calling it twice logs once.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_pneumo_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._pneumo_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


def sane_request_id(given: str | None) -> str:
    """The caller's request id (X-Request-ID, gRPC `x-request-id`) when it is sane, else a
    fresh one."""
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return uuid.uuid4().hex
