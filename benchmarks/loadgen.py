"""A bounded loopback load generator for the `serve` suite, run in its own process so that it
never shares a GIL or cores' worth of Python with the server it measures.

    python -m benchmarks.loadgen http://127.0.0.1:PORT IMAGES_DIR [--requests 400]
        [--concurrency 16] [--warmup 8] [--pid SERVER_PID]

Each of `concurrency` threads keeps one HTTP/1.1 connection and POSTs full-resolution JPEGs
(multipart field `image`, as the seed API) until `requests` have been sent in all. Every
request is a different file: the JPEG with the request's number appended after its end marker
(decoders ignore it), so no server can answer from a result cache. Prints one
JSON line: requests/s, latency p50/p95/p99, errors (non-200 answers, bad JSON, broken
connections) with a few examples, the server's peak RSS (VmHWM of the process and its
children, read from /proc after the run) and the CPU time its processes spent per request.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.memory import tree_cpu_seconds
from pneumo_onnx.engine.offline.timing import summary_ms

FIELDS = {"prediction", "confidence", "raw_score", "threshold"}
SERIAL = itertools.count()  # across warm-up and run: no two requests carry the same bytes


def unique(data: bytes, i: int) -> bytes:
    """The image with `i` after its end: other bytes (and sha256), the same pixels."""
    return data + b"pneumo-loadgen-%d" % i


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


class Client:
    """One keep-alive connection; reconnects after a broken one (counted as an error)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=120)

    def post(self, body: bytes, boundary: str) -> str | None:
        """None on success, else what went wrong."""
        try:
            self.conn.request(
                "POST",
                "/predict",
                body=body,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            return f"{type(e).__name__}: {e}"
        if resp.status != 200:
            return f"HTTP {resp.status}: {payload[:200]!r}"
        try:
            fields = set(json.loads(payload))
        except ValueError:
            return f"not JSON: {payload[:200]!r}"
        return None if fields >= FIELDS else f"missing fields: {sorted(FIELDS - fields)}"


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a process and its descendants (MB); shared pages count once per process."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            status = Path(f"/proc/{p}/status").read_text()
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return round(total / 1024, 1) if seen and total else None


def run(url: str, files: list[tuple[str, bytes]], requests: int, concurrency: int) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        client = Client(host, port)
        while (i := next(counter)) < requests:
            name, data = files[i % len(files)]
            body = multipart(name, unique(data, next(SERIAL)))
            start = time.perf_counter()
            problem = client.post(*body)
            elapsed = time.perf_counter() - start
            with lock:
                (errors.append(problem) if problem else latencies.append(elapsed))
        client.conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(wall, 3),
        "requests_per_second": round(len(latencies) / wall, 2),
        "latency_ms": summary_ms(latencies) if latencies else None,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("images", type=Path)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--pid", type=int, default=None, help="server process, for its peak RSS")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    from pneumo_onnx.engine.runtime.listing import list_images

    files = [p for p in list_images(args.images) if p.suffix.lower() in (".jpg", ".jpeg")]
    if not files:
        parser.error(f"no JPEG images in {args.images}")
    images = [(p.name, p.read_bytes()) for p in files]
    if args.warmup > 0:  # excluded from the figures
        run(args.url, images, args.warmup, min(args.concurrency, args.warmup))
    cpu = tree_cpu_seconds(args.pid) if args.pid else 0.0
    report = run(args.url, images, args.requests, args.concurrency)
    if args.pid:  # the server's processes, its decode workers included
        spent = tree_cpu_seconds(args.pid) - cpu
        report["server_cpu_ms_per_request"] = round(1000 * spent / args.requests, 2)
    report["upload_mb_mean"] = round(sum(len(b) for _, b in images) / len(images) / 1e6, 2)
    report["distinct_uploads"] = True
    if args.pid:
        report["server_peak_rss_mb"] = peak_rss_mb(args.pid)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
