"""The four measurements behind `pneumo bench` (and the engine rows of the checkout's harness),
each timed with `engine.offline.timing`, warm-up excluded:

- `model_calls`: the model alone on preprocessed tensors, through THE `run` of
  `engine.runtime.session` (IOBinding on CUDA, the score output only, as the engine runs it);
- `decode_rate`: decoding and preprocessing to the tensor alone, on a pool of threads;
- `pipeline_passes`: files to results through `Engine.stream`, what `pneumo batch` runs;
- `predict_calls`: one image at a time through `Engine.predict`, for per-image latency.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pneumo_onnx.engine.offline.timing import timed_calls
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.session import run


def batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    """`batch` tensors taken in turn from `x` (repeated when `x` holds fewer)."""
    return np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])), dtype=x.dtype)


def model_calls(
    session: ort.InferenceSession,
    x: np.ndarray,
    batch: int,
    seconds: float,
    warmup: int = 2,
    min_calls: int = 1,
) -> list[float]:
    """Seconds per `run` of a batch of `batch` of the tensors `x` (the model only)."""
    xb = batch_of(x, batch)
    return timed_calls(lambda: run(session, xb), seconds, warmup, min_calls)


def decode_rate(
    prepare: Callable[[Path], np.ndarray],
    images: Sequence[Path],
    seconds: float,
    workers: int,
) -> dict[str, Any]:
    """Images/s of `prepare` (decode + preprocess to the tensor) on `workers` threads, with
    2 x workers images in flight so that no thread waits: what the pipeline's decoding could
    reach if the model took no time; and the process's CPU time per image. Every image must be
    readable (`engine.offline.bench.prepare` checks them)."""
    source = itertools.cycle(images)
    with ThreadPoolExecutor(workers, thread_name_prefix="pneumo-bench-decode") as pool:
        list(pool.map(prepare, images[:workers]))  # warm-up: the threads exist, files cached
        inflight: deque[Future[np.ndarray]] = deque()
        done = 0
        start, cpu = time.perf_counter(), time.process_time()
        deadline = start + seconds
        while True:
            while len(inflight) < 2 * workers and (
                done + len(inflight) < workers or time.perf_counter() < deadline
            ):
                inflight.append(pool.submit(prepare, next(source)))
            if not inflight:
                break
            inflight.popleft().result()
            done += 1
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "images_per_second": round(done / elapsed, 1),
        "cpu_ms_per_image": round(1000 * cpu / done, 3),
        "images": done,
        "seconds": round(elapsed, 3),
        "workers": workers,
    }


def pipeline_passes(
    engine: Engine,
    images: Sequence[Path],
    seconds: float,
    batch_size: int,
    workers: int | None = None,
    min_passes: int = 1,
    warmup_images: int = 0,
) -> list[float]:
    """Seconds per pass of `Engine.stream` over `images` (each pass starts its own decode pool
    and ends when the last result is out, as one `pneumo batch` run does), after a warm-up
    stream of `warmup_images` images."""
    if warmup_images:
        warm = list(itertools.islice(itertools.cycle(images), warmup_images))
        deque(engine.stream(warm, batch_size=batch_size, workers=workers), maxlen=0)
    return timed_calls(
        lambda: deque(engine.stream(images, batch_size=batch_size, workers=workers), maxlen=0),
        seconds,
        warmup=0,
        min_calls=min_passes,
    )


def predict_calls(
    engine: Engine, images: Sequence[Path], seconds: float, warmup: int = 2, min_calls: int = 1
) -> list[float]:
    """Seconds per `Engine.predict` of one image file (read, decode, preprocess, model at
    batch 1), taking the images in turn."""
    source = itertools.cycle(images)
    return timed_calls(lambda: engine.predict(next(source)), seconds, warmup, min_calls)
