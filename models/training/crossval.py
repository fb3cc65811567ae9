"""One fold of model v2's grouped cross-validation, finished exactly like the final model.

Every fold runs the whole recipe: train, re-estimate batch-norm statistics on the clean training
images, fit a temperature on the fold's validation patients and fold it into the head, then
choose the threshold (highest with sensitivity >= 0.95) on those patients. The folds' AUCs are
therefore those of the recipe the final model follows; fold 0 is the final validation split
(it holds the full-resolution subset's patients), so its run is the final model.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from models.training.data import Item, split_counts
from models.training.finish import (
    batchnorm_agreement,
    calibration,
    fit_temperature,
    fold_temperature,
    logits,
    reestimate_batchnorm,
)
from models.training.fit import Recipe, predict, train
from models.training.robustness import robustness
from pneumo_onnx.engine.runtime.metrics import evaluate, roc_auc

TARGET_SENSITIVITY = 0.95


def run_fold(
    build: Callable[[int], Any],
    recipe: Recipe,
    items: Sequence[Item],
    x: np.ndarray,
    folds: np.ndarray,
    fold: int,
    seed: int,
    names: tuple[str, str] = ("NORMAL", "PNEUMONIA"),
    log: Callable[[str], None] = print,
) -> tuple[Any, dict[str, Any]]:
    """The finished (calibrated) model of one fold and its figures, JSON-ready."""
    y = np.array([item.label for item in items])
    val = folds == fold
    x_train, y_train, x_val, y_val = x[~val], y[~val], x[val], y[val]
    model, history = train(build, recipe, x_train, y_train, x_val, y_val, seed, log)

    start = time.perf_counter()
    auc_before_bn = roc_auc(y_val, predict(model, x_val))
    agreement_before = _agreement(model, x_train, seed)
    bn_changes = reestimate_batchnorm(model, x_train)
    agreement_after = _agreement(model, x_train, seed)

    z = logits(model, x_val)
    temperature = fit_temperature(y_val, z)
    halves = _half_of(items, val)
    cross_fitted = []
    for half in (0, 1):  # T fitted on one half of the patients, judged on the other
        t = fit_temperature(y_val[halves == half], z[halves == half])
        other = halves != half
        cross_fitted.append(calibration(y_val[other], z[other] / t)["ece_10_bins"])
    fold_temperature(model, temperature)
    scores = predict(model, x_val)  # the saved model's own outputs
    figures = evaluate(y_val, scores, target_sensitivity=TARGET_SENSITIVITY)
    threshold = figures["recommended_threshold"]
    log(
        f"fold {fold}: AUC {figures['roc_auc']:.4f} (before batch-norm re-estimation "
        f"{auc_before_bn:.4f}), T {temperature:.3f}, threshold {threshold:.4f}: sensitivity "
        f"{figures['at_recommended']['sensitivity']:.3f}, specificity "
        f"{figures['at_recommended']['specificity']:.3f}"
    )
    result = {
        "fold": fold,
        "seed": seed,
        "recipe": recipe.to_dict(),
        "split": _split_record(items, folds, fold, names),
        "history": history,
        "val_auc": figures["roc_auc"],
        "val_auc_before_bn_reestimation": auc_before_bn,
        "batchnorm": {
            "reestimated_on_clean_train_images": len(x_train),
            "changes": bn_changes,
            "train_vs_inference_mode_before": agreement_before,
            "train_vs_inference_mode_after": agreement_after,
        },
        "calibration": {
            "temperature": temperature,
            "before": calibration(y_val, z),
            "after": calibration(y_val, z / temperature),
            "ece_after_cross_fitted_halves": cross_fitted,
        },
        "validation": figures,
        "validation_scores": scores.tolist(),  # for the report's reload check
        "robustness": robustness(lambda a: predict(model, a), x_val, y_val, threshold),
        "finish_seconds": round(time.perf_counter() - start, 1),
    }
    return model, result


def _agreement(model: Any, x_train: np.ndarray, seed: int) -> dict[str, Any]:
    """Training- vs inference-mode scores of 2048 clean training images, in batches of 32 (the
    training batch: noisy batch statistics) and of 512 (close to the population's)."""
    sample = x_train[np.random.default_rng(seed).permutation(len(x_train))[:2048]]
    return {f"batch_{b}": batchnorm_agreement(model, sample, batch=b) for b in (32, 512)}


def _half_of(items: Sequence[Item], mask: np.ndarray) -> np.ndarray:
    """0 or 1 per masked item, from a hash of its patient id: two patient-disjoint halves."""
    return np.array(
        [
            hashlib.sha256(item.patient.encode()).digest()[0] % 2
            for item, m in zip(items, mask, strict=True)
            if m
        ]
    )


def _split_record(
    items: Sequence[Item], folds: np.ndarray, fold: int, names: tuple[str, str]
) -> dict[str, Any]:
    """Images and patients per class on each side of this fold's split."""
    return {
        side: split_counts([item for item, m in zip(items, mask, strict=True) if m], names)
        for side, mask in (("train", folds != fold), ("val", folds == fold))
    }
