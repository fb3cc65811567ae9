"""Reports on a prediction log: summary of a time window, and drift between two windows.

Read-only: each report opens its own read-only connection, to a SQLite file (`mode=ro`: it
runs beside a live server thanks to WAL, or on a copy of the file, and never takes the
writer's lock) or to the PostgreSQL database that servers share (a postgresql:// URL).
Everything is aggregated in SQL, the same statements on both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pneumo_onnx.engine.errors import NotFoundError, UsageError
from pneumo_onnx.engine.serve.store.backend import (
    Conn,
    Dialect,
    Target,
    display_name,
    scrub,
)
from pneumo_onnx.engine.serve.store.databases import open_database
from pneumo_onnx.engine.serve.store.record import iso_utc as _iso
from pneumo_onnx.engine.serve.store.schema import check_columns

HISTOGRAM_BINS = 10  # fixed bins on [0, 1]: the same for every report, so reports compare
PSI_EPSILON = 1e-4  # an empty bin's proportion, so that log(p/q) stays finite
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
CLASS_RATE_THRESHOLD = 0.1  # an absolute change in a class's share of predictions
MIN_ROWS = 30  # fewer scored rows than this in a window: no drift verdict


def _open_reader(target: Target) -> Conn:
    db = open_database(target)
    if not db.exists():
        raise NotFoundError(f"no prediction log at {db.name}")
    try:
        conn = db.connect(read_only=True)
        try:
            check_columns(conn, db.name)
        except BaseException:
            conn.close()
            raise
    except db.unreachable as e:
        raise UsageError(f"cannot open prediction log {db.where}: {scrub(target, e)}") from e
    except db.errors as e:  # a file that is not SQLite, say
        raise UsageError(f"{db.name} is not a pneumo prediction log: {scrub(target, e)}") from e
    return conn


# --- reports --------------------------------------------------------------------------------


_EDGES = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1).tolist()
_OK = "(error IS NULL AND score IS NOT NULL)"
_CONFIDENCE = "(CASE WHEN score > threshold THEN score ELSE 1.0 - score END)"
# Latency percentiles come from buckets of 1% relative width (ln(ms) * 100), read in the same
# bounded way as everything else: within 1% of the exact value, whatever the log's size.
LATENCY_BUCKETS_PER_E = 100


@dataclass
class _Window:
    """What a report needs of one time window, aggregated in SQL: one grouped scan (plus one
    for latency), so memory does not grow with the number of rows."""

    start: float
    end: float
    total: int = 0
    scored: int = 0
    errors: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    score_sum: float = 0.0
    score_histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)
    confidence_sum: float = 0.0
    confidence_histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)
    latency: dict[str, float | None] | None = None
    sources: dict[str, int] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)

    def class_counts(self) -> dict[str, int]:
        return dict(sorted(self.classes.items()))


def _bin(d: Dialect, expr: str) -> str:
    """SQL for the histogram bin of `expr` clipped into [0, 1]: floor(10 x), 1.0 in the last."""
    clipped = f"{d.least}({d.greatest}({expr}, 0.0), 1.0)"
    return f"{d.least}({d.integer(f'{clipped} * {HISTOGRAM_BINS}')}, {HISTOGRAM_BINS - 1})"


def _read_window(conn: Conn, start: float, end: float, closed: bool, full: bool = False) -> _Window:
    """Counts, class counts, score and confidence histograms and per-version figures of
    [start, end] (closed) or [start, end); with `full`, also the latency figures."""
    where = f"time >= ? AND time {'<=' if closed else '<'} ?"
    span = (start, end)
    w = _Window(start=start, end=end)
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    d = conn.dialect
    groups = conn.execute(
        f"SELECT model_name, model_version, {_OK} AS ok, label, "
        f"CASE WHEN {_OK} THEN {_bin(d, 'score')} END AS sbin, "
        f"CASE WHEN {_OK} THEN {_bin(d, _CONFIDENCE)} END AS cbin, "
        f"COUNT(*), SUM(CASE WHEN {_OK} THEN score END), "
        f"SUM(CASE WHEN {_OK} THEN {_CONFIDENCE} END), MIN(time) "
        f"FROM predictions WHERE {where} "
        "GROUP BY model_name, model_version, ok, label, sbin, cbin ORDER BY MIN(time)",
        span,
    )
    for name, version, ok, label, sbin, cbin, n, score_sum, confidence_sum, _ in groups:
        v = versions.setdefault(
            (name, version),
            {"model_name": name, "model_version": version, "total": 0, "errors": 0, "_s": 0.0},
        )
        v["total"] += n
        w.total += n
        if not ok:
            v["errors"] += n
            w.errors += n
            continue
        w.scored += n
        w.classes[str(label)] = w.classes.get(str(label), 0) + n
        w.score_histogram[sbin] += n
        w.confidence_histogram[cbin] += n
        w.score_sum += score_sum
        w.confidence_sum += confidence_sum
        v["_s"] += score_sum
    for v in versions.values():
        total = v.pop("_s")
        scored = v["total"] - v["errors"]
        w.versions.append({**v, "mean_score": total / scored if scored else None})
    if full:
        source = _source(conn)
        w.latency = _latency(conn, f"{where} AND {source} = 'interactive'", span)
        w.sources = dict(
            conn.execute(
                f"SELECT {source}, COUNT(*) FROM predictions WHERE {where} GROUP BY 1 ORDER BY 1",
                span,
            ).fetchall()
        )
    return w


def _source(conn: Conn) -> str:
    """SQL for a row's source: a log written before the column existed (read by a report,
    never migrated) holds only requests."""
    return "source" if "source" in conn.columns("predictions") else "'interactive'"


def _latency(conn: Conn, where: str, span: tuple) -> dict[str, float | None]:
    """Mean, p50/p95/p99 (numpy's linear interpolation between ranks, read from 1%-wide
    buckets) and max of the window's latencies."""
    d = conn.dialect
    bucket = d.integer(f"{d.ln}({d.greatest}(latency_ms, 0.001)) * {LATENCY_BUCKETS_PER_E}")
    buckets = conn.execute(
        f"SELECT {bucket} AS b, COUNT(*), MIN(latency_ms), MAX(latency_ms), SUM(latency_ms) "
        f"FROM predictions WHERE {where} GROUP BY b ORDER BY b",
        span,
    ).fetchall()
    n = sum(b[1] for b in buckets)
    if not n:
        return {"mean": None, "p50": None, "p95": None, "p99": None, "max": None}

    def at(rank: int) -> float:  # the rank-th smallest latency, within its bucket's width
        seen = 0
        for _, count, low, high, _ in buckets:
            if rank < seen + count:
                return low if count == 1 else low + (high - low) * (rank - seen) / (count - 1)
            seen += count
        return float(buckets[-1][3])

    out: dict[str, float | None] = {"mean": sum(b[4] for b in buckets) / n}
    for q in (50, 95, 99):
        r = q / 100 * (n - 1)
        lo = int(np.floor(r))
        out[f"p{q}"] = at(lo) + (at(min(lo + 1, n - 1)) - at(lo)) * (r - lo)
    out["max"] = float(buckets[-1][3])
    return out


def histogram(values: np.ndarray | Sequence[float]) -> list[int]:
    """Counts in HISTOGRAM_BINS equal bins on [0, 1] (values outside are clipped into it)."""
    counts, _ = np.histogram(
        np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0),
        bins=HISTOGRAM_BINS,
        range=(0.0, 1.0),
    )
    return [int(c) for c in counts]


def psi(reference: np.ndarray | Sequence[float], recent: np.ndarray | Sequence[float]) -> float:
    """Population stability index of `recent` scores against `reference` scores.

    sum((p - q) * ln(p / q)) over HISTOGRAM_BINS bins on [0, 1], where p and q are the
    proportions of each sample in a bin, an empty bin counting as PSI_EPSILON.
    """
    return psi_from_counts(histogram(reference), histogram(recent))


def psi_from_counts(reference: Sequence[int], recent: Sequence[int]) -> float:
    q = _proportions(reference)
    p = _proportions(recent)
    return float(np.sum((p - q) * np.log(p / q)))


def _proportions(counts: Sequence[int]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    if c.sum() <= 0:
        raise UsageError("PSI needs at least one score in each window")
    return np.maximum(c / c.sum(), PSI_EPSILON)


def psi_level(value: float) -> str:
    """stable below 0.1, moderate up to 0.25, significant above (the usual PSI reading)."""
    if value < PSI_MODERATE:
        return "stable"
    return "moderate" if value <= PSI_SIGNIFICANT else "significant"


def summarize(path: Target, hours: float = 24.0, now: float | None = None) -> dict[str, Any]:
    """What the log holds for the last `hours`: counts (`by_source`: interactive requests and
    batch jobs), class rates, score and confidence distributions, latency percentiles of
    interactive requests (a job's images are timed a chunk at a time), and per model version."""
    if not hours > 0:
        raise UsageError(f"hours must be positive, got {hours}")
    end = time.time() if now is None else now
    start = end - hours * 3600.0
    with closing(_open_reader(path)) as conn:
        w = _read_window(conn, start, end, closed=True, full=True)
    scored = w.scored
    return {
        "db": display_name(path),  # never the server's path, nor a URL's password
        "window": {"hours": hours, "start": _iso(start), "end": _iso(end)},
        "total": w.total,
        "scored": scored,
        "errors": w.errors,
        "per_hour": w.total / hours,
        "classes": {k: {"count": n, "rate": n / scored} for k, n in w.class_counts().items()},
        "score": _distribution(w.score_sum, w.score_histogram, scored),
        "confidence": _distribution(w.confidence_sum, w.confidence_histogram, scored),
        "by_source": {k: w.sources.get(k, 0) for k in ("interactive", "job")},
        "latency_ms": w.latency,  # interactive requests only
        "by_model_version": w.versions,
    }


def drift_report(
    path: Target,
    *,
    recent_hours: float = 24.0,
    reference_hours: float = 168.0,
    reference: tuple[float, float] | None = None,
    now: float | None = None,
    min_rows: int = MIN_ROWS,
    class_rate_threshold: float = CLASS_RATE_THRESHOLD,
) -> dict[str, Any]:
    """Recent predictions against a reference window: class-rate change and score PSI.

    The recent window is the last `recent_hours`; the reference window is
    [now - reference_hours, start of the recent window) unless `reference` gives its
    (start, end) in unix seconds. `status`: insufficient_data (a window has fewer than
    `min_rows` scored rows), stable, moderate (PSI 0.1-0.25) or significant (PSI above 0.25,
    or a class's rate moved by more than `class_rate_threshold`).
    """
    end = time.time() if now is None else now
    if not recent_hours > 0:
        raise UsageError(f"recent hours must be positive, got {recent_hours}")
    recent_start = end - recent_hours * 3600.0
    if reference is None:
        if not reference_hours > recent_hours:
            raise UsageError(
                f"reference hours ({reference_hours:g}) must exceed recent hours "
                f"({recent_hours:g}): the reference window is the time before the recent one"
            )
        reference = (end - reference_hours * 3600.0, recent_start)
    if not reference[0] < reference[1]:
        raise UsageError(f"reference window must have start < end, got {reference}")
    with closing(_open_reader(path)) as conn:
        recent = _read_window(conn, recent_start, end, closed=True)
        ref = _read_window(conn, reference[0], reference[1], closed=False)
    report: dict[str, Any] = {
        "db": display_name(path),  # never the server's path, nor a URL's password
        "status": "insufficient_data",
        "drift_detected": False,
        "recent": _window_info(recent),
        "reference": _window_info(ref),
        "psi": None,
        "psi_level": None,
        "class_rates": {},
        "max_class_rate_change": None,
        "thresholds": {
            "psi_moderate": PSI_MODERATE,
            "psi_significant": PSI_SIGNIFICANT,
            "class_rate_change": class_rate_threshold,
            "min_rows": min_rows,
        },
        "messages": [],
    }
    short = [
        f"the {name} window has {w.scored} scored predictions, fewer than {min_rows}"
        for name, w in (("recent", recent), ("reference", ref))
        if w.scored < min_rows
    ]
    if short:
        report["messages"] = [*short, "no drift verdict: too few predictions to compare"]
        return report
    value = psi_from_counts(
        report["reference"]["score_histogram"], report["recent"]["score_histogram"]
    )
    level = psi_level(value)
    r_rates, q_rates = report["recent"]["class_rates"], report["reference"]["class_rates"]
    rates = {
        label: {
            "recent": r_rates.get(label, 0.0),
            "reference": q_rates.get(label, 0.0),
            "change": r_rates.get(label, 0.0) - q_rates.get(label, 0.0),
        }
        for label in sorted(set(r_rates) | set(q_rates))
    }
    biggest = max(abs(r["change"]) for r in rates.values())
    messages = [f"score PSI {value:.4f}: {level}"]
    shifted = [k for k, r in rates.items() if abs(r["change"]) > class_rate_threshold]
    for label in shifted:
        r = rates[label]
        messages.append(
            f"{label} rate {r['reference']:.3f} -> {r['recent']:.3f} "
            f"(change {r['change']:+.3f}, above {class_rate_threshold:g})"
        )
    status = "significant" if level == "significant" or shifted else level
    report.update(
        status=status,
        drift_detected=status == "significant",
        psi=value,
        psi_level=level,
        class_rates=rates,
        max_class_rate_change=biggest,
        messages=messages,
    )
    return report


def _window_info(w: _Window) -> dict[str, Any]:
    n = w.scored
    return {
        "start": _iso(w.start),
        "end": _iso(w.end),
        "rows": w.total,
        "scored": n,
        "class_rates": {k: c / n for k, c in w.class_counts().items()},
        "score_histogram": w.score_histogram,
        "mean_score": w.score_sum / n if n else None,
    }


def _distribution(total: float, counts: list[int], n: int) -> dict[str, Any]:
    return {
        "mean": total / n if n else None,
        "histogram": {"edges": [round(float(e), 6) for e in _EDGES], "counts": counts},
    }
