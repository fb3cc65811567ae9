"""Inputs the parity gate and the variant checks run through both models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.contract import Contract
from engine.errors import UsageError
from engine.runtime.listing import find_images
from engine.runtime.preprocess import finish, reference_pixels
from engine.runtime.samples import sample_images

MAX_PROBE_IMAGES = 64


def gather_images(folders: Sequence[str | Path], limit: int = MAX_PROBE_IMAGES) -> list[Path]:
    """The shipped samples plus images under the given folders, at most `limit`, spread evenly
    over the sorted list so every class subfolder is represented."""
    found: list[Path] = []
    for folder in folders:
        try:
            found.extend(find_images(folder))
        except UsageError as e:
            raise UsageError(f"--images: {e.message}") from e
    if len(found) > limit:
        idx = np.linspace(0, len(found) - 1, limit).round().astype(int)
        found = [found[i] for i in sorted(set(idx))]
    return sample_images() + found


def real_batch(contract: Contract, images: Sequence[Path]) -> np.ndarray:
    """Real X-rays through the reference preprocessing, in the model's input domain."""
    return np.stack([reference_pixels(p, contract) for p in images])


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
