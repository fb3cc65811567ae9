"""Timing for the suites: calls through the engine's own timing (`engine.offline.timing`, as
`pneumo bench`: warm-up excluded, min/median/percentiles), whole processes with their peak
RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.offline.timing import throughput_row, timed_calls


def measure(fn: Callable[[], object], batch: int, warmup: int, repeats: int) -> dict[str, Any]:
    """A throughput row for `fn` running one batch: each repeat covers at least 32 images
    (a fixed count of calls, where `pneumo bench` gives each figure a time box)."""
    return throughput_row(timed_calls(fn, 0, warmup, repeats * max(1, 32 // batch)), batch)


def ratio(value: float | None, baseline: float | None) -> float | None:
    return round(value / baseline, 2) if value and baseline else None


# Runs the command as a child of a small wrapper: a child forked from this (large) harness
# process would report the harness's pages in its peak RSS.
_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
    "wall = time.perf_counter() - start\n"
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "sys.stdout.write(json.dumps([wall, rss, p.returncode, p.stdout, p.stderr[-3000:]]))\n"
)


class ProcessFailed(RuntimeError):
    """A benchmarked process exited with an unexpected code; carries its stderr tail."""


def run_process(
    argv: list[str], cwd: Path | None = None, ok: tuple[int, ...] = (0,), timeout: float = 1800
) -> dict[str, Any]:
    """Run one command as its own process: wall seconds, peak RSS (MB), stdout, start time.

    `started` is the wall clock just before the wrapper spawns it, so a child that prints
    `time.time()` at some point can be timed from process start to that point.
    """
    started = time.time()
    raw = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
        timeout=timeout,
    ).stdout
    wall, rss_kb, code, stdout, stderr = json.loads(raw)
    if code not in ok:
        tail = stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        raise ProcessFailed(f"{' '.join(map(str, argv[:4]))} exited {code}: {tail[0]}")
    return {
        "wall_seconds": wall,
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "stdout": stdout,
        "started": started,
    }


def json_from_stdout(stdout: str) -> dict[str, Any]:
    """The last line of a worker's stdout, which is its JSON report."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        raise ProcessFailed("the worker printed no report")
    return dict(json.loads(lines[-1]))
