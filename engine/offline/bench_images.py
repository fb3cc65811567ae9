"""The images a `pneumo bench` run measures on: the user's folder (sampled evenly down to
MAX_IMAGES) or the shipped samples; each decoded once to set the unreadable ones aside; a
fixed shuffle; and a pipeline pass long enough to keep batches full."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_onnx.engine.errors import PneumoError, UsageError
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.listing import find_images
from pneumo_onnx.engine.runtime.samples import SAMPLES_DIR, sample_images

MAX_IMAGES = 200  # a larger folder is sampled evenly: a pass must fit in a few seconds
MIN_PASS_BATCHES = 4  # a smaller folder is repeated within a pass, so batches stay full
SHUFFLE_SEED = 16


@dataclass
class Prepared:
    """The images every measurement of a run uses, checked once: the readable ones and the
    tensors of the first of them (the model-only input)."""

    images: list[Path]
    tensors: np.ndarray
    unreadable: list[tuple[str, str]]


def bench_images(folder: str | None) -> tuple[list[Path], dict[str, Any]]:
    """The user's images (at most MAX_IMAGES, sampled evenly), or the shipped samples."""
    samples = folder is None
    found = sample_images() if samples else find_images(folder or "")
    step = math.ceil(len(found) / MAX_IMAGES)
    images = found[::step]
    sizes = [p.stat().st_size for p in images]
    return images, {
        "folder": str(SAMPLES_DIR if samples else folder),
        "shipped_samples": samples,
        "found": len(found),
        "used": len(images),
        "sampled_every": step,
        "median_bytes": int(statistics.median(sizes)),
    }


def prepare(
    engine: Engine, images: list[Path], keep: int, workers: int, tick: Callable[[str], None]
) -> Prepared:
    """Decode every image once (also the file cache's warm-up), set the unreadable ones
    aside, keep the first `keep` tensors."""
    tick("checking the images")

    def attempt(path: Path) -> np.ndarray | str:
        try:
            return engine.preprocess(path)
        except PneumoError as e:
            return e.message

    with ThreadPoolExecutor(workers, thread_name_prefix="pneumo-bench-check") as pool:
        results = list(pool.map(attempt, images))
    readable = [p for p, r in zip(images, results, strict=True) if not isinstance(r, str)]
    # A fixed shuffle: any stretch of the list is then a fair sample of the folder (sorted
    # class folders differ in size: decode-only on the first images alone would be biased).
    random.Random(SHUFFLE_SEED).shuffle(readable)
    unreadable = [(p.name, r) for p, r in zip(images, results, strict=True) if isinstance(r, str)]
    if not readable:
        raise UsageError(
            f"none of the {len(images)} images could be read ({unreadable[0][0]}: "
            f"{unreadable[0][1]})"
        )
    tensors = np.stack([r for r in results if not isinstance(r, str)][:keep])
    return Prepared(readable, tensors, unreadable)


def pass_images(images: list[Path], batch_size: int) -> list[Path]:
    """One pipeline pass: the images, repeated until they fill MIN_PASS_BATCHES batches."""
    repeats = math.ceil(MIN_PASS_BATCHES * batch_size / len(images))
    return images * max(1, repeats)
