"""`conversion` (not in the default set): `pneumo convert` of the reference Keras model with
every variant, whole process, then model-only int8 / int8-full vs fp32 onnxruntime images/s at
batch 32 on the freshly converted files, runs interleaved so that noise hits all alike."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.environment import KERAS_MODEL, SAMPLES_DIR
from benchmarks.suites import NO_KERAS, Context, Skip, has
from benchmarks.suites.model import inputs
from benchmarks.timing import ratio, run_process
from pneumo_onnx.engine.repository.manifest import read_manifest
from pneumo_onnx.engine.repository.variants import VARIANT_FILES
from pneumo_onnx.engine.runtime.session import create_session, session_options

BATCH = 32
KINDS = ("fp32", "int8", "int8-full")


def time_conversion(ctx: Context) -> tuple[dict[str, Any], Path]:
    repo = ctx.workdir / "converted"
    argv = [
        sys.executable,
        "-m",
        "pneumo_onnx.engine.cli",
        "convert",
        str(KERAS_MODEL),
        "-o",
        str(repo),
    ]
    if ctx.folder.resolve() != SAMPLES_DIR.resolve():  # the samples are always probes
        argv += ["--images", str(ctx.folder)]
    proc = run_process(argv)
    version = repo / "pneumonia" / "1"
    manifest = read_manifest(version)
    assert manifest.parity is not None  # every conversion records it
    return {
        "name": "pneumo-convert",
        "process_seconds": round(proc["wall_seconds"], 2),
        "in_process_seconds": manifest.conversion_seconds,
        "peak_rss_mb": proc["peak_rss_mb"],
        "variants": sorted(manifest.files),
        "probe_images": manifest.parity.probes,
        "target": "< 60 s",
    }, version


def interleaved(ctx: Context, version: Path, kinds: list[str]) -> list[dict[str, Any]]:
    x = inputs(ctx.images, BATCH)
    opts = session_options(ctx.threads, spinning=True)
    sessions = {k: create_session(version / VARIANT_FILES[k], options=opts) for k in kinds}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for s in sessions.values():  # warm-up, excluded
        for _ in range(ctx.warmup):
            s.run(None, {"image": x})
    for _ in range(ctx.repeats):
        for kind, s in sessions.items():
            start = time.perf_counter()
            for _ in range(5):
                s.run(None, {"image": x})
            times[kind].append((time.perf_counter() - start) / 5)
    rows = []
    for kind in kinds:
        median = statistics.median(times[kind])
        rows.append(
            {
                "name": f"ort-{kind}-converted",
                "batch": BATCH,
                "images_per_second": round(BATCH / median, 1),
                "images_per_second_best": round(BATCH / min(times[kind]), 1),
            }
        )
    base = rows[0]
    for row in rows:
        row["ratio_to_baseline"] = ratio(row["images_per_second"], base["images_per_second"])
        row["ratio_to_baseline_best"] = ratio(
            row["images_per_second_best"], base["images_per_second_best"]
        )
    return rows


def run(ctx: Context) -> dict[str, Any]:
    if not has("tensorflow") or not has("tf2onnx"):
        raise Skip(NO_KERAS)
    conversion, version = time_conversion(ctx)
    # The default --variants all leaves out a variant that misses its gate: time what was kept.
    kinds = [k for k in KINDS if VARIANT_FILES[k] in conversion["variants"]]
    skipped = [
        {"name": f"ort-{k}-converted", "reason": "missed its gate at conversion (manifest.json)"}
        for k in KINDS
        if k not in kinds
    ]
    return {
        "baseline": "ort-fp32-converted",
        "conversion": conversion,
        "rows": interleaved(ctx, version, kinds),
        "skipped": skipped,
        "targets": {"int8-full over fp32, batch 32": ">= 1.5x", "conversion": "< 60 s"},
    }
