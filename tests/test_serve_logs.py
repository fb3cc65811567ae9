"""engine.serve.logs: one JSON object per line, extra fields included."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from pneumo_onnx.engine.serve.logs import JsonFormatter, configure


def test_json_lines_with_extra_fields_and_exceptions() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.serve.logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info(
            "scored %d images",
            3,
            extra={
                "request_id": "abc",
                "route": "/predict",
                "status": 200,
                "latency_ms": 12.5,
                "path": Path("/x"),
            },
        )
        try:
            raise ValueError("bad pixel")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "scored 3 images" and first["level"] == "INFO"
    assert first["logger"] == "test.serve.logs"
    assert (first["request_id"], first["route"], first["status"], first["latency_ms"]) == (
        "abc",
        "/predict",
        200,
        12.5,
    )
    assert first["path"] == "/x"  # not JSON-serialisable: written as text
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert "args" not in first and "exception" not in first
    assert second["level"] == "ERROR" and "ValueError: bad pixel" in second["exception"]


def test_configure_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure("debug", io.StringIO())
        handler = configure("info", stream)
        assert [h for h in root.handlers if h not in before] == [handler]
        assert root.level == logging.INFO
        logging.getLogger("test.configure").info("hello", extra={"request_id": "r1"})
        line = json.loads(stream.getvalue())
        assert (line["message"], line["request_id"]) == ("hello", "r1")
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)
