"""The four ways to score a folder that the `pipeline` suite compares, each run in its own
process so that start-up, imports and peak memory are its own:

- `keras-loop`: the seed deployment guide's per-image loop: PIL open, RGB, resize to the model
  size, /255, `model.predict` on a batch of one (written here, not copied);
- `keras-batch`: a typical Keras batch pipeline: `keras.utils.load_img(target_size=...)` per
  image, `model.predict` per batch of 32;
- `engine-reference` / `engine-fast`: `Engine.stream` (what `pneumo batch` runs) with each
  preprocessing, and `Engine.predict` per image for latency, timed by `pneumo bench`'s own
  code (`engine.offline.measure`).

    python -m benchmarks.pipelines MODE FOLDER [--repeats 3] [--threads N] [--device cpu]

Prints one JSON line: wall-clock marks (`ready_at`: imports and model loaded; `cold_done_at`:
first pass over the folder done), warm pass seconds, per-image (or per-batch) latencies and
the scores of the first pass.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import KERAS_MODEL

BATCH = 32
MODES = ("keras-loop", "keras-batch", "engine-reference", "engine-fast")

Scorer = Callable[[list[Path]], list[float]]


def keras_scorers(mode: str, threads: int) -> tuple[Scorer, Callable[[Path], float] | None]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    import keras
    from PIL import Image

    model = keras.saving.load_model(KERAS_MODEL, compile=False)
    height, width = model.input_shape[1:3]

    def one(path: Path) -> float:
        image = Image.open(path).convert("RGB").resize((width, height))
        x = np.asarray(image, dtype=np.float32)[None] / 255.0
        return float(model.predict(x, verbose=0)[0][0])

    def loop(paths: list[Path]) -> list[float]:
        return [one(p) for p in paths]

    def batch(paths: list[Path]) -> list[float]:
        scores: list[float] = []
        for i in range(0, len(paths), BATCH):
            chunk = [
                keras.utils.img_to_array(keras.utils.load_img(p, target_size=(height, width)))
                / 255.0
                for p in paths[i : i + BATCH]
            ]
            scores.extend(float(s) for s in model.predict(np.stack(chunk), verbose=0)[:, 0])
        return scores

    return (loop, one) if mode == "keras-loop" else (batch, None)


def engine_report(mode: str, paths: list[Path], repeats: int, threads: int, device: str) -> dict:
    """The engine rows, measured by `pneumo bench`'s own code (engine.offline.measure): the
    cold pass, `repeats` warm passes of `Engine.stream`, then `Engine.predict` per image."""
    from pneumo_onnx import Engine
    from pneumo_onnx.engine.offline.measure import pipeline_passes, predict_calls

    engine = Engine.load(preprocessing=mode.removeprefix("engine-"), threads=threads, device=device)
    report: dict[str, Any] = {"ready_at": time.time()}
    report["scores"] = [r["raw_score"] for _, r in engine.stream(paths, batch_size=BATCH)]
    report["cold_done_at"] = time.time()
    report["pass_seconds"] = pipeline_passes(engine, paths, 0, BATCH, min_passes=repeats)
    report["latency_seconds"] = predict_calls(engine, paths, 0, 0, repeats * len(paths))
    report["preprocess_ms_per_image_1_thread"] = preprocess_ms(engine, paths)
    return report


def keras_report(mode: str, paths: list[Path], repeats: int, threads: int) -> dict:
    """The Keras rows: the cold pass, `repeats` warm passes, per-image (loop) or per-batch
    latencies."""
    folder_pass, single = keras_scorers(mode, threads)
    report: dict[str, Any] = {"ready_at": time.time()}
    report["scores"] = folder_pass(paths)  # cold: what a user waits for
    report["cold_done_at"] = time.time()
    passes: list[float] = []
    latencies: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        if single is not None:  # the loop is single calls: time each as it goes
            for p in paths:
                t = time.perf_counter()
                single(p)
                latencies.append(time.perf_counter() - t)
        else:
            folder_pass(paths)
        passes.append(time.perf_counter() - start)
    if single is None:  # the batch pipeline has no per-image call: time each warm batch
        for i in range(0, len(paths), BATCH):
            start = time.perf_counter()
            folder_pass(paths[i : i + BATCH])
            latencies.append(time.perf_counter() - start)
        report["latency_unit"] = f"one batch of up to {BATCH}"
    report["pass_seconds"] = passes
    report["latency_seconds"] = latencies
    return report


def preprocess_ms(engine: Any, paths: list[Path]) -> float:
    """Decode + resize + scale alone, one thread: the cost the two preprocessings differ by."""
    start = time.perf_counter()
    for p in paths:
        engine.preprocess(p)
    return round(1000 * (time.perf_counter() - start) / len(paths), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    from pneumo_onnx.engine.runtime.listing import list_images

    paths = list_images(args.folder)
    if args.mode.startswith("keras"):
        report = keras_report(args.mode, paths, args.repeats, args.threads)
    else:
        report = engine_report(args.mode, paths, args.repeats, args.threads, args.device)
    print(json.dumps({"mode": args.mode, "images": len(paths), **report}))


if __name__ == "__main__":
    main()
