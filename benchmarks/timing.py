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

from pneumo_onnx.engine.offline.timing import throughput_row, timed_calls


def measure(fn: Callable[[], object], batch: int, warmup: int, repeats: int) -> dict[str, Any]:
    """A throughput row for `fn` running one batch: each repeat covers at least 32 images
    (a fixed count of calls, where `pneumo bench` gives each figure a time box)."""
    return throughput_row(timed_calls(fn, 0, warmup, repeats * max(1, 32 // batch)), batch)


def ratio(value: float | None, baseline: float | None) -> float | None:
    return round(value / baseline, 2) if value and baseline else None


# Runs the command as a child of a small wrapper: a child forked from this (large) harness
# process would report the harness's pages in its peak RSS. The wrapper also adds up the RSS
# of the command's whole process tree (its decode workers too), sampled every 10 ms.
_WRAPPER = """
import json, os, resource, subprocess, sys, threading, time
def tree(pid):
    found, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
def rss_kb(pid):
    try:
        return int(open(f"/proc/{pid}/statm").read().split()[1]) * PAGE_KB
    except OSError:
        return 0
peak = [0]
start = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
def watch():
    while p.poll() is None:
        peak[0] = max(peak[0], sum(rss_kb(q) for q in tree(p.pid)))
        time.sleep(0.01)
threading.Thread(target=watch, daemon=True).start()
out, err = p.communicate()
wall = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stdout.write(json.dumps([wall, rss, max(peak[0], rss), p.returncode, out, err[-3000:]]))
"""


class ProcessFailed(RuntimeError):
    """A benchmarked process exited with an unexpected code; carries its stderr tail."""


def run_process(
    argv: list[str],
    cwd: Path | None = None,
    ok: tuple[int, ...] = (0,),
    timeout: float = 1800,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one command as its own process: wall seconds, peak RSS (MB) of its largest process
    and of its whole tree, stdout, start time.

    `started` is the wall clock just before the wrapper spawns it, so a child that prints
    `time.time()` at some point can be timed from process start to that point.
    """
    started = time.time()
    raw = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=True,
        timeout=timeout,
    ).stdout
    wall, rss_kb, tree_kb, code, stdout, stderr = json.loads(raw)
    if code not in ok:
        tail = stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        raise ProcessFailed(f"{' '.join(map(str, argv[:4]))} exited {code}: {tail[0]}")
    return {
        "wall_seconds": wall,
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "peak_tree_rss_mb": round(tree_kb / 1024, 1),
        "stdout": stdout,
        "started": started,
    }


def json_from_stdout(stdout: str) -> dict[str, Any]:
    """The last line of a worker's stdout, which is its JSON report."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        raise ProcessFailed("the worker printed no report")
    return dict(json.loads(lines[-1]))
