"""Requests and batch jobs apart in the prediction log: each row says where it came from, the
summary counts both and reports the latency of requests only (a job's images are timed a chunk
at a time); a log written before the `source` column existed is read as all requests, and
brought up to date when a server opens it."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from pneumo_onnx.engine.serve.store.predictions import PredictionLog, PredictionRecord
from pneumo_onnx.engine.serve.store.reports import summarize
from pneumo_onnx.engine.serve.store.schema import PREDICTIONS

NOW = 1_700_000_000.0


def rec(t: float, latency: float) -> PredictionRecord:
    return PredictionRecord(
        time=t,
        request_id="r",
        route="/predict",
        model_name="pneumonia",
        model_version="2",
        score=0.7,
        label="PNEUMONIA",
        threshold=0.5,
        latency_ms=latency,
        image_sha256="0" * 64,
    )


def test_summary_counts_jobs_apart_and_times_requests_only(tmp_path: Path) -> None:
    path = tmp_path / "predictions.db"
    with PredictionLog(path) as log:
        for i in range(4):
            log.record(rec(NOW - 60 + i, latency=10.0 + i))
        for i in range(3):  # one chunk of a job: the chunk's time on each image
            log.record(replace(rec(NOW - 30 + i, latency=5000.0), route="/jobs", source="job"))
    s = summarize(path, hours=1, now=NOW)
    assert (s["total"], s["scored"]) == (7, 7)
    assert s["by_source"] == {"interactive": 4, "job": 3}
    assert s["latency_ms"]["max"] == 13.0 and s["latency_ms"]["mean"] == 11.5
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT source, COUNT(*) FROM predictions GROUP BY 1").fetchall() == [
            ("interactive", 4),
            ("job", 3),
        ]


def test_a_log_without_the_source_column_reads_as_requests_and_is_upgraded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "predictions.db"
    old = PREDICTIONS.replace("    source TEXT NOT NULL DEFAULT 'interactive',\n", "")
    assert old != PREDICTIONS
    with sqlite3.connect(path) as conn:
        conn.executescript(old)
        conn.execute(
            "INSERT INTO predictions (time, request_id, route, model_name, model_version, score,"
            " label, threshold, latency_ms, image_sha256) VALUES (?, 'r', '/predict', "
            "'pneumonia', '1', 0.2, 'NORMAL', 0.5, 12.0, ?)",
            (NOW - 10, "0" * 64),
        )
    conn.close()
    s = summarize(path, hours=1, now=NOW)
    assert s["by_source"] == {"interactive": 1, "job": 0} and s["latency_ms"]["max"] == 12.0
    with PredictionLog(path) as log:  # a server opening it adds the column
        log.record(replace(rec(NOW - 5, latency=900.0), source="job"))
    s = summarize(path, hours=1, now=NOW)
    assert s["by_source"] == {"interactive": 1, "job": 1} and s["latency_ms"]["max"] == 12.0
