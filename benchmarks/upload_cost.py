"""What one `POST /predict` costs `pneumo serve` outside decoding, in CPU, by how the image
is sent: as a multipart form (the seed's way) or as the request body with its Content-Type.

Outside decoding means everything but the work any server must do with the image: the CPU of
the server's whole process tree (its event loop, its threads, its decode workers) per request,
less what decoding and preprocessing the same images costs in one plain process, and less
what the model's run costs there at the server's own mean batch size. Both are measured here,
in each round, between the servers' blocks: a shared machine's load varies over a run, and a
reference taken once would leave that drift in the difference. What is left is HTTP, parsing,
routing, hand-offs between threads and processes, the log and the metrics. With
`--compare-checkout`, another checkout's server (a commit before a change) takes the same load
in the same run, the servers and ways alternating in blocks, so drift on a shared machine falls
on all of them.

    python -m benchmarks.upload_cost [--compare-checkout DIR] [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import unique
from benchmarks.memory import cpu_seconds, descendants
from benchmarks.routes import multipart
from benchmarks.suites import COMPARED
from benchmarks.suites.serve import server

SHARED_FULLRES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fullres"
WAYS = ("multipart", "raw")


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


def batches_scored(port: int) -> tuple[float, float]:
    """(images, batches) the server's model has run so far, from its metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("pneumo_batch_size_sum", "pneumo_batch_size_count"):
            values[name] = float(value)
    return values.get("pneumo_batch_size_sum", 0.0), values.get("pneumo_batch_size_count", 0.0)


def block(port: int, pid: int, bodies: list[tuple[bytes, str]], concurrency: int) -> dict:
    """One block of requests against one server: CPU per request (the server process, its
    decode workers), the model's mean batch size, requests/s, errors."""
    workers = descendants(pid)
    own, decode = cpu_seconds([pid]), cpu_seconds(workers)
    images, batches = batches_scored(port)
    started = time.perf_counter()
    errors = send(port, bodies, concurrency)
    seconds = time.perf_counter() - started
    n = len(bodies)
    images_after, batches_after = batches_scored(port)
    return {
        "server_cpu_ms": 1000 * (cpu_seconds([pid]) - own) / n,
        "workers_cpu_ms": 1000 * (cpu_seconds(workers) - decode) / n,
        "mean_batch": (images_after - images) / max(1.0, batches_after - batches),
        "requests_per_second": n / seconds,
        "errors": errors,
    }


def bodies_for(way: str, files: list[bytes], salt: int, count: int) -> list[tuple[bytes, str]]:
    """`count` uploads of the files in turn from the first (each block the same mix: the
    reference costs are the mean over all files), each made unique (no cache answers), sent
    `way`."""
    out = []
    for i in range(count):
        data = unique(files[i % len(files)], salt + i)
        if way == "raw":
            out.append((data, "image/jpeg"))
        else:
            body, boundary = multipart("x.jpeg", data)
            out.append((body, f"multipart/form-data; boundary={boundary}"))
    return out


class Reference:
    """In this process, what the work any server must do costs: decoding and preprocessing
    (the server's own pipeline) and the model's run at batch sizes 1 to 8, CPU-ms per image.
    Measured again in each round (`measure`), between the servers' blocks, so that it sees the
    machine they see (a shared machine's load varies over a run)."""

    def __init__(self, files: list[bytes]) -> None:
        from pneumo_onnx.engine.runtime.decoders import inspect
        from pneumo_onnx.engine.runtime.engine import Engine
        from pneumo_onnx.engine.runtime.preprocess import RESIZERS, finish

        self.files = files
        self.engine = engine = Engine.load()
        resized = RESIZERS[engine.preprocessing]

        def decode(data: bytes) -> np.ndarray:
            return finish(resized(inspect(data, "x"), engine.contract), engine.contract)

        self.decode = decode
        tensors = [decode(d) for d in files]
        self.stacks = {
            size: [np.stack(tensors[i : i + size]) for i in range(0, len(tensors), size)]
            for size in range(1, 9)
        }
        for stacks in self.stacks.values():
            engine.scores(stacks[0])

    def measure(self) -> tuple[float, dict[int, float]]:
        """(decode, {batch size: model}) CPU-ms per image, each the median of three passes."""
        n = len(self.files)
        decode_ms = _median_ms(lambda: [self.decode(d) for d in self.files], n)
        model_ms = {
            size: _median_ms(functools.partial(_score_all, self.engine, stacks), n)
            for size, stacks in self.stacks.items()
        }
        return decode_ms, model_ms


def _score_all(engine: Any, stacks: list[np.ndarray]) -> None:
    for x in stacks:
        engine.scores(x)


def _median_ms(work: Callable[[], object], images: int, passes: int = 3) -> float:
    times = []
    for _ in range(passes):
        before = _own_cpu()
        work()
        times.append(1000 * (_own_cpu() - before) / images)
    return _median(times)


def _median(values: list[float]) -> float:
    """The middle value (the upper one of an even count): a measured value, not an average."""
    return sorted(values)[len(values) // 2]


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def outside(row: dict[str, float], decode_ms: float, model_ms: dict[int, float]) -> float:
    """A block's CPU-ms per request less decoding and the model at its mean batch size
    (interpolated between the whole sizes measured)."""
    b = min(8.0, max(1.0, row["mean_batch"]))
    low = int(b)
    high = min(8, low + 1)
    model = model_ms[low] + (model_ms[high] - model_ms[low]) * (b - low)
    return row["server_cpu_ms"] + row["workers_cpu_ms"] - decode_ms - model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=SHARED_FULLRES)
    p.add_argument(
        "--requests",
        type=int,
        default=400,
        help="per server, way and round (a multiple of the images' count: each block the same mix)",
    )
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compare-checkout", type=Path, default=None, metavar="DIR")
    args = p.parse_args()
    paths = sorted(args.images.rglob("*.jpeg"))[:200]
    if not paths:
        sys.exit(f"no .jpeg under {args.images}")
    files = [f.read_bytes() for f in paths]
    reference = Reference(files)
    references = []
    targets: list[tuple[str, Path | None]] = [("pneumo", None)]
    if args.compare_checkout is not None:
        targets.append((f"pneumo@{COMPARED}", args.compare_checkout.resolve()))
    rows: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        running = []
        for name, checkout in targets:
            workdir = Path(tmp) / name.replace("@", "-")
            workdir.mkdir()
            running.append(stack.enter_context(server("pneumo", workdir, checkout)))
        n = 0
        blocks = [(t, way) for t in range(len(targets)) for way in WAYS]
        for r in range(args.rounds):
            decode_ms, model_ms = reference.measure()
            references.append({"decode_cpu_ms": decode_ms, "model_cpu_ms_by_batch": model_ms})
            for t, way in blocks if r % 2 == 0 else blocks[::-1]:
                proc, port, _ = running[t]
                bodies = bodies_for(way, files, n, args.requests)
                n += args.requests
                row = block(port, proc.pid, bodies, args.concurrency)
                row["outside_decoding_cpu_ms"] = outside(row, decode_ms, model_ms)
                rows.setdefault(f"{targets[t][0]} {way}", []).append(row)
    medians = {
        key: {k: round(_median([r[k] for r in runs]), 3) for k in runs[0]}
        for key, runs in rows.items()
    }
    reference.engine.close()
    summary: dict[str, Any] = {
        "decode_cpu_ms_per_image": round(_median([r["decode_cpu_ms"] for r in references]), 3),
        "model_cpu_ms_per_image_by_batch": {
            size: round(_median([r["model_cpu_ms_by_batch"][size] for r in references]), 3)
            for size in range(1, 9)
        },
        "medians": medians,
    }
    before = f"pneumo@{COMPARED}"
    if f"{before} multipart" in medians:
        base = medians[f"{before} multipart"]["outside_decoding_cpu_ms"]
        summary["outside_decoding_over_before_multipart"] = {
            key: round(row["outside_decoding_cpu_ms"] / base, 3)
            for key, row in medians.items()
            if not key.startswith(before)
        }
        # The same ratio within each round (its blocks run back to back, on the machine as it
        # was then), the median over rounds: drift between rounds falls out of it.
        bases = [r["outside_decoding_cpu_ms"] for r in rows[f"{before} multipart"]]
        summary["outside_decoding_over_before_multipart_per_round"] = {
            key: round(
                _median(
                    [r["outside_decoding_cpu_ms"] / b for r, b in zip(runs, bases, strict=True)]
                ),
                3,
            )
            for key, runs in rows.items()
            if not key.startswith(before)
        }
    print(json.dumps({"summary": summary, "rounds": rows, "references": references}, indent=1))


if __name__ == "__main__":
    main()
