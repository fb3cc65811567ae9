"""Local Ray overhead: `pneumo batch` on one machine, plain vs `--ray` (a local Ray instance
started by the command), whole process, same images and model.

    python -m benchmarks.ray_bench [--images DIR] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any

from benchmarks.environment import emit, image_folder, machine
from engine.preprocess import list_images


def timed(argv: list[str]) -> float:
    import subprocess

    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr[-500:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    folder = image_folder(args.images)
    n = len(list_images(folder))
    pneumo = [sys.executable, "-m", "engine.cli", "batch", str(folder), "--recursive"]
    times: dict[str, list[float]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):  # interleaved, so that noise hits both alike
            times["local"].append(timed([*pneumo, "-o", f"{tmp}/r{i}.csv"]))
            times["ray"].append(timed([*pneumo, "-o", f"{tmp}/r{i}.parquet", "--ray"]))
    result: dict[str, Any] = {"machine": machine(), "images": {"folder": folder.name, "count": n}}
    for kind, values in times.items():
        median = statistics.median(values)
        result[kind] = {
            "seconds_median": round(median, 2),
            "seconds_min": round(min(values), 2),
            "images_per_second": round(n / median, 1),
        }
    result["ray_over_local"] = round(
        result["ray"]["seconds_median"] / result["local"]["seconds_median"], 2
    )
    emit(result, args.json)


if __name__ == "__main__":
    main()
