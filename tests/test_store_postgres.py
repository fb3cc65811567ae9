"""The stores on a real PostgreSQL server shared by several servers (tests/postgres_server.py):
the same reports as SQLite, migrations when servers start at once, job runners that share one
queue, retention, the store's cap across servers, clear errors, and two real `pneumo serve`
processes writing one log."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from pneumo_onnx.engine.errors import Overloaded, UsageError
from pneumo_onnx.engine.runtime.results import Result
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.dataplane.job_runner import JobRunner
from pneumo_onnx.engine.serve.store.jobs import JobStore
from pneumo_onnx.engine.serve.store.predictions import PredictionLog, PredictionRecord
from pneumo_onnx.engine.serve.store.reports import drift_report, summarize
from pneumo_onnx.engine.serve.store.schema import MIGRATIONS
from tests.postgres_server import PostgresServer
from tests.server_process import ServerProcess, free_port

NOW = time.time()
HOUR = 3600.0


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


def records(n: int, start: float, hours: float, shift: float = 0.0) -> list[PredictionRecord]:
    """`n` predictions spread over `hours` from `start`, scores shifted by `shift`."""
    out = []
    for i in range(n):
        score = min(1.0, (i % 97) / 97 + shift)
        out.append(
            PredictionRecord(
                time=start + hours * HOUR * i / n,
                request_id=f"r{i}",
                route="/predict",
                model_name="pneumonia",
                model_version=str(1 + i % 2),
                score=None if i % 13 == 0 else score,
                label=None if i % 13 == 0 else ("PNEUMONIA" if score > 0.5 else "NORMAL"),
                threshold=None if i % 13 == 0 else 0.5,
                latency_ms=1.0 + (i % 31) * 3.7,
                image_sha256="0" * 64,
                error="bad image" if i % 13 == 0 else None,
            )
        )
    return out


def assert_close(got: object, want: object, where: str = "") -> None:
    """Equal, floats within 1e-9 (the databases add in different orders)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9), where
    else:
        assert got == want, where


def test_postgres_and_sqlite_give_the_same_reports(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    rows = records(600, NOW - 160 * HOUR, 130) + records(300, NOW - 20 * HOUR, 19, shift=0.2)
    reports = []
    for target in (tmp_path / "log.db", postgres.database()):
        with PredictionLog(target) as log:
            for r in rows:
                log.record(r)
        reports.append((summarize(target, now=NOW), drift_report(target, now=NOW)))
    (s_sqlite, d_sqlite), (s_pg, d_pg) = reports
    assert s_pg["db"].startswith("postgresql:///test_") and "@" not in s_pg["db"]
    assert_close({**s_pg, "db": ""}, {**s_sqlite, "db": ""})
    assert_close({**d_pg, "db": ""}, {**d_sqlite, "db": ""})
    assert d_pg["status"] == "significant" and s_pg["total"] == 300


def test_servers_starting_at_once_migrate_once(postgres: PostgresServer) -> None:
    """Eight servers open the same new database at the same moment: the advisory lock lets
    one create the tables, the others find them."""
    url = postgres.database()
    problems: list[BaseException] = []
    go = threading.Barrier(8)

    def start() -> None:
        go.wait()
        try:
            JobStore(url).close()
            PredictionLog(url).close()
        except BaseException as e:  # collected, asserted below
            problems.append(e)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    versions = postgres.execute(
        "SELECT store, version FROM pneumo_schema ORDER BY store", dbname(url)
    )
    assert versions == [(store, len(MIGRATIONS[store])) for store in ("jobs", "predictions")]


def fake_score(calls: Counter[str], who: str):  # type: ignore[no-untyped-def]
    """A scorer that counts which runner scored what (PostgreSQL is real; the model is not
    what this test is about)."""

    def score(images: Sequence[tuple[str, bytes]], t: float | None) -> list[Result]:
        calls.update(f"{who}:{name}" for name, _ in images)
        time.sleep(0.02)
        return [
            {"prediction": "NORMAL", "confidence": 0.9, "raw_score": 0.1, "threshold": 0.5}
            for _ in images
        ]

    return score


def test_runners_of_two_servers_share_the_queue_and_score_each_image_once(
    postgres: PostgresServer,
) -> None:
    url = postgres.database()
    calls: Counter[str] = Counter()
    stores = [JobStore(url), JobStore(url)]
    runners = [
        JobRunner(store, fake_score(calls, who), chunk=2, ttl_hours=0, poll_seconds=0.01).start()
        for store, who in zip(stores, "ab", strict=True)
    ]
    try:
        jobs = [stores[i % 2].create([(f"j{i}-{k}", b"x") for k in range(6)]) for i in range(6)]
        deadline = time.monotonic() + 30
        while any(stores[0].get(j)["status"] != "done" for j in jobs):
            assert time.monotonic() < deadline, "jobs not done in 30 s"
            time.sleep(0.05)
    finally:
        for runner in runners:
            runner.stop()
        for store in stores:
            store.close()
    names = Counter(key.split(":", 1)[1] for key in calls.elements())
    assert names == Counter(f"j{i}-{k}" for i in range(6) for k in range(6))  # each once
    assert {key[0] for key in calls} == {"a", "b"}  # both servers' runners took jobs


def test_a_job_left_running_by_a_lost_server_is_taken_over(postgres: PostgresServer) -> None:
    """A server's session ends (it died): the jobs it held go to another server's runner."""
    url = postgres.database()
    store = JobStore(url)
    job_id = store.create([("a", b"x"), ("b", b"y")])
    dead = store.runner_lease()
    assert dead.acquire() and store.claim_next(dead) == (job_id, None)
    calls: Counter[str] = Counter()
    other = JobRunner(
        JobStore(url), fake_score(calls, "b"), chunk=2, ttl_hours=0, poll_seconds=0.01
    ).start()
    try:
        time.sleep(0.5)
        assert store.get(job_id)["status"] == "running" and not calls  # still held
        dead.close()  # the connection goes, and with it the lock
        deadline = time.monotonic() + 10
        while store.get(job_id)["status"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        other.stop()
        other.store.close()
        store.close()
    assert calls == Counter({"b:a": 1, "b:b": 1})


def test_the_job_cap_holds_across_servers(postgres: PostgresServer) -> None:
    url = postgres.database()
    a, b = JobStore(url, max_pending_bytes=1000), JobStore(url, max_pending_bytes=1000)
    a.create([("one", b"x" * 600)])
    with pytest.raises(Overloaded, match="the job store is full"):
        b.create([("two", b"y" * 600)])
    b.create([("three", b"z" * 400)])
    a.close()
    b.close()


def test_retention_deletes_old_rows(postgres: PostgresServer) -> None:
    url = postgres.database()
    with PredictionLog(url) as log:
        for r in records(50, NOW - 200 * 86400, 1) + records(5, NOW - HOUR, 0.5):
            log.record(r)
    log = PredictionLog(url, retention_days=90)
    try:
        deadline = time.monotonic() + 10
        while postgres.execute("SELECT COUNT(*) FROM predictions", dbname(url)) != [(5,)]:
            assert time.monotonic() < deadline, "old rows not deleted"
            time.sleep(0.05)
    finally:
        log.close()


def test_an_unreachable_database_names_the_host_never_the_password() -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://pneumo:s3cret@127.0.0.1:{port}/shared?connect_timeout=2"
    for opener in (PredictionLog, JobStore, summarize):
        with pytest.raises(UsageError) as caught:
            opener(url)  # type: ignore[operator]
        message = caught.value.message
        assert f"127.0.0.1:{port}/shared" in message, message
        assert "s3cret" not in message and "pneumo:" not in message


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://h/db", "--database must be a postgresql://user@host:port/dbname URL"),
        ("/var/lib/pneumo", "--database must be a postgresql://"),
    ],
    ids=["other-scheme", "a-path"],
)
def test_database_must_be_a_postgres_url(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ServeConfig(database=url)


def test_without_psycopg_the_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what an install without it sees
    with pytest.raises(UsageError, match=r"needs the 'postgres' extra.*pneumo-onnx\[postgres\]"):
        ServeConfig(database="postgresql://h/db")
    with pytest.raises(UsageError, match=r"pip install 'pneumo-onnx\[postgres\]'"):
        summarize("postgresql://h/db")


def test_serve_with_an_unreachable_database_exits_2(tmp_path: Path) -> None:
    url = f"postgresql://pneumo:s3cret@127.0.0.1:{free_port()}/shared?connect_timeout=2"
    done = subprocess.run(
        [sys.executable, "-m", "pneumo_onnx.engine.cli", "serve", "--database", url,
         "--port", str(free_port())],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "127.0.0.1:" in done.stderr and "/shared" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_two_servers_share_one_log_and_one_job_queue(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Two real `pneumo serve` processes (two machines, in production) on one database:
    predictions to both are counted by either, and by `pneumo monitor`; a job sent to one
    is read from the other."""
    url = postgres.database()
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        env = {"PNEUMO_DATABASE": url} if name == "b" else None  # flag or environment
        args = ("--database", url) if name == "a" else ()
        servers.append(ServerProcess(tmp_path / name, *args, env=env))
    try:
        for srv in servers:
            srv.start(timeout=120)
        images = sample_images()
        for i, image in enumerate(images):
            srv = servers[i % 2]
            r = httpx.post(f"{srv.url}/predict", files={"image": (image.name, image.read_bytes())})
            assert r.status_code == 200, r.text
        job = httpx.post(
            f"{servers[0].url}/jobs",
            files=[("images", (p.name, p.read_bytes())) for p in images[:3]],
            timeout=30,
        )
        assert job.status_code == 202, job.text
        job_id = job.json()["job_id"]
        deadline = time.monotonic() + 60
        while (got := httpx.get(f"{servers[1].url}/jobs/{job_id}").json())["status"] != "done":
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        assert [r["image_path"] for r in got["results"]] == [p.name for p in images[:3]]
        time.sleep(0.3)  # the log's writers commit every 50 ms
        for srv in servers:
            summary = httpx.get(f"{srv.url}/monitoring/summary").json()
            assert summary["total"] == len(images) + 3, summary  # both servers, and the job
        cli = subprocess.run(
            [sys.executable, "-m", "pneumo_onnx.engine.cli", "monitor", "summary", "--db", url],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert f"predictions  {len(images) + 3}  (scored" in cli.stdout
        assert not list((tmp_path / "a").glob("pneumo-state/*.db"))  # nothing went to SQLite
    finally:
        for srv in servers:
            assert srv.stop() == 0, srv.log_text()[-2000:]
