"""A model's own fp32 noise, and the parity tolerance derived from it.

Two fp32 runs of the same graph differ when their arithmetic is ordered differently: Keras at
batch 1 and at batch N, onnxruntime with and without its graph fusions. In a deep net (a
MobileNetV2 of ~155 layers) those differences reach a few 1e-5 of the output, so a fixed 1e-5
parity gate refuses faithful conversions (a third-party MobileNetV2: 5.4e-5, its scores on real
X-rays within 2.7e-5 of its author's). The gate is therefore NOISE_FACTOR times the noise this
model shows on the probes, never below FLOOR (what a small net shows) nor above CAP (a real
conversion error, a wrong padding or epsilon, moves scores by 1e-3 and more). The noise, the
tolerance and how it was derived are recorded in the manifest; `pneumo validate --against`
uses the recorded tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnxruntime as ort

from pneumo_onnx.engine.runtime.session import create_session, run_batched, session_options

FLOOR = 1e-5
CAP = 5e-4
NOISE_FACTOR = 4.0
KERAS_SINGLES = 8  # probes run one by one through Keras (each is a separate call)


def fp32_noise(
    model_bytes: bytes,
    probes: np.ndarray,
    reference: np.ndarray | None = None,
    predict: Any = None,
) -> dict[str, float]:
    """Max abs output differences between fp32 runs that differ only in arithmetic order:
    onnxruntime without graph optimizations against with them, and (given the source model's
    `predict(x, batch_size)` and its batch `reference` outputs) Keras one image at a time
    against the batch."""
    figures = {"onnxruntime_fusions": _ort_noise(model_bytes, probes)}
    if predict is not None and reference is not None:
        n = min(KERAS_SINGLES, len(probes))
        singles = predict(probes[:n], batch_size=1)
        figures["keras_batch_1_vs_batch"] = float(np.max(np.abs(singles - reference[:n])))
    return figures


def tolerance_for(noise: Mapping[str, float]) -> float:
    """NOISE_FACTOR x the largest noise, within [FLOOR, CAP]."""
    worst = max(noise.values(), default=0.0)
    return float(min(CAP, max(FLOOR, NOISE_FACTOR * worst)))


def describe(tolerance: float, noise: Mapping[str, float]) -> str:
    worst = max(noise.values(), default=0.0)
    return (
        f"tolerance {tolerance:.1e} ({NOISE_FACTOR:g} x this model's fp32 noise {worst:.1e}, "
        f"within [{FLOOR:.0e}, {CAP:.0e}])"
    )


def _ort_noise(model_bytes: bytes, probes: np.ndarray) -> float:
    outputs = []
    levels = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    for level in levels:
        options = session_options()
        options.graph_optimization_level = level
        outputs.append(run_batched(create_session(model_bytes, "cpu", options), probes))
    return float(np.max(np.abs(outputs[0] - outputs[1])))
