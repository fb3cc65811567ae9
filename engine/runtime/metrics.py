"""Binary classification metrics for P(PNEUMONIA) scores, in numpy alone.

The training script, the validator and the benchmarks judge a model with these, and the engine
must stay free of TensorFlow and scikit-learn, so the few metrics we need are written out here.

Conventions: `labels` are 0 (NORMAL) or 1 (PNEUMONIA); `scores` are P(PNEUMONIA); an image is
called positive when its score is strictly greater than the threshold (as the engine does), so
a threshold equal to a score calls that image negative. Degenerate input raises UsageError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pneumo_onnx.engine.errors import UsageError

# Tolerance when comparing a rate such as 19/20 with a target typed as 0.95.
_RATE_EPS = 1e-12
# Fewer images of a class than this, and a threshold chosen on them is mostly chance: with 50,
# one image moves sensitivity or specificity by 0.02, and at a rate of 0.95 its 95% interval
# is still about +-0.06.
MIN_PER_CLASS = 50


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve, exactly: the Mann-Whitney probability that a random positive
    scores above a random negative, ties counting one half (average ranks)."""
    y, s = _checked(labels, scores, "ROC AUC", both_classes=True)
    ranks = _midranks(s)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def roc_auc_interval(labels: ArrayLike, scores: ArrayLike, level: float = 0.95) -> dict[str, Any]:
    """A confidence interval of the ROC AUC by DeLong's method (DeLong et al. 1988; the
    structural components from mid-ranks, Sun & Xu 2014), taken on the logit scale so that it
    stays inside (0, 1) near AUC 1, where a model like ours sits. `low`/`high` are None where
    the variance is 0 (no score of one class among the other's: a perfect AUC on a sample says
    nothing of its spread) or a class has one image; `why` says so. No resampling: the same
    scores always give the same interval."""
    y, s = _checked(labels, scores, "a ROC AUC interval", both_classes=True)
    pos, neg = s[y], s[~y]
    m, n = pos.size, neg.size
    everyone = _midranks(s)
    # v10[i]: share of negatives below positive i; v01[j]: share of positives above negative j
    # (ties count one half); each averages to the AUC.
    v10 = (everyone[y] - _midranks(pos)) / n
    v01 = 1.0 - (everyone[~y] - _midranks(neg)) / m
    auc = float(v10.mean())
    out: dict[str, Any] = {
        "level": level,
        "method": "DeLong, logit scale",
        "low": None,
        "high": None,
        "why": None,
    }
    variance = float(v10.var(ddof=1) / m + v01.var(ddof=1) / n) if min(m, n) > 1 else 0.0
    if variance <= 0.0 or not 0.0 < auc < 1.0:
        out["why"] = (
            "one image of a class" if min(m, n) < 2 else "the two classes' scores do not overlap"
        )
        return out
    z = NormalDist().inv_cdf(0.5 + level / 2)  # 1.96 at 95%: no scipy in the engine
    centre = math.log(auc / (1.0 - auc))
    half = z * math.sqrt(variance) / (auc * (1.0 - auc))
    out["low"], out["high"] = (1.0 / (1.0 + math.exp(-(centre + d))) for d in (-half, half))
    return out


def auc_phrase(auc: float, interval: dict[str, Any] | None) -> str:
    """'ROC AUC 0.973 (95% CI 0.958 to 0.984, DeLong)': three decimals, as many as an
    interval on a few hundred images can carry."""
    if interval is None:
        return f"ROC AUC {auc:.3f}"
    level = f"{interval['level']:.0%}"
    if interval["low"] is None:
        return f"ROC AUC {auc:.3f} (no {level} CI: {interval['why']})"
    return (
        f"ROC AUC {auc:.3f} ({level} CI {interval['low']:.3f} to {interval['high']:.3f}, "
        f"{interval['method']})"
    )


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points from (0, 0) to (1, 1): `(fpr, tpr, thresholds)`.

    Point i holds the rates of `score > thresholds[i]`: thresholds are the distinct scores in
    descending order (the first one calls nothing positive), then -inf (everything positive).
    """
    y, s = _checked(labels, scores, "a ROC curve", both_classes=True)
    thresholds = np.append(np.unique(s)[::-1], -np.inf)
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    tp = pos.size - np.searchsorted(pos, thresholds, "right")
    fp = neg.size - np.searchsorted(neg, thresholds, "right")
    return fp / neg.size, tp / pos.size, thresholds


def precision_recall_curve(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, float]:
    """`(recall, precision, average_precision)` at the ROC curve's thresholds where at least
    one image is called positive; AP = sum of precision x recall step (no interpolation)."""
    y, _ = _checked(labels, scores, "a precision-recall curve", both_classes=True)
    fpr, tpr, _ = roc_curve(labels, scores)
    tp, fp = tpr * y.sum(), fpr * (~y).sum()
    called = tp + fp > 0
    recall, precision = tpr[called], tp[called] / (tp + fp)[called]
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return recall, precision, ap


def calibration_bins(
    labels: ArrayLike, scores: ArrayLike, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Reliability diagram data over `bins` equal-width score bins: `(mean score, fraction
    positive, count)` per bin (NaN where empty) and the expected calibration error."""
    y, s = _checked(labels, scores, "a calibration diagram")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, s, "right") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(index, weights=s, minlength=bins) / count
        positive = np.bincount(index, weights=y.astype(float), minlength=bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(mean_score - positive)[filled]) / y.size)
    return mean_score, positive, count.astype(int), ece


def confusion(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, int]:
    """Counts of true/false positives/negatives when positive means `score > threshold`."""
    y, s = _checked(labels, scores, "a confusion matrix")
    predicted = s > _checked_threshold(threshold)
    return {
        "tp": int(np.sum(predicted & y)),
        "fp": int(np.sum(predicted & ~y)),
        "tn": int(np.sum(~predicted & ~y)),
        "fn": int(np.sum(~predicted & y)),
    }


def metrics_at(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, precision and F1 at one threshold.

    `precision` is None when no image is called positive (it is undefined, not 0); F1 is
    computed as 2tp / (2tp + fp + fn), which stays defined there.
    """
    _checked(labels, scores, "sensitivity and specificity", both_classes=True)
    c = confusion(labels, scores, threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {
        "threshold": float(threshold),
        "accuracy": (tp + tn) / (tp + fp + tn + fn),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "precision": tp / (tp + fp) if tp + fp else None,
        "f1": 2 * tp / (2 * tp + fp + fn),
        "confusion": c,
    }


def brier(labels: ArrayLike, scores: ArrayLike) -> float:
    """Mean squared distance between P(PNEUMONIA) and the label: calibration and sharpness."""
    y, s = _checked(labels, scores, "the Brier score")
    if s.min() < 0 or s.max() > 1:
        raise UsageError(
            f"the Brier score needs probabilities in [0, 1], got scores from {s.min():g} "
            f"to {s.max():g}"
        )
    return float(np.mean((s - y) ** 2))


def threshold_for_sensitivity(
    labels: ArrayLike, scores: ArrayLike, target: float, confident: bool = False
) -> float:
    """The highest threshold on the ROC curve (an observed score, or -inf) at which
    `score > threshold` reaches sensitivity >= `target`; with `confident`, at which even the
    sensitivity's one-sided 95% lower confidence bound (Wilson, over the positives) reaches it:
    the threshold a model can ship with, where the plain one sits on the edge of the target.

    Any threshold between it and the next higher score gives the same calls on these data;
    the observed score is the most sensitive of them. -inf means only calling every image
    positive reaches the target.
    """
    try:
        goal = float(target)
    except (TypeError, ValueError) as e:
        raise UsageError(f"target sensitivity must be a number in (0, 1], got {target!r}") from e
    if not 0 < goal <= 1:  # also false for NaN
        raise UsageError(f"target sensitivity must be a number in (0, 1], got {target!r}")
    _, tpr, thresholds = roc_curve(labels, scores)
    if confident:
        positives = int(np.asarray(labels).astype(bool).sum())
        tpr = np.array([wilson_lower(round(r * positives), positives) for r in tpr])
        if tpr[-1] < goal - _RATE_EPS:  # even calling everything positive cannot promise it
            return float("-inf")
    # tpr rises as the threshold falls, and reaches 1 at -inf, so a first match always exists.
    first = int(np.argmax(tpr >= goal - _RATE_EPS))
    return float(thresholds[first])


def too_few(labels: ArrayLike, names: tuple[str, str] = ("NORMAL", "PNEUMONIA")) -> str | None:
    """Why these labels are too few to choose a threshold on (under MIN_PER_CLASS images of a
    class), or None."""
    y = np.asarray(labels).astype(bool)
    counts = (int((~y).sum()), int(y.sum()))
    if min(counts) >= MIN_PER_CLASS:
        return None
    return (
        f"only {counts[0]} {names[0]} and {counts[1]} {names[1]} images (under "
        f"{MIN_PER_CLASS} of a class, each image moves the figures a lot)"
    )


def evaluate(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float = 0.5,
    target_sensitivity: float = 0.95,
    caveats: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything a training or validation report needs, JSON-ready (plain ints and floats;
    `recommended_threshold` may be -inf, see threshold_for_sensitivity).

    `caveats` say why these data cannot choose a threshold (too few images, see too_few; the
    model's own training images): with any, `recommended_threshold` and `at_recommended` are
    None, and the caveats are in the result, for every front door to show.
    """
    y, _ = _checked(labels, scores, "an evaluation", both_classes=True)
    recommended = None if caveats else threshold_for_sensitivity(labels, scores, target_sensitivity)
    return {
        "n": int(y.size),
        "positives": int(y.sum()),
        "negatives": int((~y).sum()),
        "roc_auc": roc_auc(labels, scores),
        "roc_auc_ci": roc_auc_interval(labels, scores),
        "brier": brier(labels, scores),
        "at_threshold": metrics_at(labels, scores, threshold),
        "target_sensitivity": float(target_sensitivity),
        "caveats": list(caveats),
        "recommended_threshold": recommended,
        "at_recommended": None if recommended is None else metrics_at(labels, scores, recommended),
    }


def score_agreement(
    scores: ArrayLike, reference: ArrayLike, threshold: float = 0.5, margin: float = 0.0
) -> dict[str, Any]:
    """How closely one pipeline's scores follow a reference's on the same images: the
    distribution of |difference| (median, p99, max) and the share given the same label, with
    its one-sided 95% lower confidence bound (Wilson), which says what the share can promise
    for new images: 100% on 70 images bounds it only to >= 96.3%.

    Labels are compared on the images whose reference score is more than `margin` from the
    threshold: a score the other pipeline may move by `margin` can cross it there without
    anything being wrong (a score 1e-7 from the threshold flips under any re-encoding). Those
    images are counted (`near_threshold`), not judged. Variants are gated on these figures
    (engine.repository.variants.Gate)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    r = np.asarray(reference, dtype=np.float64).reshape(-1)
    if s.shape != r.shape or s.size == 0:
        raise UsageError(
            f"comparing scores needs one score per reference score, got {s.size} and {r.size}"
        )
    t = _checked_threshold(threshold)
    diff = np.abs(s - r)
    away = np.abs(r - t) > margin
    judged = int(away.sum())
    same = int(np.sum(((s > t) == (r > t)) & away))
    return {
        "images": int(s.size),
        "near_threshold": int(s.size - judged),
        "label_agreement": same / judged if judged else 1.0,
        "agreement_lower_95": wilson_lower(same, judged) if judged else 0.0,
        "median_score_diff": float(np.median(diff)),
        "p99_score_diff": float(np.percentile(diff, 99)),
        "max_score_diff": float(diff.max()),
    }


def wilson_lower(successes: int, n: int, z: float = 1.6449) -> float:
    """One-sided lower confidence bound of a proportion (Wilson score; z=1.645: 95%)."""
    if n <= 0:
        raise UsageError(f"a proportion needs at least one trial, got {n}")
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based rank of each value among `x`; tied values share their mean rank."""
    ordered = np.sort(x)
    return (np.searchsorted(ordered, x, "left") + np.searchsorted(ordered, x, "right") + 1) / 2


def _checked(
    labels: ArrayLike, scores: ArrayLike, purpose: str, both_classes: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Labels as a bool array and scores as float64, or a UsageError saying what is wrong."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise UsageError(
            f"{purpose} needs 1-D labels and scores, got shapes {y.shape} and {s.shape}"
        )
    if y.size != s.size:
        raise UsageError(
            f"{purpose} needs one score per label, got {y.size} labels and {s.size} scores"
        )
    if y.size == 0:
        raise UsageError(f"{purpose} needs at least one labelled score, got empty arrays")
    if y.dtype != bool:
        if not np.issubdtype(y.dtype, np.number):
            raise UsageError(f"labels must be 0 (NORMAL) or 1 (PNEUMONIA), got dtype {y.dtype}")
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise UsageError(
                "labels must be 0 (NORMAL) or 1 (PNEUMONIA), got "
                f"{np.unique(y[bad])[:5].tolist()} at {int(bad.sum())} position(s)"
            )
        y = y == 1
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise UsageError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        raise UsageError(
            f"scores must be finite, got {int(bad.sum())} NaN or infinite value(s), "
            f"the first at index {int(np.argmax(bad))}"
        )
    if both_classes and (y.all() or not y.any()):
        raise UsageError(
            f"{purpose} needs both classes, got {int(y.sum())} PNEUMONIA and "
            f"{int((~y).sum())} NORMAL labels"
        )
    return y, s


def _checked_threshold(threshold: float) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError) as e:
        raise UsageError(f"threshold must be a number, got {threshold!r}") from e
    if math.isnan(t):
        raise UsageError("threshold must be a number, got NaN")
    return t
