"""`pneumo serve` as a client sees it: a real server on loopback, real HTTP, real X-rays."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pneumo_onnx import Engine
from pneumo_onnx.engine.explain.overlay import DISPLAY_SIDE
from pneumo_onnx.engine.runtime.preprocess import fit
from pneumo_onnx.engine.runtime.samples import sample_images
from tests.server_process import ServerProcess

SAMPLE = sample_images()[-1]  # a PNEUMONIA X-ray


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("serve"), "--state-dir", "state").start()
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load()


def post_image(
    server: ServerProcess, data: bytes, name: str = "x.jpeg", **form: str
) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", files={"image": (name, data)}, data=form, timeout=30)


def assert_healthy(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/health", timeout=10)
    assert r.status_code == 200 and r.json()["model_loaded"] is True


# --- seed routes -----------------------------------------------------------------------------


def test_health_reports_the_served_model(server: ServerProcess) -> None:
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "healthy"
    assert (body["model"], body["version"], body["variant"]) == ("pneumonia", "2", "fp32")


def test_predict_matches_the_engine(server: ServerProcess, engine: Engine) -> None:
    r = post_image(server, SAMPLE.read_bytes(), SAMPLE.name, threshold="0.7")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"prediction", "confidence", "raw_score", "threshold"}
    expected = engine.predict(SAMPLE, threshold=0.7)
    assert body["prediction"] == expected["prediction"]
    assert body["raw_score"] == pytest.approx(expected["raw_score"], abs=1e-6)
    assert body["threshold"] == 0.7
    assert r.headers["x-model-version"] == "pneumonia/2"
    assert r.headers["x-request-id"]


def test_predict_base64_matches_predict(server: ServerProcess) -> None:
    b64 = base64.b64encode(SAMPLE.read_bytes()).decode()
    a = httpx.post(f"{server.url}/predict/base64", json={"image": b64, "threshold": 0.71}).json()
    b = post_image(server, SAMPLE.read_bytes()).json()
    assert a == b


def test_request_id_is_echoed(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/health", headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"


def test_repeated_image_is_answered_from_the_cache(server: ServerProcess) -> None:
    data = sample_images()[0].read_bytes()

    def hits() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        hit = 'pneumo_cache_lookups_total{result="hit"}'
        line = next(
            (x for x in text.splitlines() if x.startswith(hit)),
            "none yet 0",  # the counter's line appears with its first hit
        )
        return float(line.split()[-1])

    post_image(server, data)
    before = hits()
    first = post_image(server, data).json()
    assert hits() == before + 1
    # A different threshold is a different answer, never served from the cache.
    other = post_image(server, data, threshold="0.01").json()
    assert other["threshold"] == 0.01 and first["threshold"] == 0.71


# --- bad input: a clear 4xx each, and the server still healthy after --------------------------


def _bomb() -> bytes:
    return encode(Image.new("1", (10_000, 10_000)), "PNG")


BAD_UPLOADS = {
    "zero-byte file": (b"", 400, "0 bytes"),
    "truncated JPEG": (SAMPLE.read_bytes()[:2000], 400, "truncated or corrupt"),
    "text named .jpg": (b"this is not an image\n" * 10, 400, "is not a supported image"),
    "decompression bomb": (None, 400, "decompression bomb guard"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS), ids=list(BAD_UPLOADS))
def test_bad_uploads_get_a_clear_400(server: ServerProcess, case: str) -> None:
    data, status, message = BAD_UPLOADS[case]
    r = post_image(server, _bomb() if data is None else data, "scan.jpg")
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert "Traceback" not in r.text and "/work" not in r.text
    assert_healthy(server)


@pytest.mark.parametrize(
    "img, fmt",
    [
        (
            Image.fromarray((np.arange(256 * 256).reshape(256, 256) % 65535).astype(np.uint16)),
            "PNG",
        ),
        (Image.new("CMYK", (300, 300), (10, 20, 30, 40)), "JPEG"),
    ],
    ids=["16-bit PNG", "CMYK JPEG"],
)
def test_unusual_but_valid_images_are_scored(
    server: ServerProcess, img: Image.Image, fmt: str
) -> None:
    r = post_image(server, encode(img, fmt), f"scan.{fmt.lower()}")
    assert r.status_code == 200, r.text
    assert 0.0 <= r.json()["raw_score"] <= 1.0


@pytest.mark.parametrize("threshold", ["NaN", "-1", "2", "abc", "inf"])
def test_bad_thresholds_are_refused(server: ServerProcess, threshold: str) -> None:
    r = post_image(server, SAMPLE.read_bytes(), threshold=threshold)
    assert r.status_code == 400
    assert "threshold must be" in r.json()["error"]


@pytest.mark.parametrize("threshold", ["NaN", "-1", "2", '"abc"'], ids=["nan", "-1", "2", "abc"])
def test_bad_base64_thresholds_are_refused(server: ServerProcess, threshold: str) -> None:
    b64 = base64.b64encode(SAMPLE.read_bytes()).decode()
    content = f'{{"image": "{b64}", "threshold": {threshold}}}'  # NaN: Python's json accepts it
    r = httpx.post(
        f"{server.url}/predict/base64",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert r.status_code in (400, 422), r.text
    assert "threshold" in r.json()["error"]


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({}, 400, "no image file provided"),
        ({"data": {"threshold": "0.5"}}, 400, "no image file provided"),
        ({"files": {"picture": ("x.jpeg", b"123")}}, 400, "no image file provided"),
        (
            {"content": b"", "headers": {"content-type": "application/octet-stream"}},
            400,
            "empty body: send the image file as the request body",
        ),
    ],
    ids=["empty body", "missing field", "wrong field name", "not multipart"],
)
def test_missing_image_field(
    server: ServerProcess, kwargs: dict, status: int, message: str
) -> None:
    r = httpx.post(f"{server.url}/predict", timeout=10, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_invalid_base64_and_missing_json_field(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/predict/base64", json={"image": "not base64!!"})
    assert r.status_code == 400 and r.json()["error"] == "invalid base64 image data"
    r = httpx.post(f"{server.url}/predict/base64", json={"threshold": 0.5})
    assert r.status_code == 422 and "image" in r.json()["error"]
    r = httpx.post(
        f"{server.url}/predict/base64",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422


def test_uploads_over_16_mb_get_413(server: ServerProcess) -> None:
    big = b"\xff" * (17 * 1024 * 1024)
    r = post_image(server, big)
    assert r.status_code == 413
    assert r.json() == {"error": "request too large: the limit is 16 MB"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds for streamed bodies too
        for _ in range(17):
            yield b"\0" * (1024 * 1024)

    r = httpx.post(
        f"{server.url}/predict/base64",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert_healthy(server)


def test_unknown_route_is_json_404(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/nope")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


# --- KServe V2 ---------------------------------------------------------------------------------


def test_v2_health_and_metadata(server: ServerProcess, engine: Engine) -> None:
    assert httpx.get(f"{server.url}/v2").json()["name"] == "pneumo-onnx"
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{server.url}/v2/models/pneumonia").json()
    assert meta["inputs"][0] == {"name": "image", "datatype": "FP32", "shape": [-1, 128, 128, 3]}
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}]
    assert meta["parameters"]["pipeline"] == "rgb, bicubic stretch, scaling unit"
    assert meta["parameters"]["preprocessing"] == engine.preprocessing  # the manifest's verdict
    assert httpx.get(f"{server.url}/v2/models/pneumonia/versions/2").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/pneumonia/versions/1").status_code == 404
    assert httpx.get(f"{server.url}/v2/models/pneumonia/ready").json()["ready"] is True
    assert httpx.get(f"{server.url}/v2/models/pneumonia/versions/9/ready").status_code == 404
    assert httpx.get(f"{server.url}/v2/models/nothing").status_code == 404


def test_v2_infer_fp32_and_bytes_match_the_engine(server: ServerProcess, engine: Engine) -> None:
    images = sample_images()[:3]
    x = np.stack([engine.preprocess(p) for p in images])
    expected = engine.scores(x)
    body = {
        "id": "req-1",
        "inputs": [
            {
                "name": "image",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ],
    }
    r = httpx.post(f"{server.url}/v2/models/pneumonia/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-1" and out["model_version"] == "2"
    assert out["outputs"][0]["shape"] == [3, 1]
    np.testing.assert_allclose(out["outputs"][0]["data"], expected, atol=1e-6)

    blobs = [base64.b64encode(p.read_bytes()).decode() for p in images]
    body = {"inputs": [{"name": "image_bytes", "shape": [3], "datatype": "BYTES", "data": blobs}]}
    r = httpx.post(f"{server.url}/v2/models/pneumonia/versions/2/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], expected, atol=1e-6)


@pytest.mark.parametrize(
    "tensor, message",
    [
        (
            {"shape": [1, 64, 64, 3], "datatype": "FP32", "data": [0.5] * (64 * 64 * 3)},
            "expected shape",
        ),
        ({"shape": [1, 128, 128, 3], "datatype": "FP32", "data": [0.5] * 10}, "needs 49152 values"),
        ({"shape": [1, 128, 128, 3], "datatype": "INT8", "data": [1]}, "FP32 or BYTES"),
        ({"shape": [1, 128, 128, 3], "datatype": "FP32", "data": ["x"] * 49152}, "must be numbers"),
        ({"shape": [2], "datatype": "BYTES", "data": ["aGk="]}, "shape [N] matching"),
        ({"shape": [1], "datatype": "BYTES", "data": ["%%%"]}, "not valid base64"),
        ({"shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}, "is not a supported image"),
    ],
    ids=[
        "wrong shape",
        "wrong count",
        "wrong datatype",
        "strings",
        "bytes count",
        "bad b64",
        "not image",
    ],
)
def test_v2_bad_tensors_get_400(server: ServerProcess, tensor: dict, message: str) -> None:
    body = {"inputs": [{"name": "image", **tensor}]}
    r = httpx.post(f"{server.url}/v2/models/pneumonia/infer", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert_healthy(server)


def test_v2_repository_control_is_refused_without_api_keys(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v2/repository/models/pneumonia/load")
    assert r.status_code == 403 and "admin keys" in r.json()["error"]


def test_metrics_expose_requests_batches_and_model(server: ServerProcess) -> None:
    post_image(server, SAMPLE.read_bytes())
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        'pneumo_requests_total{route="/predict",status="200"}',
        "pneumo_request_duration_seconds_bucket",
        "pneumo_queue_wait_duration_seconds_bucket",
        "pneumo_batch_size_bucket",
        'pneumo_predictions_total{label="PNEUMONIA"}',
        'pneumo_model_info{name="pneumonia"',
    ):
        assert name in text, name


def test_openapi_docs_are_served(server: ServerProcess) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/predict", "/predict/base64", "/health", "/v2/models/{name}/infer"} <= set(
        spec["paths"]
    )
    assert httpx.get(f"{server.url}/docs").status_code == 200


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(server: ServerProcess, tmp_path: Path) -> None:
    """Property-based requests generated from our own OpenAPI spec: no 5xx, ever."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--generation-deterministic",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    spec = httpx.get(f"{server.url}/openapi.json").json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    assert f"Tested: {operations}" in proc.stdout  # every operation of the spec was exercised
    assert_healthy(server)


def test_predict_with_heatmap_returns_an_overlay_png(server: ServerProcess) -> None:
    r = httpx.post(
        f"{server.url}/predict?heatmap=true",
        files={"image": (SAMPLE.name, SAMPLE.read_bytes())},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["heatmap_method"] == "cam"
    overlay = Image.open(io.BytesIO(base64.b64decode(body["heatmap"])))
    assert overlay.format == "PNG"
    with Image.open(SAMPLE) as original:
        width, height = fit(original.size, DISPLAY_SIDE)  # the X-ray at the top left, legend beside
    assert overlay.width > width and overlay.height >= height
    plain = post_image(server, SAMPLE.read_bytes()).json()
    assert "heatmap" not in plain and plain["raw_score"] == body["raw_score"]
    normal = sample_images()[2]  # P(PNEUMONIA) 0.012: evidence against it, in blue if asked
    with Image.open(normal) as original:
        box = (0, 0, *fit(original.size, DISPLAY_SIDE))
    pictures = []
    for query in ("heatmap=true", "heatmap=true&negative=true"):
        r = httpx.post(
            f"{server.url}/predict?{query}",
            files={"image": (normal.name, normal.read_bytes())},
            timeout=60,
        )
        png = Image.open(io.BytesIO(base64.b64decode(r.json()["heatmap"])))
        pictures.append(np.asarray(png.crop(box), dtype=np.int16))
    blue = [int((p[..., 2] - p[..., 0] > 60).sum()) for p in pictures]
    assert blue[0] == 0 and blue[1] > 1000
    alone = httpx.post(
        f"{server.url}/predict?negative=true", files={"image": (normal.name, normal.read_bytes())}
    )
    assert alone.status_code == 400
    assert alone.json() == {
        "error": "negative=true adds to the heatmap: ask for it with heatmap=true"
    }


def test_config_refuses_an_unknown_preprocessing() -> None:
    from pneumo_onnx.engine.errors import UsageError
    from pneumo_onnx.engine.serve.config import ServeConfig

    assert ServeConfig().preprocessing == "auto"
    with pytest.raises(UsageError, match="--preprocessing must be one of auto, fast, reference"):
        ServeConfig(preprocessing="turbo")
