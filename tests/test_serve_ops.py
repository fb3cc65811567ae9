"""`pneumo serve` under operations: batch jobs that survive restarts, the prediction log under
load (every request answered once and logged exactly once), SIGTERM during load, monitoring."""

from __future__ import annotations

import base64
import io
import sqlite3
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pneumo_onnx.engine.runtime.samples import sample_images
from tests.server_process import ServerProcess


def small_jpegs(count: int) -> list[bytes]:
    """`count` distinct real X-ray JPEGs, small enough to send by the hundred."""
    out = []
    sources = [Image.open(p).convert("L") for p in sample_images()]
    for i in range(count):
        img = sources[i % len(sources)].resize((256 + i % 97, 256))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def wait_for_job(url: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(url, timeout=10).json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job not done in {timeout} s: {body}")


def logged_request_ids(state: Path) -> list[str]:
    with sqlite3.connect(state / "predictions.db") as conn:
        return [r[0] for r in conn.execute("SELECT request_id FROM predictions")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("ops"), "--state-dir", "state").start()
    yield srv
    srv.stop()


def test_job_with_files_and_a_zip(server: ServerProcess) -> None:
    images = small_jpegs(4)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("scans/a.jpeg", images[2])
        z.writestr("scans/b.jpeg", images[3])
    files = [
        ("images", ("one.jpeg", images[0])),
        ("images", ("two.jpeg", images[1])),
        ("images", ("broken.jpeg", images[0][:500])),
        ("images", ("more.zip", archive.getvalue())),
    ]
    r = httpx.post(f"{server.url}/jobs", files=files, data={"threshold": "0.4"}, timeout=30)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["total"] == 5 and r.headers["location"] == job["url"]
    done = wait_for_job(f"{server.url}{job['url']}")
    assert done["status"] == "done" and done["progress"] == 1.0 and done["errors"] == 1
    by_name = {row["image_path"]: row for row in done["results"]}
    assert set(by_name) == {"one.jpeg", "two.jpeg", "broken.jpeg", "scans/a.jpeg", "scans/b.jpeg"}
    assert "truncated or corrupt" in by_name["broken.jpeg"]["error"]
    assert by_name["one.jpeg"]["threshold"] == 0.4
    direct = httpx.post(
        f"{server.url}/predict", files={"image": ("x.jpeg", images[0])}, data={"threshold": "0.4"}
    ).json()
    assert by_name["one.jpeg"]["raw_score"] == pytest.approx(direct["raw_score"], abs=1e-6)
    csv = httpx.get(f"{server.url}{job['url']}?format=csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0] == "image_path,prediction,confidence,raw_score,threshold,error"
    assert len(csv.text.splitlines()) == 6


def test_job_errors(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/jobs/{uuid.uuid4().hex}").status_code == 404
    r = httpx.post(f"{server.url}/jobs", data={"threshold": "0.5"})
    assert r.status_code == 400 and "no images provided" in r.json()["error"]
    r = httpx.post(f"{server.url}/jobs", files=[("images", ("x.zip", b"PK\x03\x04broken"))])
    assert r.status_code == 400
    r = httpx.post(
        f"{server.url}/jobs", files=[("images", ("a.jpeg", b"x"))], data={"threshold": "2"}
    )
    assert r.status_code == 400 and "threshold" in r.json()["error"]
    r = httpx.get(f"{server.url}/jobs/abc?format=xml")
    assert r.status_code == 422


def test_monitoring_routes(server: ServerProcess) -> None:
    for data in small_jpegs(5):
        assert (
            httpx.post(f"{server.url}/predict", files={"image": ("x.jpeg", data)}).status_code
            == 200
        )
    time.sleep(0.3)  # the log writer commits within 50 ms
    summary = httpx.get(f"{server.url}/monitoring/summary?hours=1").json()
    assert summary["total"] >= 5
    assert summary["latency_ms"]["p99"] > 0
    drift = httpx.get(f"{server.url}/monitoring/drift?recent_hours=1&reference_hours=24").json()
    assert drift["status"] == "insufficient_data"
    r = httpx.get(f"{server.url}/monitoring/summary?hours=-3")
    assert r.status_code == 400 and "hours" in r.json()["error"]
    assert httpx.get(f"{server.url}/monitoring/summary?hours=abc").status_code == 422


@pytest.mark.slow
def test_a_job_survives_a_restart(tmp_path: Path) -> None:
    images = small_jpegs(240)
    first = ServerProcess(tmp_path, "--state-dir", "state", "--max-batch", "2").start()
    files = [("images", (f"img{i:03d}.jpeg", data)) for i, data in enumerate(images)]
    job = httpx.post(f"{first.url}/jobs", files=files, timeout=60).json()
    assert first.stop() == 0  # SIGTERM while the job runs: the chunk in hand finishes, then exit
    from pneumo_onnx.engine.serve.store.jobs import JobStore

    interrupted = JobStore(tmp_path / "state" / "jobs.db").get(job["job_id"])
    assert interrupted["status"] != "done", "the job finished before the restart: test too easy"
    second = ServerProcess(tmp_path, "--state-dir", "state").start()
    try:
        done = wait_for_job(f"{second.url}/jobs/{job['job_id']}")
    finally:
        assert second.stop() == 0
    assert done["status"] == "done", done.get("error")  # a SIGTERM mid-chunk must not fail it
    assert done["done"] == 240 and done["errors"] == 0
    assert [r["image_path"] for r in done["results"]] == [f"img{i:03d}.jpeg" for i in range(240)]


@pytest.mark.slow
def test_load_every_request_answered_and_logged_exactly_once(tmp_path: Path) -> None:
    """2,000 uploads at concurrency 32: no errors, and the log holds each request id once."""
    images = small_jpegs(100)
    srv = ServerProcess(tmp_path, "--state-dir", "state").start()
    ids = [f"load-{i}" for i in range(2000)]
    client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32))

    def send(i: int) -> int:
        r = client.post(
            f"{srv.url}/predict",
            files={"image": (f"{i}.jpeg", images[i % len(images)])},
            headers={"X-Request-ID": ids[i]},
        )
        return r.status_code

    try:
        with client, ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(send, range(len(ids))))
    finally:
        assert srv.stop() == 0  # shutdown flushes the log
    assert statuses.count(200) == len(ids), {s: statuses.count(s) for s in set(statuses)}
    logged = logged_request_ids(tmp_path / "state")
    assert sorted(logged) == sorted(ids)


@pytest.mark.slow
def test_sigterm_during_load_loses_nothing(tmp_path: Path) -> None:
    """Requests answered 200 before and during shutdown are all in the log; the rest were
    refused (connection refused or 503), never half-done; the server exits 0."""
    images = small_jpegs(40)
    srv = ServerProcess(tmp_path, "--state-dir", "state").start()
    answered: list[str] = []
    lock = threading.Lock()
    started = threading.Event()

    def send(i: int) -> None:
        rid = f"term-{i}"
        try:
            r = httpx.post(
                f"{srv.url}/predict",
                files={"image": (f"{i}.jpeg", images[i % len(images)])},
                headers={"X-Request-ID": rid},
                timeout=30,
            )
        except httpx.TransportError:
            return
        if i == 50:
            started.set()
        if r.status_code == 200:
            with lock:
                answered.append(rid)
        else:
            assert r.status_code == 503, r.text

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(send, i) for i in range(600)]
        assert started.wait(60)
        code = srv.stop()
        for f in futures:
            f.result()
    assert code == 0
    assert len(answered) >= 50
    assert sorted(logged_request_ids(tmp_path / "state")) == sorted(answered)


def prometheus_predictions(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pneumo_predictions_total{")
    )


def test_v2_inferences_are_logged_counted_and_monitored(server: ServerProcess) -> None:
    """The V2 routes take the one scoring path: every inference (FP32 tensors and BYTES images)
    reaches the prediction log, the Prometheus counters and /monitoring, like /predict's."""
    state = server.cwd / "state"
    before_rows, before_count = len(logged_request_ids(state)), prometheus_predictions(server)
    images = small_jpegs(3)
    body = {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [3],
                "datatype": "BYTES",
                "data": [base64.b64encode(b).decode() for b in images],
            }
        ]
    }
    url = f"{server.url}/v2/models/pneumonia/infer"
    r = httpx.post(url, json=body, headers={"X-Request-ID": "v2-bytes"}, timeout=30)
    assert r.status_code == 200, r.text
    tensor = np.full((2, 128, 128, 3), 0.5, np.float32)
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [2, 128, 128, 3],
                "datatype": "FP32",
                "data": tensor.ravel().tolist(),
            }
        ]
    }
    r = httpx.post(url, json=body, headers={"X-Request-ID": "v2-fp32"}, timeout=30)
    assert r.status_code == 200, r.text
    time.sleep(0.3)  # the log writer commits within 50 ms
    ids = logged_request_ids(state)
    assert len(ids) == before_rows + 5
    assert ids.count("v2-bytes") == 3 and ids.count("v2-fp32") == 2
    with sqlite3.connect(state / "predictions.db") as conn:
        routes = {
            r[0] for r in conn.execute("SELECT route FROM predictions WHERE request_id LIKE 'v2-%'")
        }
    assert routes == {"/v2/models/{name}/infer"}
    assert prometheus_predictions(server) == before_count + 5
    summary = httpx.get(f"{server.url}/monitoring/summary?hours=1").json()
    assert summary["total"] >= 5
    assert summary["db"] == "predictions.db"  # a name: never the server's absolute path
    drift = httpx.get(f"{server.url}/monitoring/drift?recent_hours=1&reference_hours=24").json()
    assert drift["db"] == "predictions.db"
