"""The prediction log at scale: reports aggregate in SQL with memory that does not grow with
the log, and the writer deletes what is older than the retention."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pneumo_onnx.engine.errors import Overloaded
from pneumo_onnx.engine.serve.front.routes.ops import _report
from pneumo_onnx.engine.serve.store.predictions import COLUMNS, PredictionLog
from pneumo_onnx.engine.serve.store.reports import drift_report, summarize
from tests.test_monitor import NOW, rec, rows


def bulk(path: Path, n: int, start: float, hours: float) -> None:
    """`n` scored rows spread over `hours` from `start`, written directly (fast)."""
    with PredictionLog(path):
        pass  # creates the file with its schema
    rng = np.random.default_rng(11)
    times = np.sort(start + rng.uniform(0, hours * 3600, n))  # written in time order
    scores = rng.beta(2, 3, n)
    insert = "INSERT INTO predictions ({}) VALUES ({})".format(
        ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
    )
    labels = np.where(scores > 0.5, "PNEUMONIA", "NORMAL")
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            insert,
            (
                tuple(
                    {"time": float(t), "request_id": "r", "route": "/predict",
                     "model_name": "pneumonia", "model_version": "1", "score": float(s),
                     "label": str(label), "threshold": 0.5, "latency_ms": float(10 + s * 20),
                     "image_sha256": "0" * 64, "source": "interactive", "caller": ""}.get(c)
                    for c in COLUMNS
                )
                for t, s, label in zip(times, scores, labels, strict=True)
            ),
        )  # fmt: skip
    conn.close()


@pytest.mark.slow  # over 5 s: make test runs it, make test-fast leaves it out
def test_reports_on_a_large_log_use_bounded_python_memory(tmp_path: Path) -> None:
    """300,000 rows: the reports' Python allocations stay under 2 MB (reading the rows into
    Python, as before, took ~100 MB for this many)."""
    path = tmp_path / "log.db"
    bulk(path, 300_000, NOW - 48 * 3600, 48)
    tracemalloc.start()
    try:
        s = summarize(path, hours=24, now=NOW)
        d = drift_report(path, recent_hours=12, reference_hours=48, now=NOW)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 140_000 < s["total"] < 160_000 and s["scored"] == s["total"]
    assert sum(s["score"]["histogram"]["counts"]) == s["total"]
    assert s["latency_ms"]["p50"] < s["latency_ms"]["p99"] <= s["latency_ms"]["max"] <= 30
    assert d["status"] == "stable" and d["psi"] < 0.01
    assert peak < 2 * 2**20, peak


def test_the_writer_deletes_rows_older_than_the_retention(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    now = time.time()
    with PredictionLog(path) as log:
        for i in range(20):
            log.record(rec(now - 40 * 86400 + i))  # 40 days old
        for i in range(5):
            log.record(rec(now - 60 + i))
    assert rows(path) == [(25,)]
    with PredictionLog(path, retention_days=30) as log:
        deadline = time.monotonic() + 10
        while rows(path) != [(5,)] and time.monotonic() < deadline:
            time.sleep(0.05)
        log.record(rec(now))
    assert rows(path) == [(6,)]
    assert rows(path, "SELECT MIN(time) > ? FROM predictions".replace("?", str(now - 86400))) == [
        (1,)
    ]


def test_at_most_two_reports_run_at_once() -> None:
    """The server's monitoring routes: a third report while two run is shed (503), not queued."""

    async def three() -> list[object]:
        slow = [_report(time.sleep, 0.5) for _ in range(2)]
        tasks = [asyncio.ensure_future(t) for t in slow]
        await asyncio.sleep(0.1)
        with pytest.raises(Overloaded, match="two monitoring reports are already running"):
            await _report(time.sleep, 0)
        return await asyncio.gather(*tasks)

    assert asyncio.run(three()) == [None, None]
