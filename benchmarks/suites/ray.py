"""`ray` (not in the default set): `pneumo batch` on this machine, plain vs `--ray` (a local
Ray instance started by the command), whole process, repeats interleaved. Baseline: plain."""

from __future__ import annotations

import statistics
import sys
from typing import Any

from benchmarks.suites import Context, Skip, has
from benchmarks.timing import ratio, run_process

BASELINE = "pneumo-batch"


def run(ctx: Context) -> dict[str, Any]:
    if not has("ray"):
        raise Skip("Ray not installed: pip install 'pneumo-onnx[ray]'")
    n = len(ctx.images)
    pneumo = [
        sys.executable,
        "-m",
        "pneumo_onnx.engine.cli",
        "batch",
        str(ctx.folder),
        "--recursive",
    ]
    times: dict[str, list[float]] = {BASELINE: [], "pneumo-batch-ray": []}
    rss: dict[str, float] = {}
    for i in range(ctx.repeats):  # interleaved, so that noise hits both alike
        for name, extra in ((BASELINE, [f"r{i}.csv"]), ("pneumo-batch-ray", [f"r{i}.parquet"])):
            argv = [*pneumo, "-o", str(ctx.workdir / extra[0])]
            proc = run_process(argv + (["--ray"] if name.endswith("ray") else []), ok=(0, 1))
            times[name].append(proc["wall_seconds"])
            rss[name] = max(rss.get(name, 0.0), proc["peak_rss_mb"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(
            {
                "name": name,
                "images": n,
                "cold_seconds": round(median, 2),
                "cold_seconds_min": round(min(values), 2),
                "cold_images_per_second": round(n / median, 1),
                "peak_rss_mb": rss[name],
            }
        )
    for row in rows:  # a ratio of times: bigger is faster
        row["ratio_to_baseline"] = ratio(rows[0]["cold_seconds"], row["cold_seconds"])
    return {"baseline": BASELINE, "rows": rows, "skipped": []}
