"""`pneumo serve` bounded by construction, attacked with what broke the last round's limits:
ambiguous HTTP framing, a JPEG 2000 frame far larger than its DICOM header, a TIFF strip
table, DICOM sequence bombs, a TIFF whose header is consistent and whose strip table alone
takes a GB. Each gets a 4xx within its deadline; the server and its decode workers together
stay under 1 GB; a normal /predict sent meanwhile is answered within 1 s; the server stays
ready."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.payloads import (
    chunked_with_length,
    dicom_sequence_bomb,
    j2k_dicom_bomb,
    png,
    tiff_strip_bomb,
)
from pneumo_onnx.engine.runtime.samples import sample_images
from tests.server_process import ServerProcess

RSS_LIMIT_MB = 1024
SAMPLE = sample_images()[-1]
NEAR_LIMIT = 16 * 2**20 - 2**16  # a file that fits a 16 MB upload with its multipart framing


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("bounded"), "--state-dir", "state").start()
    yield srv
    assert srv.stop() == 0
    assert "unexpected error" not in srv.log_text()


@contextlib.contextmanager
def normal_traffic(srv: ServerProcess) -> Iterator[list[tuple[int, float]]]:
    """A /predict every 50 ms while the block runs: (status, seconds) of each."""
    answers: list[tuple[int, float]] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            started = time.monotonic()
            files = {"image": ("a.jpeg", SAMPLE.read_bytes())}
            r = httpx.post(f"{srv.url}/predict", files=files, timeout=30)
            answers.append((r.status_code, time.monotonic() - started))
            stop.wait(0.05)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join()


def assert_unharmed(srv: ServerProcess, answers: list[tuple[int, float]]) -> None:
    assert answers and all(status == 200 for status, _ in answers), answers
    assert max(seconds for _, seconds in answers) < 1.0, answers
    assert srv.tree_peak_mb() < RSS_LIMIT_MB
    assert httpx.get(f"{srv.url}/v2/health/ready", timeout=10).status_code == 200


def predict(srv: ServerProcess, data: bytes, name: str) -> httpx.Response:
    return httpx.post(f"{srv.url}/predict", files={"image": (name, data)}, timeout=60)


def infer(srv: ServerProcess, blobs: list[bytes]) -> httpx.Response:
    data = [base64.b64encode(b).decode() for b in blobs]
    body = {"inputs": [{"name": "b", "shape": [len(data)], "datatype": "BYTES", "data": data}]}
    return httpx.post(f"{srv.url}/v2/models/pneumonia/infer", json=body, timeout=60)


# --- decoders --------------------------------------------------------------------------------

BOMBS: dict[str, tuple[Callable[[], bytes], str, str]] = {
    # name: (payload, file name, the error's beginning)
    "jpeg2000 frame 13000 px in a 64 px dicom": (
        j2k_dicom_bomb,
        "frame.dcm",
        "frame.dcm: its compressed frame is 13000x13000 px, its header says 64x64: refused",
    ),
    "tiff with 4 M strips for 64 rows": (
        lambda: tiff_strip_bomb(NEAR_LIMIT),
        "strips.tif",
        "strips.tif: its TIFF header lists 4177856 strips for a 64x64 px image",
    ),
    "dicom sequence of 2 M items": (
        lambda: dicom_sequence_bomb(NEAR_LIMIT),
        "items.dcm",
        "items.dcm holds more than 50000 data elements",
    ),
    "dicom of 2 M zero-length elements": (
        lambda: dicom_sequence_bomb(NEAR_LIMIT, zero_length_elements=True),
        "empty.dcm",
        "empty.dcm holds more than 50000 data elements",
    ),
    "tiff whose 4 M strips add up": (
        lambda: tiff_strip_bomb(NEAR_LIMIT, consistent=True),
        "tall.tif",
        "tall.tif needs more",  # than its allowance, or stays at its limit (Pillow retries)
    ),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_decoder_bombs_are_refused_within_their_limits(server: ServerProcess, bomb: str) -> None:
    """Through /predict, then two at once through V2 BYTES: 400 with what was wrong, in
    seconds; the server and its workers stay under 1 GB; normal requests go on."""
    make, name, message = BOMBS[bomb]
    data = make()
    server.reset_peak_rss()
    with normal_traffic(server) as answers:
        started = time.monotonic()
        r = predict(server, data, name)
        assert r.status_code == 400 and r.json()["error"].startswith(message), r.text
        assert time.monotonic() - started < 12
        if len(data) < 2**20:  # two at once fit in one V2 request
            r = infer(server, [data, data + b"\0"])
            assert r.status_code == 400, r.text
    assert_unharmed(server, answers)
    assert server.peak_rss_mb() < 400  # the server itself decodes nothing


def test_a_job_holding_a_bomb_fails_that_image_only(server: ServerProcess) -> None:
    files = [
        ("images", ("frame.dcm", j2k_dicom_bomb())),
        ("images", ("a.jpeg", SAMPLE.read_bytes())),
    ]
    server.reset_peak_rss()
    r = httpx.post(f"{server.url}/jobs", files=files, timeout=30)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while (job := httpx.get(f"{server.url}/jobs/{r.json()['job_id']}").json())["status"] != "done":
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    bomb, good = job["results"]
    assert bomb["error"].startswith("frame.dcm: its compressed frame is 13000x13000 px")
    assert good["error"] is None and good["prediction"] in ("NORMAL", "PNEUMONIA")
    assert server.tree_peak_mb() < RSS_LIMIT_MB


def test_a_decode_past_its_deadline_is_killed(tmp_path: Path) -> None:
    """An 80 Mpx PNG takes more than 0.1 s to decode: with --decode-timeout 0.1 its worker
    is killed and replaced, the request gets 400, and the next ones are served."""
    srv = ServerProcess(tmp_path, "--decode-timeout", "0.1").start()
    try:
        workers = set(srv.workers())
        r = predict(srv, png("L", 8944, 77), "slow.png")
        assert r.status_code == 400
        assert r.json()["error"] == "slow.png took more than 0.1 s to decode: refused"
        assert predict(srv, SAMPLE.read_bytes(), "a.jpeg").status_code == 200
        deadline = time.monotonic() + 10
        while len(set(srv.workers()) - workers) < 1:  # a new worker took its place
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        assert srv.stop() == 0


def test_a_worker_killed_mid_decode_costs_only_its_request(server: ServerProcess) -> None:
    """Every decode worker killed (SIGKILL) while one decodes an 80 Mpx PNG: that request
    gets 400 saying so, the workers are replaced, the next request is served."""
    big = png("L", 8944, 78)
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(predict(server, big, "big.png")))
    thread.start()
    time.sleep(0.2)
    for pid in server.workers():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    thread.join()
    r = result[0]
    assert r.status_code in (200, 400), r.text  # 200 if it had finished already
    if r.status_code == 400:
        assert r.json()["error"] == (
            "big.png could not be decoded: the decoder stopped (killed by SIGKILL)"
        )
    assert predict(server, SAMPLE.read_bytes(), "a.jpeg").status_code == 200


# --- HTTP framing ----------------------------------------------------------------------------


def test_length_and_chunked_together_are_refused_and_the_connection_closed(
    server: ServerProcess,
) -> None:
    """Content-Length: 0 and Transfer-Encoding: chunked, then a 600 MB chunked body whose
    first chunk holds a request: 400, the connection closed, the body never read, the
    request inside it never answered."""
    head, chunk = chunked_with_length("/v2/models/pneumonia/infer")
    smuggled = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    server.reset_peak_rss()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head + f"{len(smuggled):x}\r\n".encode() + smuggled + b"\r\n")
        sent = 0
        with contextlib.suppress(OSError):  # the server closes on us
            for _ in range(600):
                s.sendall(chunk)
                sent += 1
        s.settimeout(5.0)
        answer = b""
        with contextlib.suppress(OSError):
            while part := s.recv(65536):
                answer += part
    text = answer.decode(errors="replace")
    assert text.startswith("HTTP/1.1 400"), text[:300]
    assert "Content-Length" in text and "Transfer-Encoding" in text  # the gate's or llhttp's
    assert text.count("HTTP/1.1") == 1  # nothing answered after it: no smuggled request
    assert sent < 600 and time.monotonic() - started < 10
    assert server.tree_peak_mb() < 600


def exchange(port: int, payload: bytes) -> str:
    """What the server answers `payload` sent on a new connection, until it closes it."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        with contextlib.suppress(OSError):  # the server may close before it has read all
            s.sendall(payload)
        s.settimeout(5.0)
        answer = b""
        with contextlib.suppress(OSError):
            while part := s.recv(65536):
                answer += part
    return answer.decode(errors="replace")


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 40) for i in range(2_000))
        + b"\r\n",
        b"GET /" + b"c" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=["one-header", "many-headers", "long-url"],
)
def test_a_head_over_64_kb_is_a_json_431(server: ServerProcess, head: bytes) -> None:
    """llhttp sets no limit on a request's line and headers: the protocol counts them."""
    server.reset_peak_rss()
    text = exchange(server.port, head * 20)  # 1.4 MB of headers, were they all read
    assert text.startswith("HTTP/1.1 431"), text[:200]
    assert '{"error": "the request line and headers are over 64 KB"}' in text
    assert text.count("HTTP/1.1") == 1
    assert server.tree_peak_mb() < 600


def test_heads_under_the_limit_pass_one_after_another(server: ServerProcess) -> None:
    """The count starts again with each request of a kept-alive connection."""
    one = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: " + b"a" * 40_000 + b"\r\n\r\n"
    last = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    text = exchange(server.port, one * 3 + last)
    assert text.count("HTTP/1.1 200") == 4, text[:300]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x7fb\r\n\r\n",  # DEL: no field char
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ],
    ids=["no-method", "control-in-value", "two-lengths"],
)
def test_a_request_the_parser_refuses_is_a_json_400(
    server: ServerProcess, request_bytes: bytes
) -> None:
    text = exchange(server.port, request_bytes)
    assert text.startswith("HTTP/1.1 400"), text[:200]
    assert '{"error": "malformed HTTP request: ' in text


def test_chunked_bodies_are_metered_like_any_other(server: ServerProcess) -> None:
    """A chunked body counts against the upload limit byte by byte: past 16 MB, 413 and the
    connection closed, without the server holding the rest."""
    head = (
        b"POST /v2/models/pneumonia/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    _, chunk = chunked_with_length("/")
    server.reset_peak_rss()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head)
        with contextlib.suppress(OSError):
            for _ in range(64):
                s.sendall(chunk)
        s.settimeout(5.0)
        answer = s.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert "connection: close" in answer.lower()
    assert server.peak_rss_mb() < 400


def test_a_trickled_chunked_body_meets_the_body_deadline(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, "--body-timeout", "2").start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(
                b"POST /predict/base64 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
            )
            started = time.monotonic()
            answer = b""
            s.settimeout(0.5)
            while time.monotonic() - started < 8 and not answer:
                with contextlib.suppress(OSError):
                    s.sendall(b"1\r\n{\r\n")  # one byte a half second
                with contextlib.suppress(TimeoutError):
                    answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < 4
    finally:
        assert srv.stop() == 0


# --- malformed values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, headers, message",
    [
        (
            b'{"inputs":[{"name":"x","shape":[1,128,128,3],"datatype":"FP32","data":[' + b"9" * 4000
            + b"]}]}",
            {},
            "FP32 input data must be numbers",
        ),
        (
            b'{"inputs":[]}',
            {"Inference-Header-Content-Length": "²".encode("latin-1")},
            "must be a byte count",
        ),
    ],
    ids=["4000-digit integer", "superscript byte count"],
)  # fmt: skip
def test_malformed_numbers_are_a_400(
    server: ServerProcess, content: bytes, headers: dict[str, str], message: str
) -> None:
    r = httpx.post(
        f"{server.url}/v2/models/pneumonia/infer", content=content, headers=headers, timeout=30
    )
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_two_image_parts_are_a_400(server: ServerProcess) -> None:
    files = [("image", ("a.jpeg", SAMPLE.read_bytes())), ("image", ("b.jpeg", SAMPLE.read_bytes()))]
    r = httpx.post(f"{server.url}/predict", files=files)
    assert r.status_code == 400
    assert r.json()["error"] == "expected one multipart field 'image', got several: send one image"
