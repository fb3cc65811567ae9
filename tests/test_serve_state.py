"""The server's state folder under stress, with real servers and real SQLite: concurrent job
uploads against the store's cap, a full disk that frees up, a job store corrupted and a
prediction log deleted under a running server, kill -9 under load, and monitoring reports
during a retention pass."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.payloads import png
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.serve.store import predictions, retention, sqlite_backend
from pneumo_onnx.engine.serve.store.predictions import PredictionLog
from pneumo_onnx.engine.serve.store.reports import summarize
from tests.server_process import ServerProcess

JPEG = sample_images()[0].read_bytes()


def errors_logged(srv: ServerProcess) -> list[str]:
    lines = [json.loads(x) for x in srv.log_text().splitlines() if x.startswith("{")]
    return [x["message"] for x in lines if x["level"] == "ERROR"]


def wait_for(check: object, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow  # over 5 s: make test runs it, make test-fast leaves it out
def test_concurrent_job_uploads_cannot_pass_the_store_cap(tmp_path: Path) -> None:
    """Four uploads of 6 MB of images at once against a 16 MB store: the cap is checked in
    the write transaction that stores the job, so at most two are accepted, the rest get
    503. (Each holds 60 PNGs of 80 Mpx: scoring them takes longer than the uploads, so the
    accepted jobs stay pending while the others are counted.)"""
    srv = ServerProcess(
        tmp_path, "--state-dir", "state", "--job-store-mb", "16", "--max-job-mb", "8"
    ).start()
    slow = png("L", 8944, 77)
    try:

        def upload(i: int) -> httpx.Response:
            files = [("images", (f"{i}-{k}.png", slow + bytes([i, k]))) for k in range(64)]
            return httpx.post(f"{srv.url}/jobs", files=files, timeout=60)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(upload, range(4)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses.count(202) <= 2 and set(statuses) <= {202, 503}, statuses
        refused = [r for r in answers if r.status_code == 503]
        assert refused and all(
            r.json()["error"].startswith("the job store is full") for r in refused
        )
        with sqlite3.connect(tmp_path / "state" / "jobs.db") as conn:
            total = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM jobs").fetchone()[0]
        assert total <= 16 * 2**20
    finally:
        assert srv.stop() == 0


def test_readiness_recovers_once_the_disk_has_room_again(tmp_path: Path) -> None:
    """The disk fills (RLIMIT_FSIZE on the server, as in the full-disk test): readiness says
    the job store cannot write. The disk frees up: readiness recovers by itself within
    seconds, with no job sent to prove it."""
    srv = ServerProcess(tmp_path, "--state-dir", "state").start()
    assert srv.proc is not None
    try:
        state = tmp_path / "state"
        cap = max(p.stat().st_size for p in [srv.log, *state.iterdir()] if p.is_file()) + 100_000
        hard = resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (cap, hard))
        blob = np.random.default_rng(5).bytes(2**20)
        r = httpx.post(f"{srv.url}/jobs", files=[("images", ("big.jpeg", blob))], timeout=30)
        assert r.status_code == 503, r.text
        ready = httpx.get(f"{srv.url}/v2/health/ready").json()
        assert ready["degraded"][0].startswith("job store cannot write: ")
        resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        wait_for(lambda: httpx.get(f"{srv.url}/v2/health/ready").status_code == 200, 15)
    finally:
        assert srv.stop() == 0
    assert any("job store jobs.db: working again" in x for x in srv.log_text().splitlines())


def test_a_corrupted_job_store_degrades_readiness_not_500(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, "--state-dir", "state").start()
    try:
        jobs = tmp_path / "state" / "jobs.db"
        for suffix in ("-wal", "-shm"):
            jobs.with_name(jobs.name + suffix).unlink(missing_ok=True)
        jobs.write_bytes(b"this is not a database" * 1000)
        r = httpx.post(f"{srv.url}/jobs", files=[("images", ("a.jpeg", JPEG))], timeout=30)
        assert r.status_code == 503, r.text
        assert "the job store cannot be used now (" in r.json()["error"]
        ready = httpx.get(f"{srv.url}/v2/health/ready")
        assert ready.status_code == 503
        assert "file is not a database" in ready.json()["degraded"][0]
        assert (
            httpx.post(f"{srv.url}/predict", files={"image": ("a.jpeg", JPEG)}).status_code == 200
        )
    finally:
        srv.stop()
    assert any(m.startswith("job store jobs.db: cannot read or write") for m in errors_logged(srv))
    assert "unexpected error" not in srv.log_text()


def test_a_deleted_prediction_log_is_noticed_and_recreated(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, "--state-dir", "state").start()
    log = tmp_path / "state" / "predictions.db"
    try:
        assert (
            httpx.post(f"{srv.url}/predict", files={"image": ("a.jpeg", JPEG)}).status_code == 200
        )
        wait_for(lambda: log.exists() and _rows(log) == 1)
        for path in (log, log.with_name(log.name + "-wal"), log.with_name(log.name + "-shm")):
            path.unlink(missing_ok=True)
        for i in range(3):
            files = {"image": (f"{i}.jpeg", JPEG + bytes([i]))}
            assert httpx.post(f"{srv.url}/predict", files=files).status_code == 200
        wait_for(lambda: log.exists() and _rows(log) == 3)
        assert httpx.get(f"{srv.url}/monitoring/summary").json()["total"] == 3
    finally:
        assert srv.stop() == 0
    assert any("was deleted or replaced while the server ran" in m for m in errors_logged(srv))


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
    except sqlite3.Error:
        return -1


def test_kill_9_loses_at_most_the_last_batch_window(tmp_path: Path) -> None:
    """Under load, kill -9: every prediction answered more than BATCH_SECONDS (plus a
    scheduling margin) before the kill is in the log."""
    srv = ServerProcess(tmp_path, "--state-dir", "state").start()
    assert srv.proc is not None
    answered: list[tuple[str, float]] = []
    stop = threading.Event()

    def load(k: int) -> None:
        with httpx.Client() as client:
            i = 0
            while not stop.is_set():
                files = {"image": (f"{k}-{i}.jpeg", JPEG + f"{k}-{i}".encode())}
                try:
                    r = client.post(f"{srv.url}/predict", files=files, timeout=10)
                except httpx.TransportError:  # the server was killed
                    return
                if r.status_code == 200:
                    answered.append((r.headers["x-request-id"], time.monotonic()))
                i += 1

    threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(3.0)
    os.kill(srv.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    stop.set()
    for t in threads:
        t.join()
    srv.proc.wait()
    for worker in srv.workers() if srv.alive() else []:
        os.kill(worker, signal.SIGKILL)
    with sqlite3.connect(tmp_path / "state" / "predictions.db") as conn:
        logged = {r[0] for r in conn.execute("SELECT request_id FROM predictions")}
    window = predictions.BATCH_SECONDS + 0.25
    old = [rid for rid, at in answered if at < killed - window]
    assert len(answered) > 50 and old
    missing = [rid for rid in old if rid not in logged]
    assert not missing, f"{len(missing)} of {len(old)} answered predictions older than {window} s"


def test_reports_during_a_retention_pass_keep_the_wal_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100k rows past their retention, deleted while two reports scan the log again and
    again: the retention pass pauses while the WAL is over its limit (here 2 MB), so the
    state folder never grows past the log plus that; once the reports stop, it finishes."""
    monkeypatch.setattr(sqlite_backend, "WAL_LIMIT_BYTES", 2 * 2**20)
    monkeypatch.setattr(predictions, "PRUNE_RETRY", 0.2)
    monkeypatch.setattr(retention, "PRUNE_ROWS", 2000)
    db = tmp_path / "predictions.db"
    PredictionLog(db).close()
    old = time.time() - 100 * 86400
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO predictions (time, request_id, route, model_name, model_version, "
            "score, label, threshold, latency_ms, image_sha256) VALUES (?,?,?,?,?,?,?,?,?,?)",
            ((old + i, f"r{i}", "/predict", "m", "1", 0.5, "NORMAL", 0.7, 5.0, "ab" * 32)
             for i in range(100_000)),
        )  # fmt: skip
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    start_size = db.stat().st_size
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], sum(p.stat().st_size for p in tmp_path.iterdir()))
            time.sleep(0.005)

    def report() -> None:
        while not stop.is_set():
            summarize(db, hours=24 * 366)

    threads = [threading.Thread(target=f) for f in (watch, report, report)]
    for t in threads:
        t.start()
    log = PredictionLog(db, retention_days=90)
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join()
    wait_for(lambda: _rows(db) == 0, 60)
    log.close()
    assert peak[0] <= start_size + 2 * 2**20 + 8 * 2**20, (peak[0], start_size)
