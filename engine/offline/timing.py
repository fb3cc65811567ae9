"""How every benchmark figure is timed: warm-up calls excluded, then calls until a time box
and a minimum count are both met; durations summarised as min, median and tail percentiles.

`pneumo bench` time-boxes each measurement (`seconds`); the checkout's harness asks for a fixed
number of calls instead (`seconds=0`, `min_calls`). Both go through `timed_calls`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def timed_calls(
    fn: Callable[[], object], seconds: float, warmup: int = 1, min_calls: int = 1
) -> list[float]:
    """Seconds of each call of `fn`, after `warmup` untimed calls, until at least `seconds`
    have passed and at least `min_calls` calls were made."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(out) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: min, median, p95, p99, max of a list of durations in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "n": int(ms.size),
        "min": round(float(ms.min()), 3),
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p95": round(float(np.percentile(ms, 95)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
        "max": round(float(ms.max()), 3),
    }


def throughput_row(call_seconds: Sequence[float], batch: int) -> dict[str, Any]:
    """Images/s from per-call times of a batch: median (typical) and best (min time)."""
    median = statistics.median(call_seconds)
    return {
        "batch": batch,
        "images_per_second": round(batch / median, 1),
        "images_per_second_best": round(batch / min(call_seconds), 1),
        "latency_ms": summary_ms(call_seconds),
    }
