"""Batch jobs attacked and broken on a real server: archives that unpack to far more than they
weigh, requests over their budget, a job whose image crashes the server on every restart
(kill -9), expiry and reclaimed space, and a full disk (RLIMIT_FSIZE on the server process)."""

from __future__ import annotations

import io
import json
import resource
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.serve.store.jobs import CRASHED
from tests.server_process import ServerProcess

TTL_HOURS = 0.001  # 3.6 s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("jobs"),
        "--state-dir",
        "state",
        "--max-job-mb",
        "8",
        "--job-ttl",
        str(TTL_HOURS),
    ).start()
    yield srv
    assert srv.stop() == 0
    assert "unexpected error" not in srv.log_text()


def state_bytes(srv: ServerProcess, name: str = "jobs.db") -> int:
    folder = srv.cwd / "state"
    return sum(p.stat().st_size for p in folder.glob(f"{name}*") if p.is_file())


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def wait_for_status(url: str, statuses: set[int], timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(url, timeout=10)
        if r.status_code in statuses and (r.status_code != 200 or r.json()["status"] == "done"):
            return r
        time.sleep(0.2)
    raise AssertionError(f"{url} still {r.status_code} {r.text[:200]} after {timeout} s")


def test_archives_that_unpack_to_gigabytes_are_refused(server: ServerProcess) -> None:
    """Four 0.5 MB zips of 512 members just under 1 MiB each (no member alone looks like a
    bomb): 2 GB from 2 MB. Refused from the central directory, before anything is unpacked
    or stored; so is a member of exactly 1 MiB."""
    bomb = zipped({f"scan{i:03d}.png": bytes(2**20 - 1) for i in range(512)})
    assert len(bomb) < 600_000
    files = [("images", (f"part{k}.zip", bomb)) for k in range(4)]
    server.reset_peak_rss()
    r = httpx.post(f"{server.url}/jobs", files=files, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"] == (
        f"part0.zip expands {512 * (2**20 - 1) // len(bomb)} times ({len(bomb):,} bytes -> "
        "512.0 MB): refused as a zip bomb"
    )
    one = zipped({"one.png": bytes(2**20)})
    r = httpx.post(f"{server.url}/jobs", files=[("images", ("one.zip", one))])
    assert r.status_code == 400
    assert r.json()["error"] == (
        "one.zip: 'one.png' expands 1015 times (1,033 bytes -> 1.0 MB): refused as a zip bomb"
    )
    assert server.peak_rss_mb() < 400
    assert state_bytes(server) < 2**20


def test_a_request_is_bounded_across_its_files(server: ServerProcess) -> None:
    rng = np.random.default_rng(3)
    parts = [zipped({f"{k}.jpeg": rng.bytes(3 * 2**20)}) for k in range(3)]
    files = [("images", (f"part{k}.zip", data)) for k, data in enumerate(parts)]
    r = httpx.post(f"{server.url}/jobs", files=files, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"] == (
        "part2.zip unpacks to 3.0 MB, more than the 8.0 MB a job request may hold "
        "(6.0 MB already in this request)"
    )
    files = [("images", (f"{k}.jpeg", rng.bytes(3 * 2**20))) for k in range(3)]
    r = httpx.post(f"{server.url}/jobs", files=files, timeout=60)
    assert r.status_code == 400
    assert "unpack to more than 8.0 MB: split it into several jobs" in r.json()["error"]


def test_finished_jobs_expire_and_their_space_is_reclaimed(server: ServerProcess) -> None:
    rng = np.random.default_rng(4)
    images = [("images", (f"{k}.jpeg", b"\xff\xd8\xff" + rng.bytes(2**20))) for k in range(6)]
    images.append(("images", ("real.jpeg", sample_images()[0].read_bytes())))
    r = httpx.post(f"{server.url}/jobs", files=images, timeout=60)
    assert r.status_code == 202, r.text
    url = f"{server.url}{r.json()['url']}"
    done = wait_for_status(url, {200}).json()
    assert (done["total"], done["errors"]) == (7, 6)
    assert state_bytes(server) < 2**20  # the 6 MB of images dropped once scored, space given back
    gone = wait_for_status(url, {404}, timeout=30)
    assert gone.json()["error"].startswith("no job with id")


def test_a_crash_loop_is_broken_after_three_crashes(tmp_path: Path) -> None:
    """An image in hand while the server is killed (-9) three times in a row is marked failed
    with the reason; the job finishes and its other images are scored."""
    side = 8900
    big = io.BytesIO()
    Image.new("L", (side, side), 80).save(big, "PNG")  # ~1 s to decode: killed meanwhile
    files = [
        ("images", ("ok.jpeg", sample_images()[0].read_bytes())),
        ("images", ("heavy.png", big.getvalue())),
    ]
    srv = ServerProcess(tmp_path, "--state-dir", "state").start()
    try:
        r = httpx.post(f"{srv.url}/jobs", files=files, timeout=60)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        for crash in range(1, 4):
            _wait_attempts(tmp_path / "state" / "jobs.db", job_id, crash)
            assert srv.proc is not None
            srv.proc.kill()
            srv.proc.wait()
            srv = ServerProcess(tmp_path, "--state-dir", "state").start()
        done = wait_for_status(f"{srv.url}/jobs/{job_id}", {200}).json()
    finally:
        srv.stop()
    rows = {r["image_path"]: r for r in done["results"]}
    assert rows["heavy.png"]["error"] == CRASHED
    assert rows["ok.jpeg"]["error"] is None and rows["ok.jpeg"]["prediction"] == "NORMAL"
    assert "image(s) failed after 3 crashes" in srv.log_text()


def _wait_attempts(db: Path, job_id: str, attempts: int) -> None:
    """Until the heavy image is in hand for the `attempts`-th time (scored = 0)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute(
                "SELECT attempts, scored FROM job_items WHERE job_id = ? AND name = 'heavy.png'",
                (job_id,),
            ).fetchone()
        assert row is None or row[1] == 0, "the heavy image was scored: the kill came too late"
        if row is not None and row[0] >= attempts:
            return
        time.sleep(0.005)
    raise AssertionError(f"the heavy image never reached attempt {attempts}")


@pytest.mark.slow  # over 5 s: make test runs it, make test-fast leaves it out
def test_a_full_disk_degrades_readiness_and_shutdown_stays_bounded(tmp_path: Path) -> None:
    """Every file the server extends is capped (RLIMIT_FSIZE, set on the running process with
    prlimit): writes fail with EFBIG as they would with ENOSPC on a full disk. Readiness says
    so, scoring goes on, the job route answers 503, each store logs its failure once, and
    SIGTERM ends the server within its grace period, counting the rows it could not write."""
    srv = ServerProcess(tmp_path, "--state-dir", "state", "--log-images").start()
    jpeg = sample_images()[0].read_bytes()
    assert srv.proc is not None
    try:
        assert (
            httpx.post(f"{srv.url}/predict", files={"image": ("a.jpeg", jpeg)}).status_code == 200
        )
        files = [p for p in [srv.log, *(tmp_path / "state").iterdir()] if p.is_file()]
        cap = max(p.stat().st_size for p in files) + 200_000
        resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (cap, cap))
        for i in range(12):  # each row holds its image: the log's WAL soon passes the cap
            r = httpx.post(
                f"{srv.url}/predict", files={"image": (f"{i}.jpeg", jpeg + bytes([i]))}, timeout=30
            )
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 20
        while (ready := httpx.get(f"{srv.url}/v2/health/ready")).status_code == 200:
            assert time.monotonic() < deadline, "readiness never reported the full disk"
            time.sleep(0.2)
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert ready.json()["degraded"][0].startswith("prediction log cannot write: ")
        health = httpx.get(f"{srv.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        blob = np.random.default_rng(5).bytes(2**20)
        for _ in range(2):
            r = httpx.post(f"{srv.url}/jobs", files=[("images", ("big.jpeg", blob))], timeout=30)
            assert r.status_code == 503, r.text
            assert r.json()["error"].startswith("the job store cannot be used now (")
            assert r.headers["retry-after"] == "30"
        started = time.monotonic()
        assert srv.stop(timeout=60) == 0
        assert time.monotonic() - started < 45
    finally:
        if srv.alive():
            srv.proc.kill()
    log = [json.loads(x) for x in srv.log_text().splitlines() if x.startswith("{")]
    messages = [x["message"] for x in log if x["level"] == "ERROR"]
    assert sum(m.startswith("prediction log predictions.db: cannot write") for m in messages) == 1
    assert sum(m.startswith("job store jobs.db: cannot read or write") for m in messages) == 1
    assert any(
        m.startswith("server stopped: ") and "predictions could not be written" in m
        for m in messages
    ), messages
    assert "Traceback" not in srv.log_text()
