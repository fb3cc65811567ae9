"""Inputs the parity gate and the variant checks run through both models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.contract import SCALINGS, Contract
from engine.errors import UsageError
from engine.preprocess import list_images, reference_pixels
from engine.sample_data import sample_images

MAX_PROBE_IMAGES = 64


def gather_images(folders: Sequence[str | Path], limit: int = MAX_PROBE_IMAGES) -> list[Path]:
    """The shipped samples plus images under the given folders, at most `limit`, spread evenly
    over the sorted list so every class subfolder is represented."""
    found: list[Path] = []
    for folder in folders:
        p = Path(folder)
        if not p.is_dir():
            raise UsageError(f"--images {p.name}: no such folder")
        images = list_images(p)
        if not images:
            raise UsageError(f"--images {p.name}: no .jpg/.png/.bmp/.tif images in it")
        found.extend(images)
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
    mul, add = SCALINGS[contract.input.scaling]
    rng = np.random.default_rng(seed)
    random = (rng.random((4, *shape), dtype=np.float32) * mul + add).astype(np.float32)
    parts = [random, np.zeros((1, *shape), np.float32), np.ones((1, *shape), np.float32)]
    if images:
        parts.append(real_batch(contract, images))
    return np.concatenate(parts)
