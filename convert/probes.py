"""The images a conversion is checked on, and the probe inputs built from them.

Every image given (`--images`, plus the shipped samples) is a probe image: the variant gates
and the labelled check run on all of them, streamed in chunks so memory stays bounded for any
number. The parity and batch checks, int8 calibration and output detection run on an evenly
spread subset: they test the graph, not the data, and run the model several times.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.listing import find_images
from pneumo_onnx.engine.runtime.preprocess import finish, reference_pixels
from pneumo_onnx.engine.runtime.samples import sample_images

SUBSET_IMAGES = 64  # user images in the parity probes and the int8 calibration set
CHUNK = 16  # images preprocessed and scored at a time when streaming every probe image


def gather_images(folders: Sequence[str | Path]) -> list[Path]:
    """The shipped samples plus every image under the given folders, each once."""
    found: list[Path] = []
    for folder in folders:
        try:
            found.extend(find_images(folder))
        except UsageError as e:
            raise UsageError(f"--images: {e.message}") from e
    return list({p.resolve(): p for p in [*sample_images(), *found]}.values())


def spread(images: Sequence[Path], limit: int = SUBSET_IMAGES) -> list[Path]:
    """The shipped samples, plus at most `limit` of the other images spread evenly over the
    sorted list, so that every class subfolder is represented."""
    samples = {p.resolve() for p in sample_images()}
    head = [p for p in images if p.resolve() in samples]
    rest = [p for p in images if p.resolve() not in samples]
    if len(rest) > limit:
        idx = np.linspace(0, len(rest) - 1, limit).round().astype(int)
        rest = [rest[i] for i in sorted(set(idx))]
    return head + rest


def real_batch(contract: Contract, images: Sequence[Path]) -> np.ndarray:
    """Real X-rays through the reference preprocessing, in the model's input domain (decoded
    on a thread pool: Pillow releases the GIL)."""
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return np.stack(list(pool.map(lambda p: reference_pixels(p, contract), images)))


def real_chunks(contract: Contract, images: Sequence[Path]) -> Iterator[np.ndarray]:
    """`real_batch` of every image, CHUNK images at a time."""
    for start in range(0, len(images), CHUNK):
        yield real_batch(contract, images[start : start + CHUNK])


def probe_batch(contract: Contract, images: Sequence[Path], seed: int = 0) -> np.ndarray:
    """Random inputs over the model's input range, all-zero, all-one, then real images."""
    shape = contract.input_shape
    i = contract.input
    rng = np.random.default_rng(seed)
    pixels = rng.random((4, i.height, i.width, i.channels), dtype=np.float32) * 255.0
    random = np.stack([finish(p, contract) for p in pixels])
    parts = [random, np.zeros((1, *shape), np.float32), np.ones((1, *shape), np.float32)]
    if images:
        parts.append(real_batch(contract, images))
    return np.concatenate(parts)
