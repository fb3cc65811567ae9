"""Conversion-stage benchmark: time to convert the reference model with every variant, and
model-only int8 vs fp32 onnxruntime throughput at batch 32, in the same process.

    python -m benchmarks.conversion [--repeats 7] [--json out.json]

Needs the `convert` extra. Uses ../shared/data/fullres when present, else the shipped samples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.environment import SHARED_FULLRES, emit, machine
from engine.contract import Contract
from engine.preprocess import list_images, reference_batch
from engine.sample_data import sample_images
from engine.session import create_session, session_options

BATCH = 32


def time_conversion(workdir: Path) -> dict[str, Any]:
    """Whole `pneumo convert` process, TensorFlow import included, every variant, on the
    shipped trained reference model."""
    keras_path = Path(__file__).resolve().parents[1] / "models" / "pneumonia_cnn.keras"
    images = [str(SHARED_FULLRES)] if SHARED_FULLRES.is_dir() else []
    argv = [
        sys.executable,
        "-m",
        "engine.cli",
        "convert",
        str(keras_path),
        "-o",
        str(workdir / "repo"),
    ]
    for folder in images:
        argv += ["--images", folder]
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    wall = time.perf_counter() - start
    manifest = json.loads((workdir / "repo" / "pneumonia" / "1" / "manifest.json").read_text())
    return {
        "process_seconds": round(wall, 2),
        "in_process_seconds": manifest["conversion_seconds"],
        "variants": sorted(manifest["files"]),
        "probe_images": manifest["parity"]["probes"],
    }


def throughput(version_dir: Path, repeats: int) -> dict[str, Any]:
    """Images/s at batch 32 for fp32 and int8, runs interleaved so noise hits both alike."""
    images = list_images(SHARED_FULLRES)[:BATCH] if SHARED_FULLRES.is_dir() else sample_images()
    x = reference_batch(images, Contract())
    x = np.resize(x, (BATCH, *x.shape[1:])).astype(np.float32)
    sessions = {
        kind: create_session(version_dir / name, options=session_options(spinning=True))
        for kind, name in (
            ("fp32", "model.onnx"),
            ("int8", "model.int8.onnx"),
            ("int8-full", "model.int8-full.onnx"),
        )
    }
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():  # warm-up, excluded
        for _ in range(3):
            s.run(None, {"image": x})
    for _ in range(repeats):
        for kind, s in sessions.items():
            start = time.perf_counter()
            for _ in range(5):
                s.run(None, {"image": x})
            times[kind].append((time.perf_counter() - start) / 5)
    out: dict[str, Any] = {}
    for kind, t in times.items():
        out[kind] = {
            "batch_seconds_min": round(min(t), 5),
            "batch_seconds_median": round(statistics.median(t), 5),
            "images_per_second_median": round(BATCH / statistics.median(t), 1),
        }
    for kind in ("int8", "int8-full"):
        for stat in ("median", "min"):
            out[f"{kind}_speedup_{stat}"] = round(
                out["fp32"][f"batch_seconds_{stat}"] / out[kind][f"batch_seconds_{stat}"], 2
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
        conversion = time_conversion(Path(tmp))
        speed = throughput(Path(tmp) / "repo" / "pneumonia" / "1", args.repeats)
    result = {
        "machine": machine(),
        "onnxruntime": ort.__version__,
        "conversion": conversion,
        "model_only_batch32": speed,
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
