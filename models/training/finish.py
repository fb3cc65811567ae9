"""After training: batch-norm statistics of clean images, then temperature scaling folded in.

Training sees augmented batches, so the moving batch-norm statistics describe augmented images,
not the clean ones served in production. `reestimate_batchnorm` replaces them, layer by layer
in graph order, by the exact mean and (biased) variance of each layer's input over the clean
training images, and `batchnorm_agreement` checks that training-mode (batch statistics) and
inference-mode outputs then agree. `fit_temperature` scales the logit to minimise validation
log loss, and `fold_temperature` divides the final Dense layer's weights and bias by T, so
the saved model outputs calibrated probabilities with its GAP -> Dense head unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from pneumo_onnx.engine.runtime.metrics import calibration_bins

HEAD = "pneumonia"  # the final Dense(1, sigmoid) layer of build_model_v2
POOL = "gap"


def _batches(x: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(x), batch):
        yield x[i : i + batch].astype(np.float32) / 255.0


def reestimate_batchnorm(model: Any, x: np.ndarray, batch: int = 256) -> list[dict[str, Any]]:
    """Set every BatchNormalization layer's moving statistics to those of clean `x` (uint8
    NHWC), earlier layers first so later inputs use the new statistics. Returns, per layer,
    the largest relative change of the standard deviation and mean shift in units of it."""
    import keras

    changes = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        probe = keras.Model(model.input, layer.input)
        total, total_sq, count = 0.0, 0.0, 0
        for xb in _batches(x, batch):
            a = np.asarray(probe(xb, training=False), dtype=np.float64)
            a = a.reshape(-1, a.shape[-1])
            total, total_sq, count = total + a.sum(0), total_sq + (a * a).sum(0), count + len(a)
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
        old_mean = np.asarray(layer.moving_mean, dtype=np.float64)
        old_var = np.asarray(layer.moving_variance, dtype=np.float64)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(var.astype(np.float32))
        eps = layer.epsilon
        changes.append(
            {
                "layer": layer.name,
                "max_sd_ratio_change": float(
                    np.max(np.abs(np.sqrt((var + eps) / (old_var + eps)) - 1))
                ),
                "max_mean_shift_sd": float(np.max(np.abs(mean - old_mean) / np.sqrt(var + eps))),
            }
        )
    return changes


def batchnorm_agreement(model: Any, x: np.ndarray, batch: int = 32, seed: int = 0) -> dict:
    """Scores of clean `x` in training mode (batch statistics of shuffled batches of `batch`,
    dropout off) against inference mode: mean and max absolute difference."""
    import keras

    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    order = np.random.default_rng(seed).permutation(len(x))
    x = x[order[: len(x) - len(x) % batch]]  # whole batches only
    try:
        for layer in dropouts:
            layer.rate = 0.0
        train = np.concatenate([np.asarray(model(b, training=True)) for b in _batches(x, batch)])
    finally:
        for layer, rate in zip(dropouts, rates, strict=True):
            layer.rate = rate
    infer = np.concatenate([np.asarray(model(b, training=False)) for b in _batches(x, 256)])
    diff = np.abs(train.ravel().astype(np.float64) - infer.ravel())
    return {
        "images": len(x),
        "batch": batch,
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff": float(diff.max()),
    }


def logits(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The pre-sigmoid output, float64, from the pooled features and the head's weights."""
    import keras

    features = keras.Model(model.input, model.get_layer(POOL).output)
    f = np.concatenate([np.asarray(features(b, training=False)) for b in _batches(x, batch)])
    w, b = (np.asarray(v, dtype=np.float64) for v in model.get_layer(HEAD).get_weights())
    return f.astype(np.float64) @ w[:, 0] + b[0]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def log_loss(y: np.ndarray, z: np.ndarray) -> float:
    """Mean binary cross-entropy of logits `z`, computed stably."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(y: np.ndarray, z: np.ndarray) -> float:
    """T > 0 minimising the log loss of z / T: golden-section search over log T in
    [log 0.05, log 20] (the loss is unimodal in log T), to 1e-6."""
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2

    def loss(t: float) -> float:
        return log_loss(y, z / math.exp(t))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > 1e-6:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


def fold_temperature(model: Any, temperature: float) -> None:
    """Divide the head's weights and bias by `temperature`: sigmoid(z / T) from the model."""
    w, b = model.get_layer(HEAD).get_weights()
    model.get_layer(HEAD).set_weights([w / temperature, b / temperature])


def calibration(y: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """Log loss, Brier and expected calibration error (10 equal-width bins) of logits z."""
    p = sigmoid(z)
    return {
        "log_loss": log_loss(y, z),
        "brier": float(np.mean((p - y) ** 2)),
        "ece_10_bins": calibration_bins(y, p, bins=10)[3],
    }
