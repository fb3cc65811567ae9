"""The fast preprocessing path of the shipped default model, held to the promise on every
full-resolution X-ray: scores within 0.02 of the `reference` path (the model's own pipeline),
labels equal wherever the reference score is 0.02 or more from the threshold. (`auto` runs it
by default only when the manifest's figures stayed within 0.01: tests/test_engine.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pneumo_onnx import Engine

MAX_SCORE_DIFF = 0.02  # measured: 0.0124 with the trained model on the 200 full-res X-rays
NEAR_THRESHOLD = MAX_SCORE_DIFF  # labels may differ only where the reference score is this close


def test_fast_matches_reference_scores(real_images: list[Path]) -> None:
    fast = Engine.load(preprocessing="fast")
    reference = Engine.load(preprocessing="reference")
    a = fast.scores(np.stack([fast.preprocess(p) for p in real_images]))
    b = reference.scores(np.stack([reference.preprocess(p) for p in real_images]))
    t = reference.contract.threshold
    assert np.max(np.abs(a - b)) <= MAX_SCORE_DIFF
    away = np.abs(b - t) > NEAR_THRESHOLD
    assert np.array_equal(a[away] > t, b[away] > t)


def test_fast_batch_equals_fast_single(real_images: list[Path]) -> None:
    """Decoding in the thread pool and batching change nothing: same scores as one by one."""
    engine = Engine.load(preprocessing="fast")
    batch = [r["raw_score"] for r in engine.predict_batch(real_images[:40], batch_size=16)]
    single = [engine.predict(p)["raw_score"] for p in real_images[:40]]
    assert np.max(np.abs(np.array(batch) - np.array(single))) <= 1e-6
