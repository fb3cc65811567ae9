"""engine.serve.store.predictions and .reports: the prediction log on real SQLite files and a
real PostgreSQL server (`store_target`), summary, drift."""

from __future__ import annotations

import hashlib
import math
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pneumo_onnx.engine.errors import NotFoundError, UsageError
from pneumo_onnx.engine.serve.store.backend import Target
from pneumo_onnx.engine.serve.store.databases import open_database
from pneumo_onnx.engine.serve.store.predictions import PredictionLog, PredictionRecord
from pneumo_onnx.engine.serve.store.reports import (
    PSI_EPSILON,
    drift_report,
    psi,
    psi_level,
    summarize,
)
from tests.conftest import rec

StoreTarget = Callable[[str], Target]  # the store_target fixture: SQLite or PostgreSQL
NOW = 1_700_000_000.0
HOUR = 3600.0


def rows(path: Target, sql: str = "SELECT COUNT(*) FROM predictions") -> list[tuple]:
    """The rows of `sql`, through a connection of the log's own database (either kind)."""
    conn = open_database(path).connect()
    try:
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def write(path: Target, records: list[PredictionRecord]) -> None:
    with PredictionLog(path) as log:
        for r in records:
            log.record(r)


# --- the writer ---------------------------------------------------------------------------------


def test_sixteen_threads_lose_nothing_under_backpressure(store_target: StoreTarget) -> None:
    path = store_target("log.db")
    log = PredictionLog(path, max_queue=64)  # far fewer slots than records: record() must wait

    def work(worker: int) -> None:
        for i in range(200):
            log.record(rec(NOW, i / 200, request_id=f"{worker}-{i}"))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert rows(path) == [(3200,)]
    ids = {r[0] for r in rows(path, "SELECT request_id FROM predictions")}
    assert ids == {f"{w}-{i}" for w in range(16) for i in range(200)}
    if isinstance(path, Path):
        assert rows(path, "PRAGMA journal_mode") == [("wal",)]


def test_close_flushes_everything_and_is_idempotent(store_target: StoreTarget) -> None:
    path = store_target("log.db")
    log = PredictionLog(path)
    for i in range(1234):
        log.record(rec(NOW + i))
    log.close()  # no flush() before: close alone must write every queued row
    assert rows(path) == [(1234,)]
    log.close()
    log.flush()  # a closed log has nothing left to flush
    with pytest.raises(UsageError, match="is closed"):
        log.record(rec(NOW))
    assert log.stats() == {"written": 1234, "queued": 0, "closed": True, "failure": None}


def test_flush_commits_while_open_and_reopening_appends(store_target: StoreTarget) -> None:
    path = store_target("log.db")
    log = PredictionLog(path)
    log.record(rec(NOW))
    log.record(rec(NOW, error="truncated", score=None))
    log.flush()
    assert rows(path) == [(2,)]  # visible to another connection while the writer is open
    assert log.summary(now=NOW)["total"] == 2
    log.close()
    write(path, [rec(NOW)])
    assert rows(path) == [(3,)]


def test_images_stored_only_when_asked(store_target: StoreTarget) -> None:
    image = b"\xff\xd8 fake jpeg bytes"
    write(store_target("no.db"), [rec(NOW, image=image)])
    assert rows(store_target("no.db"), "SELECT image FROM predictions") == [(None,)]
    with PredictionLog(store_target("yes.db"), store_images=True) as log:
        log.record(rec(NOW, image=image))
    assert rows(store_target("yes.db"), "SELECT image FROM predictions") == [(image,)]


def test_record_from_engine_result(tmp_path: Path) -> None:
    image = b"some image bytes"
    ok = PredictionRecord.from_result(
        {"prediction": "PNEUMONIA", "confidence": 0.9, "raw_score": 0.9, "threshold": 0.5},
        image=image,
        request_id="abc",
        route="/v2/models/pneumonia/infer",
        model_name="pneumonia",
        model_version="1",
        latency_ms=3.5,
    )
    assert ok.image_sha256 == hashlib.sha256(image).hexdigest()
    assert (ok.score, ok.label, ok.threshold, ok.error) == (0.9, "PNEUMONIA", 0.5, None)
    assert abs(ok.time - time.time()) < 5
    bad = PredictionRecord.from_result(
        {"error": "cannot decode"},
        image=image,
        request_id="abc",
        route="/predict",
        model_name="pneumonia",
        model_version="1",
        latency_ms=1.0,
        at=NOW,
    )
    assert (bad.score, bad.label, bad.error, bad.time) == (None, None, "cannot decode", NOW)


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no prediction log at"):
        summarize(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(UsageError, match="is not a pneumo prediction log"):
        summarize(junk)
    with pytest.raises(UsageError, match="cannot open prediction log"):
        PredictionLog(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with pytest.raises(UsageError, match="no 'predictions' table"):
        summarize(other)
    with pytest.raises(UsageError, match="max_queue"):
        PredictionLog(tmp_path / "x.db", max_queue=0)


# --- summary ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, written out (numpy's default method)."""
    s = sorted(values)
    rank = q / 100 * (len(s) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def test_summary_matches_independent_figures(store_target: StoreTarget) -> None:
    rng = np.random.default_rng(7)
    path = store_target("log.db")
    inside: list[PredictionRecord] = []
    for i in range(300):
        t = NOW - rng.uniform(0, 24 * HOUR)
        score = float(rng.beta(2, 3))
        threshold = 0.3 if i % 5 == 0 else 0.5
        version = "2" if i % 3 == 0 else "1"
        inside.append(
            rec(t, score, threshold=threshold, latency=float(rng.gamma(2, 20)), version=version)
        )
    failures = [rec(NOW - 60, None, error="bad image", latency=1.5) for _ in range(7)]
    outside = [rec(NOW - 25 * HOUR, 0.99), rec(NOW + 10, 0.99)]  # before / after the window
    write(path, inside + failures + outside)

    s = summarize(path, hours=24, now=NOW)
    scored = inside
    assert (s["total"], s["scored"], s["errors"]) == (307, 300, 7)
    assert s["per_hour"] == pytest.approx(307 / 24)
    pneumonia = sum(1 for r in scored if r.score > r.threshold)
    assert s["classes"] == {
        "NORMAL": {"count": 300 - pneumonia, "rate": (300 - pneumonia) / 300},
        "PNEUMONIA": {"count": pneumonia, "rate": pneumonia / 300},
    }
    assert s["score"]["mean"] == pytest.approx(sum(r.score for r in scored) / 300)
    bins = [0] * 10
    for r in scored:
        bins[min(int(r.score * 10), 9)] += 1
    assert s["score"]["histogram"]["counts"] == bins
    assert s["score"]["histogram"]["edges"] == [i / 10 for i in range(11)]
    confidences = [r.score if r.score > r.threshold else 1 - r.score for r in scored]
    assert s["confidence"]["mean"] == pytest.approx(sum(confidences) / 300)
    latencies = [r.latency_ms for r in inside + failures]
    for q in (50, 95, 99):
        assert s["latency_ms"][f"p{q}"] == pytest.approx(percentile(latencies, q), rel=0.01)
    assert s["latency_ms"]["max"] == max(latencies)
    by_version = {v["model_version"]: v for v in s["by_model_version"]}
    v2 = [r for r in scored if r.model_version == "2"]
    assert by_version["2"]["total"] == len(v2) and by_version["2"]["errors"] == 0
    assert by_version["2"]["mean_score"] == pytest.approx(sum(r.score for r in v2) / len(v2))
    assert by_version["1"]["total"] == 300 - len(v2) + 7 and by_version["1"]["errors"] == 7
    assert s["window"]["end"] == "2023-11-14T22:13:20+00:00"


def test_summary_of_an_empty_window(store_target: StoreTarget) -> None:
    path = store_target("log.db")
    write(path, [rec(NOW - 48 * HOUR)])
    s = summarize(path, hours=1, now=NOW)
    assert (s["total"], s["classes"], s["score"]["mean"], s["latency_ms"]["p50"]) == (
        0,
        {},
        None,
        None,
    )
    with pytest.raises(UsageError, match="hours must be positive"):
        summarize(path, hours=0)


# --- PSI and drift ------------------------------------------------------------------------------


def test_psi_hand_computed() -> None:
    reference = [0.05] * 50 + [0.95] * 50
    recent = [0.05] * 80 + [0.95] * 20
    # bins 0 and 9 only; the 8 empty bins are eps in both samples and add (eps - eps) * ln 1 = 0
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(reference, recent) == pytest.approx(expected, rel=1e-12)
    assert psi(reference, reference) == 0.0
    # a bin empty on one side counts as eps: two bins of (0.5 - eps) * ln(0.5 / eps)
    moved = [0.05] * 50 + [0.15] * 50
    expected = 2 * (0.5 - PSI_EPSILON) * math.log(0.5 / PSI_EPSILON)
    assert psi(reference, moved) == pytest.approx(expected, rel=1e-12)
    # bin edges: 0.1 opens bin 1, and 1.0 belongs to the last bin
    assert psi([0.1] * 10, [0.1999] * 10) == 0.0
    assert psi([1.0] * 10, [0.9] * 10) == 0.0
    with pytest.raises(UsageError, match="at least one score"):
        psi([], [0.5])


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (0.0, "stable"),
        (0.0999, "stable"),
        (0.1, "moderate"),
        (0.25, "moderate"),
        (0.2501, "significant"),
    ],
)
def test_psi_levels(value: float, level: str) -> None:
    assert psi_level(value) == level


def spread(counts: list[int], *, t: float, threshold: float = 0.5) -> list[PredictionRecord]:
    """counts[i] records with a score in the middle of bin i, at time t."""
    return [
        rec(t, i / 10 + 0.05, threshold=threshold) for i, n in enumerate(counts) for _ in range(n)
    ]


BASE = [20, 20, 20, 20, 20, 0, 0, 0, 0, 0]  # all NORMAL at 0.5


@pytest.mark.parametrize(
    ("recent", "threshold", "status", "psi_value"),
    [
        (BASE, 0.5, "stable", 0.0),
        # PSI 0.1 ln 1.5 + 0.1 ln 2 = 0.1099, all still NORMAL: moderate
        ([30, 20, 20, 20, 10, 0, 0, 0, 0, 0], 0.5, "moderate", 0.1 * math.log(3.0)),
        # scores moved above 0.5: the score PSI alone is significant
        ([0, 0, 0, 0, 0, 20, 20, 20, 20, 20], 0.5, "significant", None),
        # same scores, lower threshold: PSI 0 but 40% more PNEUMONIA predictions
        (BASE, 0.25, "significant", 0.0),
    ],
    ids=["stable", "moderate-psi", "significant-psi", "significant-class-rate"],
)
def test_drift_status(
    store_target: StoreTarget,
    recent: list[int],
    threshold: float,
    status: str,
    psi_value: float | None,
) -> None:
    path = store_target("log.db")
    write(path, spread(BASE, t=NOW - 48 * HOUR) + spread(recent, t=NOW - HOUR, threshold=threshold))
    d = drift_report(path, recent_hours=24, reference_hours=168, now=NOW)
    assert d["status"] == status
    assert d["drift_detected"] == (status == "significant")
    assert (d["recent"]["scored"], d["reference"]["scored"]) == (100, 100)
    if psi_value is not None:
        assert d["psi"] == pytest.approx(psi_value, abs=1e-12)
    if threshold == 0.25:
        assert d["class_rates"]["PNEUMONIA"] == {"recent": 0.4, "reference": 0.0, "change": 0.4}
        assert any("PNEUMONIA rate 0.000 -> 0.400" in m for m in d["messages"])


def test_drift_with_too_few_rows_and_explicit_reference(store_target: StoreTarget) -> None:
    path = store_target("log.db")
    write(
        path,
        spread(BASE, t=NOW - 100 * HOUR) + spread([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], t=NOW - HOUR),
    )
    d = drift_report(path, now=NOW)
    assert d["status"] == "insufficient_data" and d["psi"] is None and not d["drift_detected"]
    assert d["messages"][0] == "the recent window has 10 scored predictions, fewer than 30"
    d = drift_report(path, now=NOW, min_rows=10)
    assert d["status"] == "significant"  # 10 rows only in bins 0-1 against 20 per bin 0-4
    # an explicit reference window that misses the reference rows
    d = drift_report(path, now=NOW, min_rows=10, reference=(NOW - 50 * HOUR, NOW - 30 * HOUR))
    assert d["status"] == "insufficient_data" and d["reference"]["scored"] == 0
    with pytest.raises(UsageError, match="must exceed recent hours"):
        drift_report(path, recent_hours=24, reference_hours=24)
    with pytest.raises(UsageError, match="start < end"):
        drift_report(path, reference=(NOW, NOW - 1))


def test_drift_windows_do_not_overlap(store_target: StoreTarget) -> None:
    """A row exactly at the recent window's start belongs to the recent window only."""
    path = store_target("log.db")
    write(path, [rec(NOW - 24 * HOUR, 0.05)])
    d = drift_report(path, now=NOW)
    assert (d["recent"]["rows"], d["reference"]["rows"]) == (1, 0)


def test_serve_helpers_import_neither_tensorflow_nor_the_server_stack(tmp_path: Path) -> None:
    """The helpers are protocol-free: no TensorFlow, no FastAPI, no onnxruntime."""
    code = (
        "import sys\n"
        "import pneumo_onnx.engine.serve.store.predictions\n"
        "import pneumo_onnx.engine.serve.store.reports\n"
        "import pneumo_onnx.engine.serve.store.jobs, pneumo_onnx.engine.serve.front.uploads\n"
        "import pneumo_onnx.engine.serve.logs\n"
        "print('\\n'.join(sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = {m.split(".")[0] for m in done.stdout.split()}
    assert "pneumo_onnx" in loaded and "numpy" in loaded
    forbidden = {"tensorflow", "keras", "tf_keras", "tf2onnx", "fastapi", "uvicorn", "onnxruntime"}
    assert loaded.isdisjoint(forbidden), loaded & forbidden
