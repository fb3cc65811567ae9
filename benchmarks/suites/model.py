"""`model`: model-only throughput and latency per batch size, on real X-rays preprocessed once.

Rows: Keras `predict` (the baseline: what the seed code calls), a direct Keras call, TFLite
fp32 and dynamic-range (built from the Keras model by the conversion stage into a temp dir),
onnxruntime fp32, int8, int8-full on CPU (and fp32 of model v1, which v2 replaced) and, with
`--device cuda`, fp32 and fp16 on CUDA
with IOBinding; the onnxruntime rows are timed by the engine's own `pneumo bench` code
(engine.offline.measure). Also the FLOP/s achieved by onnxruntime fp32 at batch 32 against the
CPU's peak.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import flops
from benchmarks.environment import KERAS_MODEL, MODEL_DIR, PREVIOUS_MODEL_DIR
from benchmarks.suites import NO_KERAS, Context, has
from benchmarks.timing import ProcessFailed, json_from_stdout, ratio, run_process
from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import PneumoError
from pneumo_onnx.engine.offline.machine import cpu
from pneumo_onnx.engine.offline.measure import model_calls
from pneumo_onnx.engine.offline.timing import throughput_row
from pneumo_onnx.engine.repository.variants import VARIANT_FILES
from pneumo_onnx.engine.runtime.preprocess import reference_batch
from pneumo_onnx.engine.runtime.session import create_session, session_options

BASELINE = "keras-predict"
CPU_VARIANTS = ("fp32", "int8", "int8-full")
CUDA_VARIANTS = ("fp32", "fp16")
TFLITE_FILES = {"tflite-fp32": "model.tflite", "tflite-dynamic": "model.dynamic.tflite"}


def inputs(images: list[Path], n: int) -> np.ndarray:
    """`n` real X-rays through the reference preprocessing, repeated if there are fewer."""
    x = reference_batch(images[:n], Contract())
    return np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])), dtype=np.float32)


def engine_row(session: Any, x: np.ndarray, batch: int, ctx: Context) -> dict[str, Any]:
    """One onnxruntime row, timed as `pneumo bench` times the model (engine.offline.measure:
    THE `run` of the engine, score output only, IOBinding on CUDA), for a fixed call count."""
    calls = model_calls(session, x, batch, 0, ctx.warmup, ctx.repeats * max(1, 32 // batch))
    return throughput_row(calls, batch)


def ort_cpu_rows(ctx: Context, x: np.ndarray) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    opts = session_options(ctx.threads, spinning=True)  # back-to-back runs: spinning pays
    for variant in CPU_VARIANTS:
        session = create_session(MODEL_DIR / VARIANT_FILES[variant], options=opts)
        rows[f"ort-{variant}"] = {str(b): engine_row(session, x, b, ctx) for b in ctx.batches}
    previous = PREVIOUS_MODEL_DIR / VARIANT_FILES["fp32"]
    if previous.is_file():  # the model v2 replaced, on the same inputs
        session = create_session(previous, options=opts)
        rows["ort-fp32-v1"] = {str(b): engine_row(session, x, b, ctx) for b in ctx.batches}
    return rows


def ort_cuda_rows(ctx: Context, x: np.ndarray) -> dict[str, dict[str, Any]]:
    """Model-only CUDA with IOBinding, as the engine runs it: each call copies the batch to
    the GPU and the score back."""
    rows: dict[str, dict[str, Any]] = {}
    for variant in CUDA_VARIANTS:
        session = create_session(MODEL_DIR / VARIANT_FILES[variant], device="cuda")
        rows[f"cuda-{variant}-iobinding"] = {
            str(b): engine_row(session, x, b, ctx) for b in ctx.batches
        }
    return rows


def build_tflite(ctx: Context) -> dict[str, Path]:
    """TFLite fp32 and dynamic-range files from the Keras model, by `pneumo convert`."""
    repo = ctx.workdir / "tflite-repo"
    argv = [
        sys.executable,
        "-m",
        "pneumo_onnx.engine.cli",
        "convert",
        str(KERAS_MODEL),
        "-o",
        str(repo),
    ]
    subprocess.run([*argv, "--variants", "tflite,tflite-dynamic"], check=True, capture_output=True)
    version = repo / "pneumonia" / "1"
    return {name: version / file for name, file in TFLITE_FILES.items()}


def tf_rows(ctx: Context, x: np.ndarray, skipped: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Keras and TFLite rows, from their own process (benchmarks.tf_rows)."""
    if not has("keras") or not has("tensorflow"):
        for name in (BASELINE, "keras-call", *TFLITE_FILES):
            skipped[name] = NO_KERAS
        return {}
    files: dict[str, Path] = {}
    if has("ai_edge_litert"):
        try:
            files = build_tflite(ctx)
        except subprocess.CalledProcessError as e:
            tail = (e.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
            for name in TFLITE_FILES:
                skipped[name] = f"pneumo convert --variants tflite failed: {tail}"
    else:
        for name in TFLITE_FILES:
            skipped[name] = "ai-edge-litert not installed: pip install 'pneumo-onnx[convert]'"
    npy = ctx.workdir / "model-input.npy"
    np.save(npy, x)
    argv = [
        sys.executable,
        "-m",
        "benchmarks.tf_rows",
        str(npy),
        f"--batches={','.join(map(str, ctx.batches))}",
        f"--threads={ctx.threads}",
        f"--warmup={ctx.warmup}",
        f"--repeats={ctx.repeats}",
        *(f"--tflite={k}={v}" for k, v in files.items()),
    ]
    try:
        report = json_from_stdout(run_process(argv)["stdout"])
    except ProcessFailed as e:
        for name in (BASELINE, "keras-call", *files):
            skipped[name] = str(e)
        return {}
    return dict(report["rows"])


def peak_efficiency(ctx: Context, ort_rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """GFLOP/s of onnxruntime fp32 at batch 32 vs the CPU's theoretical and measured peaks."""
    if not has("onnx"):
        return {"skipped": "counting FLOPs needs onnx: pip install 'pneumo-onnx[convert]'"}
    model = flops.model_flops(MODEL_DIR / VARIANT_FILES["fp32"])
    row = ort_rows.get("ort-fp32", {}).get("32")
    theory = flops.theoretical_peak(cpu(), ctx.threads)
    candidates = [flops.onnxruntime_peak(ctx.threads), flops.numpy_peak()]
    measured = max(candidates, key=lambda c: c["gflops"])
    # A measured sgemm above the nominal-clock peak means the cores run faster (turbo).
    measured["implied_clock_ghz"] = round(
        measured["gflops"] / (theory["cores"] * theory["flop_per_cycle_per_core"]), 2
    )
    out: dict[str, Any] = {
        "model": model,
        "theoretical_peak": theory,
        "measured_peak": measured,
        "measured_candidates": candidates,
    }
    if row is None:
        out["achieved"] = "not measured: batch 32 not among --batch-sizes"
        return out
    for stat in ("images_per_second", "images_per_second_best"):
        gflops = row[stat] * model["flops_per_image"] / 1e9
        out[f"achieved_gflops_{stat.removeprefix('images_per_second').strip('_') or 'median'}"] = (
            round(gflops, 1)
        )
    achieved = out["achieved_gflops_median"]
    if theory["gflops"]:
        out["percent_of_theoretical_peak"] = round(100 * achieved / theory["gflops"], 1)
    out["percent_of_measured_peak"] = round(100 * achieved / measured["gflops"], 1)
    out["target"] = ">= 50% of peak FP32 FLOP/s (onnxruntime fp32, batch 32)"
    return out


def run(ctx: Context) -> dict[str, Any]:
    x = inputs(ctx.images, max(ctx.batches))
    skipped: dict[str, str] = {}
    by_name: dict[str, dict[str, Any]] = tf_rows(ctx, x, skipped)
    ort_rows = ort_cpu_rows(ctx, x)
    by_name.update(ort_rows)
    if ctx.device == "cuda":
        try:
            by_name.update(ort_cuda_rows(ctx, x))
        except PneumoError as e:
            for v in CUDA_VARIANTS:
                skipped[f"cuda-{v}-iobinding"] = e.message
    rows = []
    for name, per_batch in by_name.items():
        for b, row in per_batch.items():
            base = by_name.get(BASELINE, {}).get(b, {}).get("images_per_second")
            rows.append(
                {
                    "name": name,
                    **row,
                    "ratio_to_baseline": ratio(row["images_per_second"], base),
                }
            )
    int8 = {
        f"{v}_speedup_over_fp32_batch32": ratio(
            ort_rows[f"ort-{v}"].get("32", {}).get("images_per_second"),
            ort_rows["ort-fp32"].get("32", {}).get("images_per_second"),
        )
        for v in ("int8", "int8-full")
    }
    largest = str(max(ctx.batches))
    v2_over_v1 = {
        "batch": int(largest),
        "ratio": ratio(
            ort_rows["ort-fp32"].get(largest, {}).get("images_per_second"),
            ort_rows.get("ort-fp32-v1", {}).get(largest, {}).get("images_per_second"),
        ),
    }
    return {
        "baseline": BASELINE,
        "threads": ctx.threads,
        "default_over_v1_fp32": v2_over_v1,
        "input": f"{len(x)} real X-rays, reference preprocessing, NHWC 128x128x3 float32",
        "rows": rows,
        "skipped": [{"name": k, "reason": v} for k, v in skipped.items()],
        "int8": int8,
        "peak": peak_efficiency(ctx, ort_rows),
    }
