"""Engine benchmarks for the issue "Engine", every figure a ratio or a distribution measured
in one run on one machine, on the same model and images:

1. fast vs reference preprocessing: max score difference and label agreement;
2. whole-process `pneumo batch` images/s vs the seed-style Keras batch pipeline and per-image
   loop (start-up included for every side);
3. warm single-image `Engine.predict` latency p50/p99 on full-resolution images;
4. `pneumo predict one.jpeg` whole-process wall time and peak RSS.

    python -m benchmarks.engine_bench [--images DIR] [--json out.json]

The Keras baselines need the `convert` extra (TensorFlow); without it they are reported as
skipped with the reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import emit, image_folder, machine
from engine import Engine
from engine.preprocess import list_images

ROOT = Path(__file__).resolve().parents[1]
KERAS_MODEL = ROOT / "models" / "pneumonia_cnn.keras"


def fast_vs_reference(images: list[Path]) -> dict[str, Any]:
    fast, reference = Engine.load(preprocessing="fast"), Engine.load(preprocessing="reference")
    t = fast.contract.threshold
    out: dict[str, Any] = {}
    scores = {}
    for name, engine in (("fast", fast), ("reference", reference)):
        start = time.perf_counter()
        x = np.stack([engine.preprocess(p) for p in images])
        out[f"{name}_ms_per_image_1_thread"] = round(
            1000 * (time.perf_counter() - start) / len(images), 2
        )
        scores[name] = engine.scores(x)
    diff = np.abs(scores["fast"] - scores["reference"])
    away = np.abs(scores["reference"] - t) > 0.02
    out.update(
        images=len(images),
        max_score_diff=float(diff.max()),
        mean_score_diff=float(diff.mean()),
        label_agreement=float(np.mean((scores["fast"] > t) == (scores["reference"] > t))),
        images_away_from_threshold=int(away.sum()),
        label_agreement_away_from_threshold=(
            float(np.mean((scores["fast"][away] > t) == (scores["reference"][away] > t)))
            if away.any()
            else None
        ),
        reference_score_range=[float(scores["reference"].min()), float(scores["reference"].max())],
    )
    return out


# Measured from a small wrapper process: a child forked from this (large) process would
# report this process's pages in its peak RSS.
_WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "wall = time.perf_counter() - start\n"
    "print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)\n"
)


def _wall(argv: list[str], cwd: Path | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KB) of one command run as its own process."""
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, cwd=cwd, check=True
    ).stdout.split()
    wall, rss, code = float(out[0]), int(out[1]), int(out[2])
    if code not in (0, 1):
        raise RuntimeError(f"{argv[:4]} exited {code}")
    return wall, rss


def batch_throughput(folder: Path, n_images: int) -> dict[str, Any]:
    py = sys.executable
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        wall, rss = _wall(
            [
                py,
                "-m",
                "engine.cli",
                "batch",
                str(folder),
                "--recursive",
                "-o",
                str(Path(tmp) / "r.csv"),
            ]
        )
    rows["pneumo_batch"] = {
        "seconds": round(wall, 2),
        "images_per_second": round(n_images / wall, 1),
        "peak_rss_mb": round(rss / 1024, 1),
    }
    if importlib.util.find_spec("keras") is None:
        rows["keras_baselines"] = "skipped: TensorFlow/Keras not installed (the 'convert' extra)"
        return rows
    for mode in ("batch", "loop"):
        wall, rss = _wall(
            [py, "-m", "benchmarks.seed_baselines", mode, str(KERAS_MODEL), str(folder)], cwd=ROOT
        )
        rows[f"keras_seed_{mode}"] = {
            "seconds": round(wall, 2),
            "images_per_second": round(n_images / wall, 1),
            "peak_rss_mb": round(rss / 1024, 1),
        }
        rows[f"speedup_vs_keras_seed_{mode}"] = round(wall / rows["pneumo_batch"]["seconds"], 1)
    return rows


def latency(images: list[Path], rounds: int = 3) -> dict[str, Any]:
    engine = Engine.load()
    for p in images[:10]:
        engine.predict(p)  # warm-up, excluded
    times = []
    for _ in range(rounds):
        for p in images:
            start = time.perf_counter()
            engine.predict(p)
            times.append(1000 * (time.perf_counter() - start))
    return {
        "calls": len(times),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
        "max_ms": round(max(times), 2),
    }


def startup(image: Path, runs: int = 5) -> dict[str, Any]:
    walls, rss = [], []
    for _ in range(runs):
        wall, peak = _wall([sys.executable, "-m", "engine.cli", "predict", str(image)])
        walls.append(wall)
        rss.append(peak / 1024)
    return {
        "image": image.name,
        "runs": runs,
        "wall_seconds_median": round(statistics.median(walls), 3),
        "wall_seconds_max": round(max(walls), 3),
        "peak_rss_mb_max": round(max(rss), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", default=None, help="folder of X-rays (default: ../shared fullres)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    folder = image_folder(args.images)
    images = list_images(folder)
    largest = max(images, key=lambda p: p.stat().st_size)
    result = {
        "machine": machine(),
        "images": {"folder": folder.name, "count": len(images)},
        "fast_vs_reference": fast_vs_reference(images),
        "batch_whole_process": batch_throughput(folder, len(images)),
        "warm_predict_latency": latency(images),
        "predict_one_process": startup(largest),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
