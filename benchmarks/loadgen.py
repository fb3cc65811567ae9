"""A bounded loopback load generator for the `serve` suite, run in its own process so that it
never shares a GIL or cores' worth of Python with the server it measures.

    python -m benchmarks.loadgen http://127.0.0.1:PORT IMAGES_DIR [--requests 400]
        [--concurrency 16] [--warmup 8] [--pid SERVER_PID] [--route seed|v2|list] [--scores]

Each of `concurrency` threads keeps one HTTP/1.1 connection and POSTs full-resolution JPEGs
until `requests` have been sent in all, in the shape `--route` names (benchmarks.routes:
the seed API's multipart field `image`, or a KServe V2 BYTES tensor). Every
request is a different file: the JPEG with the request's number appended after its end marker
(decoders ignore it), so no server can answer from a result cache. Prints one
JSON line: requests/s, latency p50/p95/p99, errors (non-200 answers, bad JSON, broken
connections) with a few examples, the server's peak RSS (VmHWM of the process and its
children, read from /proc after the run) and the CPU time its processes spent per request;
with `--scores`, the score each image got, for checking the answers.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.memory import tree_cpu_seconds
from benchmarks.routes import ROUTES, Route
from pneumo_onnx.engine.offline.timing import summary_ms

SERIAL = itertools.count()  # across warm-up and run: no two requests carry the same bytes


def unique(data: bytes, i: int, salt: bytes = b"") -> bytes:
    """The image with `salt` and `i` after its end: other bytes (and sha256), the same pixels.
    A salt per process keeps two load runs against one server (another concurrency, another
    route) from sending the same bytes, which a result cache would answer."""
    return data + b"pneumo-loadgen-%s%d" % (salt, i)


class Client:
    """One keep-alive connection; reconnects after a broken one (counted as an error)."""

    def __init__(self, host: str, port: int, route: Route) -> None:
        self.host, self.port, self.route = host, port, route
        self.conn = http.client.HTTPConnection(host, port, timeout=120)

    def post(self, name: str, data: bytes) -> float | str:
        """The image's score on success, else what went wrong (a string)."""
        path, body, headers = self.route.build(name, data)
        try:
            self.conn.request("POST", path, body=body, headers=headers)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            return f"{type(e).__name__}: {e}"
        if resp.status != 200:
            return f"HTTP {resp.status}: {payload[:200]!r}"
        return self.route.score(payload)


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


def run(
    url: str,
    files: list[tuple[str, bytes]],
    requests: int,
    concurrency: int,
    route: Route = ROUTES["seed"],
    salt: bytes = b"",
) -> dict:
    """One bounded run; `scores` holds the last score each file (by name) got."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    scores: dict[str, float] = {}

    def worker() -> None:
        client = Client(host, port, route)
        while (i := next(counter)) < requests:
            name, data = files[i % len(files)]
            start = time.perf_counter()
            answer = client.post(name, unique(data, next(SERIAL), salt))
            elapsed = time.perf_counter() - start
            with lock:
                if isinstance(answer, str):
                    errors.append(answer)
                else:
                    latencies.append(elapsed)
                    scores[name] = answer
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
        "scores": scores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("images", type=Path)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--pid", type=int, default=None, help="server process, for its peak RSS")
    parser.add_argument("--route", choices=sorted(ROUTES), default="seed", help="request shape")
    parser.add_argument("--scores", action="store_true", help="report each image's score")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    from pneumo_onnx.engine.runtime.listing import list_images

    files = [p for p in list_images(args.images) if p.suffix.lower() in (".jpg", ".jpeg")]
    if not files:
        parser.error(f"no JPEG images in {args.images}")
    # keyed by the path under the folder: the two classes' folders may share file names
    images = [(p.relative_to(args.images).as_posix(), p.read_bytes()) for p in files]
    route, salt = ROUTES[args.route], os.urandom(6).hex().encode() + b"-"
    if args.warmup > 0:  # excluded from the figures
        run(args.url, images, args.warmup, min(args.concurrency, args.warmup), route, salt)
    cpu = tree_cpu_seconds(args.pid) if args.pid else 0.0
    report = run(args.url, images, args.requests, args.concurrency, route, salt)
    if not args.scores:
        del report["scores"]
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
