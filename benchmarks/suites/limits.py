"""`limits`: the memory of `pneumo serve`, with its shipped limits, under the largest single
requests those limits allow, the attacks its decode workers bound, and a few requests it
refuses: one server, one request at a time, per row the peak RSS of the server process and of
the server with its decode workers (summed, sampled), and how long the answer took. The
target: every row under 1 GB. No baseline: the seed-style server has no such limits."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.memory import TreeMemory, status_kb
from benchmarks.payloads import (
    chunked_with_length,
    deflated_dicom_bomb,
    dicom_sequence_bomb,
    j2k_dicom_bomb,
    png,
    rle_dicom,
    tiff_strip_bomb,
)
from benchmarks.suites import COMPARED, Context, Skip, checkout_env, has, pneumo_argv
from benchmarks.suites.serve import free_port, pneumo_serve_missing, wait_ready

TARGET_MB = 1024


Answer = tuple[int, str | None]  # status, and the error message of a refusal
Send = Callable[[str], Answer]


def requests() -> list[tuple[str, Callable[[], Send]]]:
    """(what, prepare) for each request: prepare() builds its body (some take a second) and
    returns send(base url), so that only the sending is timed."""

    def answer(r: httpx.Response) -> Answer:
        return r.status_code, (r.json().get("error") if r.status_code >= 400 else None)

    def predict(make: Callable[[], bytes], name: str, query: str = "") -> Callable[[], Send]:
        def prepare() -> Send:
            data = make()
            return lambda url: answer(
                httpx.post(f"{url}/predict{query}", files={"image": (name, data)}, timeout=600)
            )

        return prepare

    def infer(make: Callable[[], bytes]) -> Callable[[], Send]:
        def prepare() -> Send:
            body = make()
            return lambda url: answer(
                httpx.post(f"{url}/v2/models/pneumonia/infer", content=body, timeout=600)
            )

        return prepare

    def framing() -> Send:
        return lambda url: chunked_against(url, 600)

    def rgb(extra: bytes = b"") -> bytes:
        return png("RGB", 8944, (90, 100, 110), extra)

    def two_rgb() -> bytes:
        blobs = [base64.b64encode(rgb(bytes([i]))).decode() for i in range(2)]
        return json.dumps(
            {"inputs": [{"name": "b", "shape": [2], "datatype": "BYTES", "data": blobs}]}
        ).encode()

    def fp32_json() -> bytes:
        x = np.random.default_rng(1).integers(1, 9, (50, 128, 128, 3)) / 1000
        tensor = {"name": "image", "shape": list(x.shape), "datatype": "FP32"}
        body = {"inputs": [{**tensor, "data": x.ravel().tolist()}]}
        return json.dumps(body, separators=(",", ":")).encode()

    near = 16 * 2**20 - 2**16  # fits a 16 MB upload with its multipart framing
    return [
        ("80 Mpx 8-bit RGB PNG, /predict", predict(rgb, "a.png")),
        ("59 Mpx 16-bit RLE DICOM, /predict", predict(lambda: rle_dicom(7700), "a.dcm")),
        ("20 Mpx 16-bit PNG, /predict", predict(lambda: png("I;16", 4472, 1000), "b.png")),
        ("21 Mpx RGBA PNG, /predict", predict(lambda: png("RGBA", 4580, (1, 2, 3, 200)), "c.png")),
        ("80 Mpx RGB PNG, /predict?heatmap=true",
         predict(lambda: rgb(b"h"), "h.png", "?heatmap=true")),
        ("2 x 80 Mpx RGB PNG in one V2 BYTES request", infer(two_rgb)),
        ("14 MB V2 FP32 JSON (50 tensors)", infer(fp32_json)),
        ("Deflated DICOM, 1 GB inflated (refused)",
         predict(lambda: deflated_dicom_bomb(1024), "d.dcm")),
        ("80 Mpx RGBA PNG (refused from its header)",
         predict(lambda: png("RGBA", 8944, (1, 2, 3, 4)), "e.png")),
        ("JPEG 2000 frame of 13000 px in a 64 px DICOM (refused)",
         predict(j2k_dicom_bomb, "f.dcm")),
        ("TIFF listing 4 M strips for 64 rows (refused)",
         predict(lambda: tiff_strip_bomb(near), "g.tif")),
        ("TIFF of 4 M consistent strips, a 1.3 GB strip table (refused)",
         predict(lambda: tiff_strip_bomb(near, consistent=True), "h.tif")),
        ("DICOM sequence of 2 M empty items (refused)",
         predict(lambda: dicom_sequence_bomb(near), "i.dcm")),
        ("DICOM of 2 M zero-length elements (refused)",
         predict(lambda: dicom_sequence_bomb(near, zero_length_elements=True), "j.dcm")),
        ("Content-Length: 0 and Transfer-Encoding: chunked, 600 MB body (refused)", framing),
    ]  # fmt: skip


def chunked_against(url: str, megabytes: int) -> Answer:
    """`chunked_with_length` sent over a raw socket (an HTTP client would not send it): the
    status of the answer and its error, or what the server did instead."""
    host, port = url.removeprefix("http://").split(":")
    head, chunk = chunked_with_length("/v2/models/pneumonia/infer")
    answer = b""
    with socket.create_connection((host, int(port))) as s:
        with contextlib.suppress(OSError):  # a server that refuses closes on us
            s.sendall(head)
            for _ in range(megabytes):
                s.sendall(chunk)
            s.sendall(b"0\r\n\r\n")
        s.settimeout(600)
        with contextlib.suppress(OSError):
            while part := s.recv(65536):
                answer += part
    if not answer.startswith(b"HTTP/1.1 "):
        return 0, "connection closed without an answer"
    status = int(answer[9:12])
    body = answer.split(b"\r\n\r\n", 1)[-1]
    with contextlib.suppress(ValueError):
        return status, json.loads(body).get("error") if status >= 400 else None
    return status, body[:200].decode(errors="replace")


def run(ctx: Context) -> dict[str, Any]:
    reason = pneumo_serve_missing()
    if reason:
        raise Skip(reason)
    if not has("pydicom"):
        raise Skip("pydicom not installed: pip install 'pneumo-onnx[dicom]'")
    if not Path("/proc/self/clear_refs").exists():
        raise Skip("needs Linux /proc to reset and read the server's peak RSS")
    rows = measure(ctx, "pneumo", None)
    if ctx.compare is not None:  # the same requests against the compared checkout's server
        rows += measure(ctx, f"pneumo@{COMPARED}", ctx.compare)
    worst = max(r["peak_tree_rss_mb"] for r in rows if r["server"] == "pneumo")
    return {"target_mb": TARGET_MB, "worst_peak_tree_rss_mb": worst, "rows": rows, "skipped": []}


def measure(ctx: Context, server: str, checkout: Path | None) -> list[dict[str, Any]]:
    """Every request against one server, one at a time, each with its own memory window."""
    port = free_port()
    log = ctx.workdir / f"server-limits-{server}.log"
    argv = [*pneumo_argv(checkout), "serve", "--port", str(port),
            "--state-dir", str(ctx.workdir / f"limits-state-{server}")]  # fmt: skip
    cwd, env = checkout_env(checkout)
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    rows = []
    try:
        wait_ready(proc, port, log)
        url = f"http://127.0.0.1:{port}"
        idle = TreeMemory(proc.pid).start()
        idle.stop()
        rows.append(
            {
                "name": "idle, after start-up",
                "server": server,
                "status": 200,
                "peak_rss_mb": round(status_kb(proc.pid, "VmHWM") / 1024, 1),
                "peak_tree_rss_mb": round(idle.peak_mb(), 1),
            }
        )
        for name, prepare in requests():
            send = prepare()
            tree = TreeMemory(proc.pid).start()
            started = time.perf_counter()
            try:
                status, error = send(url)
            except httpx.HTTPError as e:
                status, error = 0, f"{type(e).__name__}: {e}"
            finally:
                tree.stop()
            rows.append(
                {
                    "name": name,
                    "server": server,
                    "status": status,
                    "seconds": round(time.perf_counter() - started, 2),
                    "peak_rss_mb": round(status_kb(proc.pid, "VmHWM") / 1024, 1),
                    "peak_tree_rss_mb": round(tree.peak_mb(), 1),
                    **({"error": error} if error else {}),
                }
            )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows
