"""`limits`: the memory of `pneumo serve`, with its shipped limits, under the largest single
requests those limits allow (and a few they refuse): one server, one request at a time, the
server's peak RSS (VmHWM, reset before each request) per row. The target: every row under
1 GB. No baseline: the seed-style server has no such limits to measure against."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.payloads import deflated_dicom_bomb, png, rle_dicom
from benchmarks.suites import Context, Skip, has
from benchmarks.suites.serve import free_port, pneumo_serve_missing, wait_ready
from benchmarks.timing import ProcessFailed

TARGET_MB = 1024


def requests() -> list[tuple[str, Callable[[str], httpx.Response]]]:
    """(what, send(base url)) for each request, built lazily: some take a second to build."""

    def predict(make: Callable[[], bytes], name: str, query: str = "") -> Callable:
        return lambda url: httpx.post(
            f"{url}/predict{query}", files={"image": (name, make())}, timeout=600
        )

    def infer(body: Callable[[], bytes]) -> Callable:
        return lambda url: httpx.post(
            f"{url}/v2/models/pneumonia/infer", content=body(), timeout=600
        )

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

    return [
        ("80 Mpx 8-bit RGB PNG, /predict", predict(rgb, "a.png")),
        ("79 Mpx 16-bit RLE DICOM, /predict", predict(lambda: rle_dicom(8900), "a.dcm")),
        ("19.6 Mpx 16-bit PNG, /predict", predict(lambda: png("I;16", 4420, 1000), "b.png")),
        ("30 Mpx RGBA PNG, /predict", predict(lambda: png("RGBA", 5470, (1, 2, 3, 200)), "c.png")),
        ("80 Mpx RGB PNG, /predict?heatmap=true",
         predict(lambda: rgb(b"h"), "h.png", "?heatmap=true")),
        ("2 x 80 Mpx RGB PNG in one V2 BYTES request", infer(two_rgb)),
        ("14 MB V2 FP32 JSON (50 tensors)", infer(fp32_json)),
        ("Deflated DICOM, 1 GB inflated (refused)",
         predict(lambda: deflated_dicom_bomb(1024), "d.dcm")),
        ("80 Mpx RGBA PNG (refused from its header)",
         predict(lambda: png("RGBA", 8944, (1, 2, 3, 4)), "e.png")),
    ]  # fmt: skip


def vmhwm_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024


def run(ctx: Context) -> dict[str, Any]:
    reason = pneumo_serve_missing()
    if reason:
        raise Skip(reason)
    if not has("pydicom"):
        raise Skip("pydicom not installed: pip install 'pneumo-onnx[dicom]'")
    if not Path("/proc/self/clear_refs").exists():
        raise Skip("needs Linux /proc to reset and read the server's peak RSS")
    port = free_port()
    log = ctx.workdir / "server-limits.log"
    argv = [sys.executable, "-m", "engine.cli", "serve", "--port", str(port),
            "--state-dir", str(ctx.workdir / "limits-state")]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    rows = []
    try:
        wait_ready(proc, port, log)
        url = f"http://127.0.0.1:{port}"
        rows.append(
            {"name": "idle, after start-up", "status": 200, "peak_rss_mb": vmhwm_mb(proc.pid)}
        )
        for name, send in requests():
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            try:
                status = send(url).status_code
            except httpx.HTTPError as e:
                raise ProcessFailed(f"{name}: {type(e).__name__}: {e}") from e
            rows.append(
                {"name": name, "status": status, "peak_rss_mb": round(vmhwm_mb(proc.pid), 1)}
            )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    worst = max(r["peak_rss_mb"] for r in rows)
    return {"target_mb": TARGET_MB, "worst_peak_rss_mb": worst, "rows": rows, "skipped": []}
