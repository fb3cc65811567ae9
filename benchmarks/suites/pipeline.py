"""`pipeline`: end-to-end scoring of a folder of real X-rays, decode to score, each pipeline in
its own process (benchmarks.pipelines), plus the `pneumo batch` command as a whole process.

Per row: warm images/s (median of the warm passes), per-image latency percentiles (per batch
for the Keras batch pipeline, which has no per-image call), `cold_seconds` from process start
to the first pass done (imports and model load included: what a user waits for) and peak RSS.
The baseline is the seed-style Keras batch pipeline; the ratio to the per-image loop is given
too. Also: how far the fast preprocessing moves the scores from the reference one.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suites import COMPARED, NO_KERAS, Context, checkout_env, has, pneumo_argv
from benchmarks.timing import ProcessFailed, json_from_stdout, ratio, run_process
from pneumo_onnx.engine.offline.timing import summary_ms

BASELINE = "keras-batch"
LOOP = "keras-loop"
ROWS = ("keras-loop", "keras-batch", "engine-reference", "engine-fast")
THRESHOLD = 0.5


def pipeline_row(ctx: Context, mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    argv = [
        sys.executable,
        "-m",
        "benchmarks.pipelines",
        mode,
        str(ctx.folder),
        f"--repeats={ctx.repeats}",
        f"--threads={ctx.threads}",
        f"--device={ctx.device}",
    ]
    proc = run_process(argv)
    report = json_from_stdout(proc["stdout"])
    n = report["images"]
    median = statistics.median(report["pass_seconds"])
    row = {
        "name": mode,
        "images": n,
        "images_per_second": round(n / median, 1),
        "images_per_second_best": round(n / min(report["pass_seconds"]), 1),
        "latency_ms": summary_ms(report["latency_seconds"]),
        "latency_unit": report.get("latency_unit", "one image"),
        "startup_seconds": round(report["ready_at"] - proc["started"], 2),
        "cold_seconds": round(report["cold_done_at"] - proc["started"], 2),
        "peak_rss_mb": proc["peak_rss_mb"],
    }
    if "preprocess_ms_per_image_1_thread" in report:
        row["preprocess_ms_per_image_1_thread"] = report["preprocess_ms_per_image_1_thread"]
    return row, report


def pneumo_batch(ctx: Context, n: int, checkout: Path | None = None) -> dict[str, Any]:
    """The product command, whole process: start, score, write the CSV, exit (`checkout`'s
    code instead of this one's, if given)."""
    name = "pneumo-batch-cli" + (f"@{COMPARED}" if checkout else "")
    out = ctx.workdir / f"{name}.csv"
    argv = [*pneumo_argv(checkout), "batch", str(ctx.folder), "--recursive"]
    argv += ["--device", ctx.device, "-o", str(out), "--overwrite"]
    cwd, env = checkout_env(checkout)
    proc = run_process(argv, ok=(0, 1), cwd=cwd, env=env)
    return {
        "name": name,
        "images": n,
        "cold_seconds": round(proc["wall_seconds"], 2),
        "cold_images_per_second": round(n / proc["wall_seconds"], 1),
        "peak_rss_mb": proc["peak_rss_mb"],
        "peak_tree_rss_mb": proc["peak_tree_rss_mb"],
    }


def pneumo_batches(ctx: Context, n: int) -> list[dict[str, Any]]:
    """`pneumo batch` rows: this checkout's, and the compared one's, `rounds` times each in
    alternation; each row is the median round, every round's seconds beside it."""
    checkouts: list[Path | None] = [None] + ([ctx.compare] if ctx.compare else [])
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(checkouts))}
    for r in range(ctx.rounds):
        order = list(range(len(checkouts)))
        for i in order if r % 2 == 0 else order[::-1]:
            runs[i].append(pneumo_batch(ctx, n, checkouts[i]))
    rows = []
    for measured in runs.values():
        ordered = sorted(measured, key=lambda m: m["cold_seconds"])
        row = dict(ordered[len(ordered) // 2])
        if len(measured) > 1:
            row["rounds_seconds"] = [m["cold_seconds"] for m in measured]
        rows.append(row)
    if len(rows) == 2:
        rows[0]["ratio_to_before"] = ratio(rows[1]["cold_seconds"], rows[0]["cold_seconds"])
    return rows


def fast_vs_reference(fast: list[float], reference: list[float]) -> dict[str, Any]:
    f, r = np.asarray(fast), np.asarray(reference)
    diff = np.abs(f - r)
    away = np.abs(r - THRESHOLD) > 0.02
    return {
        "images": int(r.size),
        "max_score_diff": float(diff.max()),
        "mean_score_diff": float(diff.mean()),
        "label_agreement": float(np.mean((f > THRESHOLD) == (r > THRESHOLD))),
        "images_away_from_threshold": int(away.sum()),
        "label_agreement_away_from_threshold": (
            float(np.mean((f[away] > THRESHOLD) == (r[away] > THRESHOLD))) if away.any() else None
        ),
        "target": "max score diff <= 0.02, 100% label agreement away from the threshold",
    }


def run(ctx: Context) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    reports: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    keras = has("keras") and has("tensorflow")
    for mode in ROWS:
        if mode.startswith("keras") and not keras:
            skipped[mode] = NO_KERAS
            continue
        try:
            rows[mode], reports[mode] = pipeline_row(ctx, mode)
        except ProcessFailed as e:
            skipped[mode] = str(e)
    n = len(ctx.images)
    try:
        for row in pneumo_batches(ctx, n):
            rows[row["name"]] = row
    except ProcessFailed as e:
        skipped["pneumo-batch-cli"] = str(e)
    base, loop = rows.get(BASELINE, {}), rows.get(LOOP, {})
    for row in rows.values():
        row["ratio_to_baseline"] = ratio(
            row.get("images_per_second"), base.get("images_per_second")
        )
        row["ratio_to_keras_loop"] = ratio(
            row.get("images_per_second"), loop.get("images_per_second")
        )
        # Cold: start-up included on both sides, a ratio of times (bigger is faster).
        row["cold_ratio_to_baseline"] = ratio(base.get("cold_seconds"), row.get("cold_seconds"))
        row["cold_ratio_to_keras_loop"] = ratio(loop.get("cold_seconds"), row.get("cold_seconds"))
    out: dict[str, Any] = {
        "baseline": BASELINE,
        "threads": ctx.threads,
        "device": ctx.device,
        "images": n,
        "keras_rows_run_on": "CPU (tensorflow-cpu, as the convert extra installs)",
        "rows": list(rows.values()),
        "skipped": [{"name": k, "reason": v} for k, v in skipped.items()],
    }
    if "engine-fast" in reports and "engine-reference" in reports:
        out["fast_vs_reference"] = fast_vs_reference(
            reports["engine-fast"]["scores"], reports["engine-reference"]["scores"]
        )
    return out
