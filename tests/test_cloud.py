"""The cloud platforms' contracts on a real server with an API key: SageMaker's /ping and
/invocations (raw image bytes with their Content-Type, JSON instances) and Vertex AI's routes
at the paths its environment names; every score checked against `/predict` for the same file,
bad instances answered in place, the key and the upload limit applied as on /predict. Then
the job API's names and times, and jobs kept apart from requests in the monitoring summary."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.payloads import make_dicom
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.serve.config import DEFAULT_PORT, ServeConfig, platform_port
from pneumo_onnx.engine.serve.config_sources import resolve
from pneumo_onnx.engine.serve.front.routes.cloud import vertex_paths, vertex_router
from tests.server_process import ServerProcess

KEY = "cloud-test-key-0123456789"
AUTH = {"X-API-Key": KEY}
HEALTH = "/vertex/health"
PREDICT = "/v1/endpoints/123/deployedModels/456:predict"
IMAGES = sample_images()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_of(path: Path) -> bytes:
    out = io.BytesIO()
    Image.open(path).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"PNEUMO_API_KEYS": KEY, "AIP_HEALTH_ROUTE": HEALTH, "AIP_PREDICT_ROUTE": PREDICT}
    args = ("--state-dir", "state", "--max-upload-mb", "4", "--max-queue", "16")
    srv = ServerProcess(tmp_path_factory.mktemp("cloud"), *args, env=env).start()
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    """Every sample X-ray, plus one as PNG and one as DICOM."""
    out = {p.name: p.read_bytes() for p in IMAGES}
    out["sample.png"] = png_of(IMAGES[3])
    small = Image.open(IMAGES[0]).convert("L").resize((400, 300))
    grey = np.asarray(small, dtype=np.uint16)
    out["sample.dcm"] = make_dicom(grey * 16, bits=12)
    return out


@pytest.fixture(scope="module")
def expected(server: ServerProcess, files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """What /predict answers for each file: the platforms' routes must answer the same."""
    out = {}
    for name, data in files.items():
        r = httpx.post(
            f"{server.url}/predict", files={"image": (name, data)}, headers=AUTH, timeout=30
        )
        assert r.status_code == 200, r.text
        out[name] = r.json()
    return out


def media_type(name: str) -> str:
    return {"png": "image/png", "dcm": "application/dicom"}.get(
        name.rsplit(".", 1)[-1], "image/jpeg"
    )


def test_sagemaker_raw_bytes_score_as_predict(
    server: ServerProcess, files: dict[str, bytes], expected: dict[str, dict[str, Any]]
) -> None:
    for name, data in files.items():
        headers = {
            **AUTH,
            "Content-Type": media_type(name),
            "Accept": "application/json",
            # opaque to us; SageMaker passes visible US-ASCII (a DEL, say, is no header
            # character at all: RFC 9110 5.5, refused by the HTTP parser with a JSON 400)
            "X-Amzn-SageMaker-Custom-Attributes": 'trace=1; c=%00 {not "json" ~',
        }
        r = httpx.post(f"{server.url}/invocations", content=data, headers=headers, timeout=30)
        assert r.status_code == 200, (name, r.text)
        assert r.json() == expected[name], name
    # application/x-image: what SageMaker's built-in image algorithms are sent
    first = IMAGES[0].name
    r = httpx.post(
        f"{server.url}/invocations",
        content=files[first],
        headers={**AUTH, "Content-Type": "application/x-image"},
    )
    assert r.status_code == 200 and r.json() == expected[first]


def test_sagemaker_json_forms(
    server: ServerProcess, files: dict[str, bytes], expected: dict[str, dict[str, Any]]
) -> None:
    names = [p.name for p in IMAGES[:3]]
    url = f"{server.url}/invocations"
    one = httpx.post(url, json={"b64": b64(files[names[0]])}, headers=AUTH, timeout=30)
    assert one.status_code == 200 and one.json() == expected[names[0]]
    listed = httpx.post(url, json=[{"b64": b64(files[n])} for n in names], headers=AUTH)
    assert listed.status_code == 200 and listed.json() == [expected[n] for n in names]
    body = {
        "instances": [{"b64": b64(files[names[1]])}, {"b64": "%%%"}],
        "parameters": {"threshold": 0.999},
    }
    r = httpx.post(url, json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    first, bad = r.json()
    assert first["raw_score"] == expected[names[1]]["raw_score"] and first["threshold"] == 0.999
    assert bad == {"error": "instance 1: invalid base64 image data"}
    thresholded = httpx.post(
        url, json={"b64": b64(files[names[0]]), "threshold": 0.0}, headers=AUTH
    )
    assert thresholded.json()["prediction"] == "PNEUMONIA"


@pytest.mark.parametrize(
    "content, content_type, status, message",
    [
        (b"hello", "text/plain", 415, "expected a body of Content-Type image/jpeg, image/png"),
        (b"", "image/jpeg", 400, "expected an image file as the image/jpeg body, got 0 bytes"),
        (b"not an image", "image/png", 400, "not a supported image"),
        (b"{nope", "application/json", 400, "invalid JSON: Expecting property name"),
        (b'{"image": "aGk="}', "application/json", 400, 'expected a JSON object {"b64": ...}'),
        (b'{"b64": "%%%"}', "application/json", 400, "instance 0: invalid base64 image data"),
        (b"[]", "application/json", 400, "expected at least one instance, got an empty list"),
        (
            b'{"instances": [], "parameters": {"top_k": 2}}',
            "application/json",
            400,
            "unknown parameters ['top_k']: only ['threshold'] are read",
        ),
        (b'[{"b64": "aGk="}]', "application/json", 200, "instance 0 is not a supported image"),
    ],
    ids=[
        "media-type",
        "empty",
        "not-image",
        "bad-json",
        "no-b64",
        "bad-b64",
        "none",
        "param",
        "in-place",
    ],
)
def test_sagemaker_refusals(
    server: ServerProcess, content: bytes, content_type: str, status: int, message: str
) -> None:
    r = httpx.post(
        f"{server.url}/invocations",
        content=content,
        headers={**AUTH, "Content-Type": content_type},
    )
    assert r.status_code == status, r.text
    body = r.json()
    text = body["error"] if status != 200 else body[0]["error"]
    assert message in text


def test_vertex_routes_from_the_environment(
    server: ServerProcess, files: dict[str, bytes], expected: dict[str, dict[str, Any]]
) -> None:
    assert httpx.get(f"{server.url}{HEALTH}").json() == {"status": "ready"}
    names = [p.name for p in IMAGES] + ["sample.png", "sample.dcm"]
    instances: list[Any] = [{"b64": b64(files[n])} for n in names]
    instances.insert(2, {"b64": b64(b"not an image at all")})
    instances.insert(4, {"image": "x"})
    instances.insert(5, 7)
    r = httpx.post(
        f"{server.url}{PREDICT}",
        json={"instances": instances, "parameters": {"threshold": 0.5}},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == len(instances)
    assert predictions[2]["error"].startswith("instance 2 is not a supported image")
    assert predictions[4] == {
        "error": 'instance 4: expected an object {"b64": "<image file, base64>"}, got an object'
    }
    assert predictions[5]["error"].endswith("got a number")
    good = [p for i, p in enumerate(predictions) if i not in (2, 4, 5)]
    for name, got in zip(names, good, strict=True):
        want = expected[name]
        assert got["raw_score"] == want["raw_score"], name
        assert (got["threshold"], got["prediction"]) == (
            0.5,
            "PNEUMONIA" if want["raw_score"] > 0.5 else "NORMAL",
        )


def test_vertex_refusals(server: ServerProcess) -> None:
    url = f"{server.url}{PREDICT}"
    cases = [
        ({"instances": {"b64": "aGk="}}, '"instances" must be a list, got an object'),
        ({"inputs": []}, 'expected a JSON object {"instances"'),
        ({"instances": [{"b64": "aGk="}], "parameters": {"threshold": 2}}, "threshold must be"),
        ({"instances": [{"b64": "aGk="}] * 17}, "at most 16 instances per request, got 17"),
    ]
    for body, message in cases:
        r = httpx.post(url, json=body, headers=AUTH)
        assert r.status_code == 400 and message in r.json()["error"], r.text


def test_platform_routes_take_the_key_and_the_upload_limit(
    server: ServerProcess, files: dict[str, bytes]
) -> None:
    data = files[IMAGES[0].name]
    for path in ("/invocations", PREDICT):
        r = httpx.post(f"{server.url}{path}", json={"instances": [{"b64": b64(data)}]})
        assert r.status_code == 401, path
        wrong = {"X-API-Key": "x" * 20, "Content-Type": "image/jpeg"}
        assert httpx.post(f"{server.url}{path}", content=data, headers=wrong).status_code == 401
    assert httpx.get(f"{server.url}/ping").status_code == 200  # health: open, as /health
    big = b"\xff\xd8" + b"\0" * (4 << 20)
    for path, headers in (("/invocations", {"Content-Type": "image/jpeg"}), (PREDICT, {})):
        r = httpx.post(f"{server.url}{path}", content=big, headers={**AUTH, **headers})
        assert r.status_code == 413 and "the limit is 4 MB" in r.json()["error"]


def test_jobs_say_job_id_and_iso_times_and_stay_out_of_latency(
    server: ServerProcess, files: dict[str, bytes]
) -> None:
    summary = httpx.get(f"{server.url}/monitoring/summary", headers=AUTH).json()
    assert summary["by_source"]["job"] == 0 and summary["by_source"]["interactive"] > 0
    uploads = [("images", (p.name, files[p.name])) for p in IMAGES[:2]]
    r = httpx.post(f"{server.url}/jobs", files=uploads, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 60
    while (job := httpx.get(f"{server.url}/jobs/{job_id}", headers=AUTH).json())["status"] not in (
        "done",
        "failed",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["job_id"] == job_id and "id" not in job and job["status"] == "done"
    for key in ("created", "updated"):
        assert job[key].endswith("+00:00") and job[key][:4].isdigit(), job[key]
    deadline = time.monotonic() + 10
    while True:  # the log's writer commits every 50 ms
        after = httpx.get(f"{server.url}/monitoring/summary", headers=AUTH).json()
        if after["by_source"]["job"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after["by_source"] == {
        "interactive": summary["by_source"]["interactive"],
        "job": 2,
    }


# --- configuration from the platforms' environment, in process -----------------------------


@pytest.mark.parametrize(
    "env, port",
    [
        ({}, 8000),
        ({"AIP_HTTP_PORT": "8081"}, 8081),
        ({"SAGEMAKER_BIND_TO_PORT": "9090", "AIP_HTTP_PORT": "8081"}, 9090),
        ({"SAGEMAKER_BIND_TO_PORT": ""}, 8000),
    ],
    ids=["none", "vertex", "sagemaker-first", "empty"],
)
def test_platform_port(env: dict[str, str], port: int) -> None:
    assert platform_port(env) == port


@pytest.mark.parametrize("value", ["eighty", "0", "70000", "\uff18\uff10"])
def test_platform_port_refuses_what_is_not_a_port(value: str) -> None:
    with pytest.raises(UsageError, match="SAGEMAKER_BIND_TO_PORT must be a port number"):
        platform_port({"SAGEMAKER_BIND_TO_PORT": value})


def test_the_port_setting_wins_over_the_platforms(monkeypatch: pytest.MonkeyPatch) -> None:
    """`port` unset means the platform's port, read where the server binds (listen_port)."""
    monkeypatch.delenv("SAGEMAKER_BIND_TO_PORT", raising=False)
    monkeypatch.setenv("AIP_HTTP_PORT", "8081")
    assert ServeConfig().listen_port == 8081
    assert ServeConfig(port=9000).listen_port == 9000
    monkeypatch.setenv("PNEUMO_PORT", "9001")
    assert resolve({}).config.listen_port == 9001
    assert resolve({"port": 9002}).config.listen_port == 9002
    monkeypatch.delenv("PNEUMO_PORT")
    assert resolve({}).config.port is None and resolve({}).config.listen_port == 8081
    monkeypatch.delenv("AIP_HTTP_PORT")
    assert ServeConfig().listen_port == DEFAULT_PORT == 8000


def test_vertex_paths_are_checked() -> None:
    assert vertex_paths({}) == (None, None)
    assert vertex_paths({"AIP_PREDICT_ROUTE": "/p"}) == (None, "/p")
    with pytest.raises(UsageError, match="AIP_HEALTH_ROUTE must be a plain path"):
        vertex_paths({"AIP_HEALTH_ROUTE": "health"})
    with pytest.raises(UsageError, match="AIP_PREDICT_ROUTE=/predict is already a route"):
        vertex_router("/h", "/predict", taken={"/predict"})
    with pytest.raises(UsageError, match="are the same path"):
        vertex_router("/x", "/x", taken=set())
