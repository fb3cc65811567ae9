"""`pneumo serve` run as an operator would: API keys, rate limits, hot load and rollback of
model versions, load shedding, TLS, graceful shutdown."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.runtime.samples import sample_images
from tests.conftest import rerecord
from tests.server_process import ServerProcess

KEY = "admin-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
SAMPLE = sample_images()[0]


def add_version(repo: Path, version: int, corrupt: str | None = None) -> Path:
    """A copy of the shipped version 1 as `version`; `corrupt`: 'hash' (file no longer matches
    its manifest) or 'graph' (manifest matches, onnxruntime cannot load it)."""
    target = repo / "pneumonia" / str(version)
    shutil.copytree(default_model_dir() / "1", target)
    model = target / "model.onnx"
    if corrupt == "hash":
        model.write_bytes(model.read_bytes()[:-100] + b"\0" * 100)
    elif corrupt == "graph":
        model.write_bytes(b"not an onnx graph at all")
        rerecord(target, "model.onnx")
    return target


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("secured")
    add_version(root / "repo", 1)
    srv = ServerProcess(
        root,
        "--model-repo",
        "repo",
        "--rate-limit",
        "20",
        "--rate-burst",
        "20",
        env={"PNEUMO_API_KEYS": OTHER_KEY, "PNEUMO_ADMIN_KEYS": KEY},
    ).start()
    srv.repo = root / "repo"  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0


def auth(key: str = KEY) -> dict[str, str]:
    return {"X-API-Key": key}


def predict(srv: ServerProcess, key: str | None = KEY) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/predict",
        files={"image": (SAMPLE.name, SAMPLE.read_bytes())},
        headers=auth(key) if key else {},
        timeout=30,
    )


def test_api_key_required_except_for_health_and_metrics(secured: ServerProcess) -> None:
    r = predict(secured, key=None)
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert predict(secured, key="wrong-key-0123456789abcdef").status_code == 401
    assert predict(secured).status_code == 200
    assert httpx.get(f"{secured.url}/health").status_code == 200
    assert httpx.get(f"{secured.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{secured.url}/metrics").status_code == 200
    assert httpx.get(f"{secured.url}/v2/models/pneumonia").status_code == 401


def test_rate_limit_answers_429_with_retry_after(secured: ServerProcess) -> None:
    client = httpx.Client(headers=auth(OTHER_KEY))  # keep-alive: requests faster than refills

    def hit(_: int) -> httpx.Response:
        return client.get(f"{secured.url}/v2/models/pneumonia")

    with client, ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(hit, range(100)))
    assert {r.status_code for r in responses} == {200, 429}
    r = next(r for r in responses if r.status_code == 429)
    assert int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["error"]
    # Limits are per key: the admin key is unaffected.
    assert httpx.get(f"{secured.url}/v2/models/pneumonia", headers=auth()).status_code == 200


def served_version(srv: ServerProcess) -> str:
    return httpx.get(f"{srv.url}/health").json()["version"]


def test_hot_load_refuses_broken_versions_and_rolls_back(secured: ServerProcess) -> None:
    repo: Path = secured.repo  # type: ignore[attr-defined]
    admin = f"{secured.url}/v2/repository"
    assert served_version(secured) == "1"

    add_version(repo, 2)
    r = httpx.post(f"{admin}/models/pneumonia/load", headers=auth(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "pneumonia", "version": "2", "state": "READY"}
    assert served_version(secured) == "2"
    assert predict(secured).headers["x-model-version"] == "pneumonia/2"

    add_version(repo, 3, corrupt="hash")
    r = httpx.post(f"{admin}/models/pneumonia/load", headers=auth(), timeout=60)
    assert r.status_code == 409 and "does not match the sha256" in r.json()["error"]
    add_version(repo, 4, corrupt="graph")
    r = httpx.post(
        f"{admin}/models/pneumonia/load",
        json={"parameters": {"version": "4"}},
        headers=auth(),
        timeout=60,
    )
    assert r.status_code == 409 and "4 refused" in r.json()["error"]
    assert served_version(secured) == "2"  # the broken versions never replaced it
    assert predict(secured).status_code == 200

    index = httpx.post(f"{admin}/index", headers=auth()).json()
    assert {"name": "pneumonia", "version": "2", "state": "READY"} in index
    assert len(index) == 4

    r = httpx.post(f"{admin}/models/pneumonia/rollback", headers=auth(), timeout=60)
    assert r.status_code == 200 and r.json()["version"] == "1"
    assert served_version(secured) == "1"

    r = httpx.post(
        f"{admin}/models/pneumonia/load",
        json={"parameters": {"version": "9"}},
        headers=auth(),
    )
    assert r.status_code == 404
    r = httpx.post(
        f"{admin}/models/pneumonia/load", json={"parameters": {"version": "x"}}, headers=auth()
    )
    assert r.status_code == 400


def test_unload_then_load(secured: ServerProcess) -> None:
    admin = f"{secured.url}/v2/repository/models/pneumonia"

    def served_info() -> list[str]:
        text = httpx.get(f"{secured.url}/metrics", headers=auth()).text
        return [x for x in text.splitlines() if x.startswith("pneumo_model_info{")]

    assert httpx.post(f"{admin}/unload", headers=auth()).status_code == 200
    r = predict(secured)
    assert r.status_code == 503 and "not loaded" in r.json()["error"]
    assert httpx.get(f"{secured.url}/health").json()["status"] == "unloaded"
    assert httpx.get(f"{secured.url}/v2/models/pneumonia/ready", headers=auth()).status_code == 404
    assert served_info() == []  # the metrics say nothing is served
    r = httpx.post(
        f"{admin}/load", json={"parameters": {"version": "1"}}, headers=auth(), timeout=60
    )
    assert r.status_code == 200
    assert predict(secured).status_code == 200
    [info] = served_info()
    assert 'name="pneumonia"' in info and 'version="1"' in info and info.endswith(" 1.0")


def test_full_queue_sheds_load_with_503(tmp_path: Path) -> None:
    srv = ServerProcess(
        tmp_path, "--max-queue", "2", "--max-batch", "1", "--cache-size", "0"
    ).start()
    try:
        data = SAMPLE.read_bytes()

        def send(_: int) -> httpx.Response:
            return httpx.post(f"{srv.url}/predict", files={"image": ("a.jpeg", data)}, timeout=60)

        with ThreadPoolExecutor(48) as pool:
            responses = list(pool.map(send, range(96)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 503}, statuses
        shed = next(r for r in responses if r.status_code == 503)
        assert shed.headers["retry-after"] == "1" and "server busy" in shed.json()["error"]
        assert httpx.get(f"{srv.url}/health").status_code == 200
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert f"pneumo_shed_requests_total {float(statuses.count(503))}" in metrics
    finally:
        assert srv.stop() == 0


def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    srv = ServerProcess(tmp_path, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), tls=True)
    trust = ssl.create_default_context(cafile=str(cert))
    srv.start(verify=trust)
    try:
        r = httpx.post(
            f"{srv.url}/predict", files={"image": ("a.jpeg", SAMPLE.read_bytes())}, verify=trust
        )
        assert r.status_code == 200
    finally:
        assert srv.stop() == 0


def test_bad_serve_options_are_usage_errors(tmp_path: Path) -> None:
    from pneumo_onnx.engine.cli import main

    assert main(["serve", "--model-repo", str(tmp_path / "missing")]) == 2
    assert main(["serve", "--max-batch", "0"]) == 2
    assert main(["serve", "--ssl-certfile", str(tmp_path / "c.pem")]) == 2
    (tmp_path / "keys").write_text("short\n")
    assert main(["serve", "--api-key-file", str(tmp_path / "keys")]) == 2
    assert main(["serve", "--admin-key-file", str(tmp_path / "keys")]) == 2
    for bad in (
        ["--max-request-mpx", "10"],  # less than one largest image
        ["--max-decode-mpx", "100"],  # less than one request
        ["--job-ttl", "-1"],
        ["--log-retention-days", "nan"],
        ["--max-inflight-mb", "1"],  # less than one upload
        ["--header-timeout", "0"],
        ["--max-connections", "0"],
    ):
        assert main(["serve", *bad]) == 2, bad


def test_several_worker_processes(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, "--workers", "2", "--state-dir", "state").start()
    try:
        data = SAMPLE.read_bytes()
        for i in range(20):  # a connection each: the kernel hands them to either worker
            r = httpx.post(
                f"{srv.url}/predict",
                files={"image": ("a.jpeg", data)},
                headers={"X-Request-ID": f"worker-{i}"},
                timeout=30,
            )
            assert r.status_code == 200
        # Whichever worker answers a scrape counts every worker's requests.
        for _ in range(6):
            text = httpx.get(f"{srv.url}/metrics").text
            assert 'pneumo_requests_total{route="/predict",status="200"} 20.0' in text, text
            assert f'pneumo_predictions_total{{label="{SAMPLE.parent.name}"}} 20.0' in text
            assert "pneumo_queue_depth 0.0" in text
            assert text.count("pneumo_model_info{") == 1
    finally:
        assert srv.stop() == 0
    # Each worker process logs JSON access lines, as one process does.
    lines = [json.loads(x) for x in srv.log_text().splitlines() if x.startswith("{")]
    access = [x for x in lines if x["logger"] == "pneumo_onnx.engine.serve.access"]
    assert {x["request_id"] for x in access} >= {f"worker-{i}" for i in range(20)}
    assert len({x["pid"] for x in access if "pid" in x}) in (0, 2)
    assert all(x["status"] == 200 for x in access if x["request_id"].startswith("worker-"))
