"""Requests and batch jobs apart in the prediction log, on SQLite and a real PostgreSQL
(`store_target`): each row says where it came from, the summary counts both and reports the
latency of requests only (a job's images are timed a chunk at a time); a log at version 1 of
the predictions store (before the `source` column) is read as all requests, and migrated to
the next version when a server opens it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from pneumo_onnx.engine.serve.store.backend import Target
from pneumo_onnx.engine.serve.store.databases import open_database
from pneumo_onnx.engine.serve.store.predictions import PredictionLog
from pneumo_onnx.engine.serve.store.reports import summarize
from pneumo_onnx.engine.serve.store.schema import MIGRATIONS, VERSIONS
from tests.conftest import rec

StoreTarget = Callable[[str], Target]  # the store_target fixture: SQLite or PostgreSQL
NOW = 1_700_000_000.0


def query(target: Target, sql: str) -> list[tuple]:
    conn = open_database(target).connect()
    try:
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def test_summary_counts_jobs_apart_and_times_requests_only(store_target: StoreTarget) -> None:
    path = store_target("predictions.db")
    with PredictionLog(path) as log:
        for i in range(4):
            log.record(rec(NOW - 60 + i, latency=10.0 + i, version="2"))
        for i in range(3):  # one chunk of a job: the chunk's time on each image
            log.record(
                replace(rec(NOW - 30 + i, latency=5000.0, version="2"), route="/jobs", source="job")
            )
    s = summarize(path, hours=1, now=NOW)
    assert (s["total"], s["scored"]) == (7, 7)
    assert s["by_source"] == {"interactive": 4, "job": 3}
    assert s["latency_ms"]["max"] == 13.0 and s["latency_ms"]["mean"] == 11.5
    got = query(path, "SELECT source, COUNT(*) FROM predictions GROUP BY source ORDER BY source")
    assert got == [("interactive", 4), ("job", 3)]


def test_a_version_1_log_reads_as_requests_and_is_migrated(store_target: StoreTarget) -> None:
    path = store_target("predictions.db")
    db = open_database(path)
    conn = db.connect()
    try:  # the predictions store as version 1 left it, with one request in it
        db.prepare(conn)
        with conn.transaction(lock="schema"):
            conn.execute(VERSIONS)
            MIGRATIONS["predictions"][0](conn)
            conn.execute("INSERT INTO pneumo_schema (store, version) VALUES ('predictions', 1)")
            conn.execute(
                "INSERT INTO predictions (time, request_id, route, model_name, model_version, "
                "score, label, threshold, latency_ms, image_sha256) VALUES (?, 'r', '/predict', "
                "'pneumonia', '1', 0.2, 'NORMAL', 0.5, 12.0, ?)",
                (NOW - 10, "0" * 64),
            )
        assert "source" not in conn.columns("predictions")
    finally:
        conn.close()
    s = summarize(path, hours=1, now=NOW)  # a report reads it as it is
    assert s["by_source"] == {"interactive": 1, "job": 0} and s["latency_ms"]["max"] == 12.0
    with PredictionLog(path) as log:  # a server opening it runs the next step
        log.record(replace(rec(NOW - 5, latency=900.0, version="2"), source="job"))
    s = summarize(path, hours=1, now=NOW)
    assert s["by_source"] == {"interactive": 1, "job": 1} and s["latency_ms"]["max"] == 12.0
    versions = query(path, "SELECT version FROM pneumo_schema WHERE store = 'predictions'")
    assert versions == [(len(MIGRATIONS["predictions"]),)] and len(MIGRATIONS["predictions"]) >= 2
