"""`POST /predict` with the image file itself as the body (its own Content-Type, no multipart
to build or parse) answers as the multipart upload does."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from pneumo_onnx.engine.runtime.samples import sample_images
from tests.server_process import ServerProcess

SAMPLE = next(p for p in sample_images() if p.parent.name == "PNEUMONIA")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("raw"), "--state-dir", "state").start()
    yield srv
    assert srv.stop() == 0


def test_the_body_as_the_image_scores_as_multipart_does(server: ServerProcess) -> None:
    data = SAMPLE.read_bytes()
    multipart = httpx.post(f"{server.url}/predict", files={"image": (SAMPLE.name, data)})
    raw = httpx.post(f"{server.url}/predict", content=data, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert raw.json() == multipart.json()
    assert raw.headers["x-model-version"] == "pneumonia/2"
    octets = httpx.post(
        f"{server.url}/predict?threshold=0.999999999",
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert octets.json()["threshold"] == 0.999999999


def test_bad_raw_bodies_get_specific_errors(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/predict", content=b"", headers={"Content-Type": "image/png"})
    assert r.status_code == 400 and "empty body" in r.json()["error"]
    r = httpx.post(
        f"{server.url}/predict", content=b"not an image", headers={"Content-Type": "image/jpeg"}
    )
    assert r.status_code == 400 and r.json()["error"]
    r = httpx.post(
        f"{server.url}/predict?threshold=2",
        content=SAMPLE.read_bytes(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 400 and "threshold" in r.json()["error"]
    r = httpx.post(
        f"{server.url}/predict", content=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 400 and "as the body with its Content-Type" in r.json()["error"]


def test_predict_reads_its_own_query_and_form_as_fastapi_did(server: ServerProcess) -> None:
    """`/predict` is served past FastAPI's router (engine.serve.front.direct): its flags,
    form fields and errors are read by the route itself, with FastAPI's answers."""
    data = SAMPLE.read_bytes()
    url = f"{server.url}/predict"
    r = httpx.post(f"{url}?heatmap=maybe", files={"image": (SAMPLE.name, data)})
    assert r.status_code == 422
    assert r.json() == {
        "error": "query.heatmap: Input should be a valid boolean, unable to interpret input"
    }
    r = httpx.post(
        f"{url}?heatmap=NO&negative=0", content=data, headers={"Content-Type": "image/jpeg"}
    )
    assert r.status_code == 200 and "heatmap" not in r.json()
    r = httpx.post(url, data={"image": "not a file"})
    assert r.status_code == 400 and "no image file provided" in r.json()["error"]
    r = httpx.post(url, files={"image": (SAMPLE.name, data), "threshold": ("t.txt", b"0.5")})
    assert r.status_code == 400 and "'threshold' field must be text" in r.json()["error"]
    many = {"image": (SAMPLE.name, data), **{f"f{i}": (f"{i}.bin", b"x") for i in range(16)}}
    r = httpx.post(url, files=many)
    assert r.status_code == 400 and "at most 16 parts" in r.json()["error"]
    boundary = "b0undary"
    torn = f"--{boundary}\r\nContent-Disposition: form-data; name=image; filename=x.jpeg\r\n"
    r = httpx.post(
        url,
        content=torn.encode() + b"\r\n" + data[:1000],  # no closing boundary
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 400, r.text
    r = httpx.post(url, content=data, headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400 and "boundary" in r.json()["error"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'route="/predict",status="422"' in metrics  # the route's label, as the router's


def test_the_openapi_document_describes_predict(server: ServerProcess) -> None:
    operation = httpx.get(f"{server.url}/openapi.json").json()["paths"]["/predict"]["post"]
    assert {p["name"] for p in operation["parameters"]} == {"heatmap", "negative", "threshold"}
    content = operation["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "application/dicom"} <= set(content)
    assert content["multipart/form-data"]["schema"]["required"] == ["image"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]
