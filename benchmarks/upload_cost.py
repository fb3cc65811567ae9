"""What one `POST /predict` costs the server's own process, by how the image is sent: as a
multipart form (the seed's way) or as the request body with its Content-Type (no multipart
to parse). The server process does the HTTP, parsing, routing, batching and the model run;
decoding happens in its decode workers, counted apart. Both ways alternate in blocks against
one server, so drift on a shared machine falls on both.

    python -m benchmarks.upload_cost [--images DIR] [--requests 300] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.loadgen import unique
from benchmarks.memory import cpu_seconds, descendants
from benchmarks.routes import multipart

SHARED_FULLRES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fullres"


def send(port: int, bodies: list[tuple[bytes, str]], concurrency: int) -> int:
    """POST every body (with its Content-Type) from `concurrency` threads: the errors."""
    todo = list(reversed(bodies))
    lock, errors = threading.Lock(), [0]

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if not todo:
                    break
                body, kind = todo.pop()
            conn.request("POST", "/predict", body, {"Content-Type": kind})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                with lock:
                    errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=SHARED_FULLRES)
    p.add_argument("--requests", type=int, default=300, help="per way and round")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    files = sorted(args.images.rglob("*.jpeg"))[:200]
    if not files:
        sys.exit(f"no .jpeg under {args.images}")
    port = _free_port()
    with tempfile.TemporaryDirectory() as state:
        server = subprocess.Popen(
            [sys.executable, "-m", "pneumo_onnx.engine.cli", "serve", "--port", str(port),
             "--state-dir", state, "--cache-size", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait(port)
            rows: dict[str, list[dict[str, float]]] = {"multipart": [], "raw": []}
            n = 0
            for r in range(args.rounds):
                for way in ("multipart", "raw") if r % 2 == 0 else ("raw", "multipart"):
                    bodies = []
                    for i in range(args.requests):
                        data = unique(files[i % len(files)].read_bytes(), n)
                        n += 1
                        if way == "raw":
                            bodies.append((data, "image/jpeg"))
                        else:
                            body, boundary = multipart("x.jpeg", data)
                            bodies.append((body, f"multipart/form-data; boundary={boundary}"))
                    workers = descendants(server.pid)
                    own, decode = cpu_seconds([server.pid]), cpu_seconds(workers)
                    started = time.perf_counter()
                    errors = send(port, bodies, args.concurrency)
                    seconds = time.perf_counter() - started
                    rows[way].append({
                        "server_cpu_ms": 1000 * (cpu_seconds([server.pid]) - own) / args.requests,
                        "decode_cpu_ms": 1000 * (cpu_seconds(workers) - decode) / args.requests,
                        "requests_per_second": args.requests / seconds,
                        "errors": errors,
                    })  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
    summary = {
        way: {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
        for way, runs in rows.items()
    }
    multipart_cpu = summary["multipart"]["server_cpu_ms"]  # 0: fewer requests than a tick
    summary["raw_over_multipart_server_cpu"] = (
        round(summary["raw"]["server_cpu_ms"] / multipart_cpu, 3) if multipart_cpu else None
    )
    print(json.dumps({"medians": summary, "rounds": rows}, indent=1))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit("the server did not get ready")


if __name__ == "__main__":
    main()
