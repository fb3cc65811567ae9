"""`pneumo serve` attacked as an attacker would, on loopback, with its shipped limits: image and
DICOM bombs, requests that decode to far more pixels than they weigh, floods of concurrent
uploads, large JSON, odd formats, odd version strings, cross-site forms. Each answer is checked
(status and message), the server stays ready, and where memory is the point its peak RSS
stays under 1 GB."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.payloads import deflated_dicom_bomb, make_dicom, png, rle_dicom
from pneumo_onnx.engine.runtime.samples import sample_images
from tests.server_process import ServerProcess
from tests.test_pictures_report import _run_chromium

RSS_LIMIT_MB = 1024
SAMPLE = sample_images()[-1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("hostile"), "--state-dir", "state").start()
    yield srv
    assert srv.stop() == 0
    assert "unexpected error" not in srv.log_text()  # every attack got a planned answer


def predict(srv: ServerProcess, data: bytes, name: str = "scan.png") -> httpx.Response:
    return httpx.post(f"{srv.url}/predict", files={"image": (name, data)}, timeout=120)


def infer(srv: ServerProcess, body: dict, **kwargs: object) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v2/models/pneumonia/infer",
        json=body,
        timeout=120,
        **kwargs,  # type: ignore[arg-type]
    )


def assert_ready(srv: ServerProcess) -> None:
    assert httpx.get(f"{srv.url}/v2/health/ready", timeout=10).status_code == 200
    r = predict(srv, SAMPLE.read_bytes(), SAMPLE.name)
    assert r.status_code == 200, r.text


# --- memory: the largest requests the limits allow, and bombs -------------------------------


def test_deflated_dicom_bomb_is_refused_before_inflating(server: ServerProcess) -> None:
    bomb = deflated_dicom_bomb(1024)  # 1 GB of pixel data in ~5 MB
    assert len(bomb) < 6 * 2**20
    server.reset_peak_rss()
    r = predict(server, bomb, "bomb.dcm")
    assert r.status_code == 400, r.text
    assert (
        "Deflated Explicit VR Little Endian transfer syntax, which is not accepted"
        in (r.json()["error"])
    )
    # The same bytes as a V2 BYTES element take the same decoder.
    body = {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(bomb).decode()],
            }
        ]
    }
    r = infer(server, body)
    assert r.status_code == 400 and "Deflated" in r.json()["error"]
    assert server.tree_peak_mb() < 600
    assert_ready(server)


@pytest.mark.slow  # over 5 s: make test runs it, make test-fast leaves it out
def test_largest_allowed_images_stay_under_1_gb(server: ServerProcess) -> None:
    """An 80 Mpx RGB PNG, a 59 Mpx 16-bit RLE DICOM and a 20 Mpx 16-bit PNG (each within the
    limits, each a few hundred KB) are scored, decoded in the memory-capped workers; an 80
    Mpx RGBA PNG would need ~1.8 GB to decode and an 80 Mpx 16-bit PNG ~670 MB: both are
    refused from their headers. The server and its workers together stay under 1 GB."""
    rgb = png("RGB", 8944, (90, 100, 110))
    server.reset_peak_rss()
    for data, name in (
        (rgb, "rgb.png"),
        (rle_dicom(7700), "rle.dcm"),
        (png("I;16", 4472, 1000), "gray16.png"),
    ):
        r = predict(server, data, name)
        assert r.status_code == 200, r.text
        assert 0.0 <= r.json()["raw_score"] <= 1.0
    # Two of them in one V2 request (160 Mpx, within the 200 Mpx per request): decoded one
    # after the other, each within the decode memory budget.
    blobs = [base64.b64encode(rgb + bytes([i])).decode() for i in range(2)]
    r = infer(server, {"inputs": [{"name": "b", "shape": [2], "datatype": "BYTES", "data": blobs}]})
    assert r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == 2
    r = predict(server, png("RGBA", 8944, (1, 2, 3, 4)), "rgba.png")
    assert r.status_code == 400
    assert r.json()["error"] == (
        "rgba.png (8944x8944 px RGBA) would take about 1840 MB to decode, over the 512 MB "
        "limit: send it as 8-bit grayscale or smaller"
    )
    r = predict(server, png("I;16", 8944, 1000), "big16.png")
    assert r.status_code == 400
    assert "(8944x8944 px I;16) would take about 641 MB to decode" in r.json()["error"]
    assert server.tree_peak_mb() < RSS_LIMIT_MB
    assert server.peak_rss_mb() < 400  # the server itself decodes nothing
    assert_ready(server)


def test_multiframe_dicom_counts_every_frame(server: ServerProcess) -> None:
    data = make_dicom(np.zeros((64, 64), np.uint16), Rows=4000, Columns=4000, NumberOfFrames=6)
    r = predict(server, data, "cine.dcm")
    assert r.status_code == 400
    assert r.json()["error"] == (
        "cine.dcm is 6 frame(s) of 4000x4000 px x 1 sample(s) (96 M values), over the 80 Mpx "
        "limit: refusing to decode (decompression bomb guard)"
    )


# --- time: admission control of the decode stage --------------------------------------------


def test_a_request_that_decodes_to_too_many_pixels_is_refused_up_front(
    server: ServerProcess,
) -> None:
    """120 small PNGs that decode to 64 Mpx each: refused from their headers (400) without
    holding the decoders; a normal request meanwhile is answered at once."""
    image = png("L", 8000)
    blobs = [base64.b64encode(image + bytes([i])).decode() for i in range(120)]
    body = {"inputs": [{"name": "image_bytes", "shape": [120], "datatype": "BYTES", "data": blobs}]}
    server.reset_peak_rss()
    r = infer(server, body)
    assert r.status_code == 400
    assert r.json()["error"] == (
        "the images of this request decode to 7680 Mpx, over the 200 Mpx per request limit: "
        "send fewer or smaller images per request"
    )
    too_many = {"inputs": [{"name": "image_bytes", "shape": [300], "datatype": "BYTES",
                            "data": ["aGk="] * 300}]}  # fmt: skip
    r = infer(server, too_many)
    assert r.status_code == 400 and r.json()["error"] == "at most 256 images per request, got 300"
    assert server.peak_rss_mb() < 600
    assert_ready(server)


def test_a_flood_of_large_uploads_is_shed_with_503(server: ServerProcess) -> None:
    """24 concurrent requests of 2 x 40 Mpx each (1920 Mpx asked, 400 Mpx admitted at once):
    the excess is shed at once with 503 + Retry-After instead of queueing for seconds."""
    base = png("L", 6325, 60)

    def send(i: int) -> httpx.Response:
        blobs = [base64.b64encode(base + f"{i}-{k}".encode()).decode() for k in range(2)]
        body = {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": blobs}]}
        return infer(server, body)

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(send, range(24)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    shed = next(r for r in responses if r.status_code == 503)
    assert shed.headers["retry-after"] == "1"
    assert shed.json()["error"].startswith("server busy: ")
    assert "Mpx of images already waiting to be decoded (budget 400 Mpx)" in shed.json()["error"]
    assert_ready(server)


@pytest.mark.slow  # over 5 s: make test runs it, make test-fast leaves it out
def test_large_fp32_json_does_not_stall_liveness(server: ServerProcess) -> None:
    """Eight 14.7 MB FP32 JSON bodies at once: liveness answers throughout, well within the
    Dockerfile health check's 5 s."""
    x = np.random.default_rng(1).integers(1, 9, (50, 128, 128, 3)) / 1000  # "0.00d,"
    body = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    content = json.dumps(body, separators=(",", ":")).encode()
    assert 14 * 2**20 < len(content) < 15 * 2**20
    stop, answers = threading.Event(), []

    def poll() -> None:
        while not stop.is_set():
            started = time.monotonic()
            r = httpx.get(f"{server.url}/v2/health/live", timeout=4.5)
            answers.append((r.status_code, time.monotonic() - started))
            time.sleep(0.1)

    poller = threading.Thread(target=poll)
    server.reset_peak_rss()
    poller.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(lambda _: infer_raw(server, content), range(8))  # type: ignore[arg-type]
            )
    finally:
        stop.set()
        poller.join()
    assert {r.status_code for r in responses} <= {200, 503}, [r.text[:200] for r in responses]
    assert any(r.status_code == 200 for r in responses)
    assert answers and all(status == 200 for status, _ in answers)
    assert server.peak_rss_mb() < RSS_LIMIT_MB


def infer_raw(srv: ServerProcess, content: bytes) -> httpx.Response:
    return httpx.post(f"{srv.url}/v2/models/pneumonia/infer", content=content, timeout=120)


# --- what is not an X-ray, or not a sane request ---------------------------------------------


def encoded(fmt: str) -> bytes:
    img = Image.new("RGB", (64, 64), (40, 50, 60))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, name",
    [
        (encoded("GIF"), "x.gif"),
        (encoded("WEBP"), "x.webp"),
        (encoded("ICO"), "x.ico"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n", "x.eps"),
    ],
    ids=["gif", "webp", "ico", "eps"],
)
def test_only_documented_formats_are_decoded(server: ServerProcess, data: bytes, name: str) -> None:
    r = predict(server, data, name)
    assert r.status_code == 400
    assert r.json()["error"].startswith(f"{name} is not a supported image (expected JPEG, PNG, ")


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/v2/models/pneumonia/versions/²/ready", 404, "version ² is not loaded"),
        ("/v2/models/pneumonia/versions/" + "9" * 5000, 404, "version 99999999999999999999 is"),
    ],
    ids=["superscript", "5000 digits"],
)
def test_odd_version_strings(server: ServerProcess, path: str, status: int, message: str) -> None:
    r = httpx.get(f"{server.url}{path}")
    assert r.status_code == status and message in r.text
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"id": ' + b"7" * 5000 + b', "inputs": []}', "invalid JSON: Exceeds the limit"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON: maximum recursion depth"),
    ],
    ids=["5000-digit number", "deep nesting"],
)
def test_hostile_json_is_a_400(server: ServerProcess, content: bytes, message: str) -> None:
    """The V2 protocol answers a request it cannot read with 400."""
    r = infer_raw(server, content)
    assert r.status_code == 400 and message in r.json()["error"], r.text


@pytest.mark.parametrize(
    "values, message",
    [
        (200.0, "FP32 input values must lie in [0, 1] (the model's 'unit' input scaling), got "
         "values from 200 to 200"),
        (float("nan"), "input holds NaN or infinite values"),
    ],
    ids=["0-255 sent to a 0-1 model", "nan"],
)  # fmt: skip
def test_fp32_outside_the_contract_is_refused(
    server: ServerProcess, values: float, message: str
) -> None:
    body = {"inputs": [{"name": "image", "shape": [1, 128, 128, 3], "datatype": "FP32",
                        "data": [values] * 49152}]}  # fmt: skip
    r = infer_raw(server, json.dumps(body).encode())
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_docs_work_offline(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200
    assert "/docs/static/swagger-ui-bundle.js" in page.text and "cdn." not in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
    for asset, kind in (
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
    ):
        r = httpx.get(f"{server.url}/docs/static/{asset}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert len(r.content) > 100_000
    assert httpx.get(f"{server.url}/docs/static/secrets.txt").status_code == 404
    assert httpx.get(f"{server.url}/redoc").status_code == 404  # it would load from a CDN


def test_cross_site_forms_and_foreign_hosts_are_refused(server: ServerProcess) -> None:
    """A page elsewhere cannot post a job to a server without keys: not by a form (its Origin
    is another site), not by DNS rebinding (its Host is not loopback)."""
    files = [("images", ("a.jpeg", SAMPLE.read_bytes()))]
    r = httpx.post(f"{server.url}/jobs", files=files, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert r.json()["error"] == "cross-site request refused: its Origin is not this server"
    r = httpx.post(f"{server.url}/jobs", files=files, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = httpx.get(f"{server.url}/v2/models/pneumonia", headers={"Host": "evil.example:8000"})
    assert r.status_code == 403
    assert "Host 'evil.example' is not served here" in r.json()["error"]
    same = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    r = httpx.post(f"{server.url}/predict", files={"image": ("a.jpeg", SAMPLE.read_bytes())},
                   headers=same)  # fmt: skip
    assert r.status_code == 200, r.text


def test_docs_render_in_a_browser_with_no_way_out(server: ServerProcess, tmp_path: Path) -> None:
    """Headless Chromium, every address but loopback sent to a dead proxy: Swagger UI loads
    from the package and renders the spec (OpenAPI 3.1, which Swagger UI 4 could not)."""
    dom = _run_chromium(
        tmp_path,
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
        "--virtual-time-budget=10000",
        "--dump-dom",
        f"{server.url}/docs",
    ).stdout
    assert "Unable to render this definition" not in dom
    assert "/v2/models/{name}/config" in dom and "OAS 3.1" in dom, dom[-2000:]
