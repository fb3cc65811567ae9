"""`serve`: the same bounded load (fixed request count and concurrency, full-resolution JPEG
uploads, benchmarks.loadgen in its own process) against `pneumo serve` and against the
seed-style Flask + Keras server (benchmarks.seed_server, Flask's threaded dev server), each
started here on a free loopback port and stopped after its run. Baseline: Flask + Keras.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.memory import descendants
from benchmarks.suites import (
    COMPARED,
    NO_KERAS,
    Context,
    checkout_env,
    has,
    loadgen_argv,
    pneumo_argv,
)
from benchmarks.timing import ProcessFailed, json_from_stdout, ratio, run_process

BASELINE = "flask-keras"
# `pneumo serve` in each of its shapes on one machine: one process, two worker processes, two
# Ray Serve replicas on a local Ray (the 'ray' extra).
PNEUMO_SHAPES: dict[str, tuple[str, ...]] = {
    "pneumo": (),
    "pneumo-workers2": ("--workers", "2"),
    "pneumo-ray2": ("--ray", "--replicas", "2"),
}
# Ray's proxy answers once one replica is up; every replica is once the CLI logs this.
ALL_REPLICAS_UP = b"serving on Ray"
READY_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pneumo_serve_missing() -> str | None:
    """Why `pneumo serve` cannot be benchmarked here, or None if the command exists."""
    done = subprocess.run(
        [sys.executable, "-m", "pneumo_onnx.engine.cli", "serve", "--help"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"this pneumo_onnx.engine.cli has no 'serve' command (`pneumo serve --help`: {tail})"
    return None


def server_argv(target: str, port: int, workdir: Path, checkout: Path | None = None) -> list[str]:
    """The command line of each server: `pneumo serve` with its defaults (every upload of the
    load generator is a different file, so its result cache never answers)."""
    if target.startswith("pneumo"):
        return [
            *pneumo_argv(checkout),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(workdir / f"{target}-state"),
            *PNEUMO_SHAPES[target.split("@")[0]],
        ]
    return [sys.executable, "-m", "benchmarks.seed_server", "--port", str(port)]


def wait_ready(proc: subprocess.Popen, port: int, log: Path, health: str = "/health") -> float:
    """Seconds until GET `health` answers 200; raises if the server dies or never gets there."""
    start = time.perf_counter()
    while time.perf_counter() - start < READY_TIMEOUT:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ProcessFailed(f"server exited {proc.returncode} before ready: {tail[0]}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", health)
            if conn.getresponse().status == 200 and (
                "--ray" not in proc.args or ALL_REPLICAS_UP in log.read_bytes()
            ):
                return time.perf_counter() - start
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise ProcessFailed(f"server not ready after {READY_TIMEOUT:.0f} s")


@contextlib.contextmanager
def server(
    target: str, workdir: Path, checkout: Path | None = None
) -> Iterator[tuple[subprocess.Popen, int, float]]:
    port = free_port()
    cwd, env = checkout_env(checkout)
    argv = server_argv(target, port, workdir, checkout)
    with running(argv, port, workdir / f"server-{target}.log", cwd=cwd, env=env) as (proc, ready):
        yield proc, port, ready


@contextlib.contextmanager
def running(
    argv: list[str],
    port: int,
    log: Path,
    health: str = "/health",
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen, float]]:
    """A server process, its output in `log`, until GET `health` answers; stopped (SIGTERM,
    then SIGKILL after 20 s) when the block ends, and so is any process it started that
    outlives it (a framework's own server or workers). Yields it and its seconds to ready."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    children: list[int] = []
    try:
        yield proc, wait_ready(proc, port, log, health)
    finally:
        children = descendants(proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def load(ctx: Context, target: str) -> dict[str, Any]:
    checkout = ctx.compare if target.endswith(f"@{COMPARED}") else None
    with server(target, ctx.workdir, checkout) as (proc, port, ready):
        argv = loadgen_argv(port, ctx.folder, ctx.requests, ctx.concurrency, proc.pid)
        report = json_from_stdout(run_process(argv)["stdout"])
    return {"name": target, "ready_seconds": round(ready, 2), **report}


def run(ctx: Context) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    targets = list(ctx.serve_targets)
    if ctx.compare is not None and "pneumo" in targets:
        targets.insert(targets.index("pneumo") + 1, f"pneumo@{COMPARED}")
    rounds: dict[str, list[dict[str, Any]]] = {}
    for r in range(ctx.rounds):
        order = targets if r % 2 == 0 else targets[::-1]  # alternate, so drift evens out
        for target in order:
            if target in skipped:
                continue
            try:
                rounds.setdefault(target, []).append(_measure(ctx, target))
            except _Skipped as e:
                skipped[target] = str(e)
    for target, measured in rounds.items():
        rows[target] = _median_round(measured)
    base = rows.get(BASELINE, {}).get("requests_per_second")
    for row in rows.values():
        row["ratio_to_baseline"] = ratio(row["requests_per_second"], base)
    if f"pneumo@{COMPARED}" in rows and "pneumo" in rows:
        before = rows[f"pneumo@{COMPARED}"]["requests_per_second"]
        rows["pneumo"]["ratio_to_before"] = ratio(rows["pneumo"]["requests_per_second"], before)
    return {
        "baseline": BASELINE,
        "baseline_server": "Flask threaded development server (app.run, as the seed guide runs it)",
        "requests": ctx.requests,
        "concurrency": ctx.concurrency,
        "rounds": ctx.rounds,
        "compared_checkout": str(ctx.compare) if ctx.compare else None,
        "rows": list(rows.values()),
        "skipped": [{"name": k, "reason": v} for k, v in skipped.items()],
    }


class _Skipped(Exception):
    pass


def _measure(ctx: Context, target: str) -> dict[str, Any]:
    """One run of the load against `target`, or _Skipped with why it cannot run here."""
    if target.startswith("pneumo-ray") and not has("ray"):
        reason = "Ray Serve not installed: pip install 'pneumo-onnx[ray]'"
    elif target.startswith("pneumo"):
        reason = pneumo_serve_missing()
    elif not (has("keras") and has("tensorflow")):
        reason = NO_KERAS
    elif not has("flask"):
        reason = "Flask not installed: pip install 'pneumo-onnx[bench]'"
    else:
        reason = None
    if reason:
        raise _Skipped(reason)
    try:
        return load(ctx, target)
    except ProcessFailed as e:
        raise _Skipped(str(e)) from e


def _median_round(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median requests/s, with every round's requests/s and p99 beside."""
    ordered = sorted(measured, key=lambda m: m["requests_per_second"])
    row = dict(ordered[len(ordered) // 2])
    if len(measured) > 1:
        row["rounds_requests_per_second"] = [m["requests_per_second"] for m in measured]
        row["rounds_p99_ms"] = [(m.get("latency_ms") or {}).get("p99") for m in measured]
        cpu = [m["server_cpu_ms_per_request"] for m in measured if "server_cpu_ms_per_request" in m]
        if cpu:  # steadier than throughput on a shared machine
            row["server_cpu_ms_per_request"] = sorted(cpu)[len(cpu) // 2]
            row["rounds_server_cpu_ms_per_request"] = cpu
    return row
