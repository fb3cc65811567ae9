"""Who may do what on `pneumo serve`, and how long a client may hold it: admin keys for the
repository, user keys for scoring, jobs that belong to their key, rate limits that key
guessing and forged X-Forwarded-For cannot escape, and deadlines for slow clients (real slow
sockets)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.serve.front.protocol import OVER_CAPACITY, TOO_MANY_FROM_YOU
from pneumo_onnx.engine.serve.front.security import RateLimiter
from tests.server_process import ServerProcess

USER_A = "user-a-0123456789abcdef"
USER_B = "user-b-0123456789abcdef"
ADMIN = "admin-0123456789abcdef"
SAMPLE = sample_images()[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("access"),
        "--state-dir",
        "state",
        "--header-timeout",
        "1",
        "--body-timeout",
        "2",
        env={"PNEUMO_API_KEYS": f"{USER_A},{USER_B}", "PNEUMO_ADMIN_KEYS": ADMIN},
    ).start()
    yield srv
    assert srv.stop() == 0


def key(k: str) -> dict[str, str]:
    return {"X-API-Key": k}


def test_repository_control_needs_an_admin_key(server: ServerProcess) -> None:
    admin = f"{server.url}/v2/repository/models/pneumonia"
    r = httpx.post(f"{admin}/unload", headers=key(USER_A))
    assert r.status_code == 403
    assert r.json() == {"error": "repository control needs an admin key"}
    assert httpx.post(f"{admin}/load", headers=key(USER_A)).status_code == 403
    assert httpx.post(f"{server.url}/v2/repository/index", headers=key(USER_A)).status_code == 200
    r = httpx.post(f"{admin}/load", headers=key(ADMIN), timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "READY"
    r = httpx.post(
        f"{admin}/load", json={"parameters": {"version": int("9" * 4000)}}, headers=key(ADMIN)
    )
    assert r.status_code == 400 and "version must be a positive integer" in r.json()["error"]
    r = httpx.post(f"{server.url}/predict", files={"image": ("a.jpeg", SAMPLE.read_bytes())},
                   headers=key(ADMIN))  # fmt: skip
    assert r.status_code == 200  # an admin key scores too


def test_jobs_belong_to_the_key_that_created_them(server: ServerProcess) -> None:
    files = [("images", ("a.jpeg", SAMPLE.read_bytes()))]
    r = httpx.post(f"{server.url}/jobs", files=files, headers=key(USER_A), timeout=30)
    assert r.status_code == 202, r.text
    url = f"{server.url}{r.json()['url']}"
    job_id = r.json()["job_id"]
    for method in ("GET", "DELETE"):
        r = httpx.request(method, url, headers=key(USER_B))
        assert r.status_code == 404 and r.json() == {"error": f"no job with id {job_id!r}"}
    assert httpx.get(f"{url}?format=csv", headers=key(USER_B)).status_code == 404
    assert httpx.get(url, headers=key(USER_A)).status_code == 200
    r = httpx.delete(url, headers=key(USER_A))
    assert r.status_code == 200 and r.json() == {"job_id": job_id, "status": "deleted"}
    assert httpx.get(url, headers=key(USER_A)).status_code == 404


def test_key_guessing_is_rate_limited_whatever_x_forwarded_for_says(server: ServerProcess) -> None:
    """Wrong keys cost tokens of the client's address; a forged X-Forwarded-For does not give
    a fresh address (it is believed only from --forwarded-allow-ips)."""
    with httpx.Client() as client:
        statuses = [
            client.get(
                f"{server.url}/v2/models/pneumonia",
                headers={"X-API-Key": f"guess-{i:020d}", "X-Forwarded-For": f"10.0.{i}.1"},
            ).status_code
            for i in range(40)
        ]
        assert statuses[0] == 401 and statuses[-1] == 429, statuses
        r = client.get(f"{server.url}/v2/models/pneumonia", headers={"X-API-Key": "x" * 20})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"] == "rate limit exceeded: at most 2 requests/s"
        # A right key has its own bucket: guessing from the same address does not lock it out.
        assert (
            client.get(f"{server.url}/v2/models/pneumonia", headers=key(USER_B)).status_code == 200
        )


def test_slow_clients_are_disconnected(server: ServerProcess) -> None:
    """Sockets that send nothing, or trickle their headers, are closed after the header
    deadline; one that stops in the middle of its body gets 408; meanwhile others are served."""
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    trickle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
    for s in stalled:
        s.sendall(
            b"POST /predict/base64 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + USER_A.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"image\": "
        )  # fmt: skip
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    deadline = time.monotonic() + 4.0
    sent = 0
    while time.monotonic() < deadline:  # one header byte per socket every 0.2 s
        for s in trickle:
            with contextlib.suppress(OSError):
                s.sendall(request[sent % len(request) : sent % len(request) + 1])
        sent += 1
        time.sleep(0.2)
    try:
        for s in idle + trickle:
            s.settimeout(2.0)
            with contextlib.suppress(ConnectionResetError):  # closed, nothing answered
                assert s.recv(1024) == b""
        for s in stalled:
            s.settimeout(5.0)
            answer = s.recv(4096).decode()
            assert answer.startswith("HTTP/1.1 408"), answer[:200]
            assert '"request body not received within 2 s"' in answer
    finally:
        for s in idle + trickle + stalled:
            s.close()
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_rate_limiter_forgets_the_least_recently_seen_clients() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=100)
    for i in range(10_000):
        limiter.acquire(f"client-{i}")
    assert len(limiter) == 100
    assert limiter.acquire("client-9999") >= 1  # the most recent ones are remembered
    assert limiter.acquire("client-0") == 0  # the oldest was forgotten: a fresh bucket


def test_bodies_in_flight_charge_the_bytes_received(tmp_path: Path) -> None:
    """What a body announces costs nothing, what it sends does: 16 clients that announce 16
    MB and send nothing leave room for everyone; clients that really send 12 MB each and
    stall fill the 32 MB budget, the one that would pass it gets 503 mid-body and its
    connection closed, a small request is still served, and the stalled ones get 408."""
    srv = ServerProcess(
        tmp_path, "--max-inflight-mb", "32", "--body-timeout", "3", "--header-timeout", "2"
    ).start()
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
        f"boundary=x\r\nContent-Length: {16 * 2**20}\r\n\r\n--x\r\nContent-Disposition: "
        'form-data; name="image"; filename="a.png"\r\n\r\n'
    ).encode()
    files = {"image": ("a.jpeg", SAMPLE.read_bytes())}
    announcing = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(16)]
    sending = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
    try:
        for s in announcing:
            s.sendall(head)
        time.sleep(0.3)
        assert httpx.post(f"{srv.url}/predict", files=files).status_code == 200
        answers = []
        for s in sending:
            with contextlib.suppress(OSError):  # the refused one may be closed mid-send
                s.sendall(head + b"--x\r\n" + b"x" * (12 * 2**20))
            time.sleep(0.3)
        for s in sending:
            s.settimeout(6.0)
            answers.append(s.recv(4096).decode(errors="replace"))
        busy = [a for a in answers if a.startswith("HTTP/1.1 503")]
        assert len(busy) == 1, [a[:60] for a in answers]
        assert "MB of requests already being received or handled" in busy[0]
        assert "connection: close" in busy[0].lower()
        assert sum(a.startswith("HTTP/1.1 408") for a in answers) == 2, answers
        r = httpx.post(f"{srv.url}/predict", files=files)
        assert r.status_code == 200, r.text
    finally:
        for s in announcing + sending:
            s.close()
        assert srv.stop() == 0


def test_idle_connections_make_room_for_new_clients(tmp_path: Path) -> None:
    """300 sockets that connect and send nothing (the limit is 256): the oldest idle ones are
    closed to make room, and a new client is served at once."""
    # A header deadline far beyond the wait allowed below: only room made at once passes.
    srv = ServerProcess(
        tmp_path, "--max-connections-per-client", "0", "--header-timeout", "60"
    ).start()
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", srv.port)))
        time.sleep(0.3)
        started = time.monotonic()
        r = httpx.post(f"{srv.url}/predict", files={"image": ("a.jpeg", SAMPLE.read_bytes())})
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 20.0  # not the 60 s of the idle ones' deadline
    finally:
        for s in idle:
            s.close()
        assert srv.stop() == 0


def test_busy_connections_past_the_limit_get_the_api_json_503(tmp_path: Path) -> None:
    """Past `--max-connections` of connections in the middle of a request, uvicorn refuses
    the request itself; the answer is the API's JSON error with Retry-After, and the server
    serves again once they end."""
    srv = ServerProcess(tmp_path, "--max-connections", "3", "--body-timeout", "30").start()
    try:
        held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
        for s in held:  # each in the middle of its body: busy, not idle
            s.sendall(
                b"POST /predict/base64 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
                b"Content-Type: application/json\r\n\r\n{"
            )
        time.sleep(0.3)
        try:
            r = httpx.get(f"{srv.url}/v2/health/live")
            assert r.status_code == 503, r.text
            assert r.json() == {"error": OVER_CAPACITY}
            assert r.headers["retry-after"] == "1"
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 10
        while (r := httpx.get(f"{srv.url}/v2/health/live")).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
    finally:
        assert srv.stop() == 0


def test_one_address_cannot_hold_every_connection(tmp_path: Path) -> None:
    """Past `--max-connections-per-client` connections from one address, a new one gets the
    API's JSON 503 at once; another address (127.0.0.2 is loopback too) is served."""
    srv = ServerProcess(tmp_path, "--max-connections-per-client", "4", "--host", "0.0.0.0").start()
    try:
        held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(4)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", srv.port))
        extra.settimeout(5.0)
        answer = extra.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 503"), answer
        assert TOO_MANY_FROM_YOU in answer
        other = socket.create_connection(("127.0.0.1", srv.port), source_address=("127.0.0.2", 0))
        other.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        other.settimeout(5.0)
        assert other.recv(4096).startswith(b"HTTP/1.1 200")
        for s in [*held, extra, other]:
            s.close()
    finally:
        assert srv.stop() == 0
