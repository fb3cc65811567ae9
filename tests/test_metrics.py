"""engine.runtime.metrics against small examples computed by hand (never against scikit-learn)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.metrics import (
    MIN_PER_CLASS,
    brier,
    confusion,
    evaluate,
    metrics_at,
    roc_auc,
    roc_curve,
    score_agreement,
    threshold_for_sensitivity,
    too_few,
    wilson_lower,
)

# Positives score 0.4, 0.35, 0.8; negatives 0.1, 0.4, 0.6: one positive ties one negative.
LABELS = np.array([0, 0, 1, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.4, 0.6, 0.35, 0.8])


def test_auc_counts_a_tie_as_one_half() -> None:
    # Pairs won by the positive: 0.4 beats 0.1 and ties 0.4 (1.5), 0.35 beats 0.1 (1),
    # 0.8 beats all three (3): 5.5 of 9.
    assert roc_auc(LABELS, SCORES) == pytest.approx(5.5 / 9)


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
        ([1, 0, 1, 0], [0.3, 0.7, 0.6, 0.2], 0.5),  # each positive beats one negative of two
        ([1, 0, 0, 1, 0], [0.5] * 5, 0.5),
        ([True, False, True], np.array([0.9, 0.1, 0.1], dtype=np.float32), 0.75),
    ],
    ids=["perfect", "inverted", "random-ish", "all-tied", "bool-labels-float32"],
)
def test_auc_small_cases(labels, scores, expected: float) -> None:
    assert roc_auc(labels, scores) == pytest.approx(expected)


def test_auc_matches_pair_counting_and_the_trapezoid_under_the_curve() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.5 + labels * 0.3, 1)  # coarse: many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    fpr, tpr, _ = roc_curve(labels, scores)
    trapezoid = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert roc_auc(labels, scores) == pytest.approx(pairs / (pos.size * neg.size))
    assert trapezoid == pytest.approx(roc_auc(labels, scores))


def test_roc_curve_points_follow_the_strict_rule() -> None:
    fpr, tpr, thresholds = roc_curve(LABELS, SCORES)
    assert thresholds.tolist() == [0.8, 0.6, 0.4, 0.35, 0.1, -math.inf]
    assert fpr.tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1])


def test_all_tied_scores_give_the_diagonal() -> None:
    fpr, tpr, thresholds = roc_curve([0, 1, 1], [0.5, 0.5, 0.5])
    assert (fpr.tolist(), tpr.tolist(), thresholds.tolist()) == ([0, 1], [0, 1], [0.5, -math.inf])


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (0.4, {"tp": 1, "fp": 1, "tn": 2, "fn": 2}),  # the tied 0.4s are both called negative
        (0.39, {"tp": 2, "fp": 2, "tn": 1, "fn": 1}),
        (0.8, {"tp": 0, "fp": 0, "tn": 3, "fn": 3}),
        (-math.inf, {"tp": 3, "fp": 3, "tn": 0, "fn": 0}),
    ],
    ids=["at-a-score", "just-below", "at-the-maximum", "minus-inf"],
)
def test_confusion_calls_positive_only_above_the_threshold(threshold: float, expected) -> None:
    assert confusion(LABELS, SCORES, threshold) == expected


def test_confusion_accepts_a_single_class() -> None:
    assert confusion([1, 1], [0.2, 0.7], 0.5) == {"tp": 1, "fp": 0, "tn": 0, "fn": 1}


def test_metrics_at_a_threshold() -> None:
    m = metrics_at(LABELS, SCORES, 0.4)
    assert m["threshold"] == 0.4
    assert m["confusion"] == {"tp": 1, "fp": 1, "tn": 2, "fn": 2}
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["sensitivity"] == pytest.approx(1 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.4)  # 2 * (1/2 * 1/3) / (1/2 + 1/3)


def test_precision_is_undefined_when_nothing_is_called_positive() -> None:
    m = metrics_at(LABELS, SCORES, 0.9)
    assert (m["precision"], m["f1"], m["sensitivity"], m["specificity"]) == (None, 0.0, 0.0, 1.0)


def test_brier() -> None:
    # Squared errors 0.01, 0.16, 0.36, 0.36, 0.4225, 0.04.
    assert brier(LABELS, SCORES) == pytest.approx(1.3525 / 6)
    assert brier([0, 1], [0.0, 1.0]) == 0.0


@pytest.mark.parametrize(
    ("target", "expected"),
    [(1.0, 0.1), (0.6, 0.35), (2 / 3, 0.35), (0.3, 0.6)],
    ids=["all", "two-of-three", "exactly-two-thirds", "one-of-three"],
)
def test_threshold_for_sensitivity(target: float, expected: float) -> None:
    threshold = threshold_for_sensitivity(LABELS, SCORES, target)
    assert threshold == expected
    assert metrics_at(LABELS, SCORES, threshold)["sensitivity"] >= target - 1e-12


def test_threshold_for_sensitivity_is_just_below_the_needed_positive() -> None:
    # Perfect separation: 0.8 must be called positive, so 0.8 itself is too high under `>`.
    assert threshold_for_sensitivity([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0) == 0.2


def test_threshold_for_sensitivity_can_require_calling_everything_positive() -> None:
    assert threshold_for_sensitivity([1, 0, 1], [0.1, 0.5, 0.9], 1.0) == -math.inf


def test_evaluate_bundles_everything_as_plain_json() -> None:
    report = evaluate(LABELS, SCORES, threshold=0.4, target_sensitivity=0.6)
    assert (report["n"], report["positives"], report["negatives"]) == (6, 3, 3)
    assert report["roc_auc"] == pytest.approx(5.5 / 9)
    assert report["brier"] == pytest.approx(1.3525 / 6)
    assert report["at_threshold"] == metrics_at(LABELS, SCORES, 0.4)
    assert (report["target_sensitivity"], report["recommended_threshold"]) == (0.6, 0.35)
    assert report["at_recommended"]["confusion"] == {"tp": 2, "fp": 2, "tn": 1, "fn": 1}
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_evaluate_with_caveats_recommends_nothing() -> None:
    """The reasons come with the figures; the figures at the threshold stay."""
    report = evaluate(LABELS, SCORES, threshold=0.4, caveats=["training images"])
    assert report["caveats"] == ["training images"]
    assert report["recommended_threshold"] is None and report["at_recommended"] is None
    assert report["at_threshold"] == metrics_at(LABELS, SCORES, 0.4)
    assert evaluate(LABELS, SCORES)["caveats"] == []


@pytest.mark.parametrize(
    ("negatives", "positives", "expected"),
    [
        (50, 50, None),
        (49, 500, "only 49 NORMAL and 500 PNEUMONIA images (under 50 of a class"),
        (500, 3, "only 500 NORMAL and 3 PNEUMONIA images (under 50 of a class"),
    ],
)
def test_too_few_images_of_a_class(negatives: int, positives: int, expected: str | None) -> None:
    reason = too_few([0] * negatives + [1] * positives)
    assert reason == expected if expected is None else reason.startswith(expected)
    assert MIN_PER_CLASS == 50


def test_evaluate_defaults() -> None:
    report = evaluate([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    assert report["at_threshold"]["threshold"] == 0.5
    assert report["target_sensitivity"] == 0.95
    assert report["recommended_threshold"] == 0.1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: roc_auc([0, 1, 1], [0.1, 0.2]),
            "ROC AUC needs one score per label, got 3 labels and 2 scores",
        ),
        (
            lambda: confusion([], [], 0.5),
            "a confusion matrix needs at least one labelled score, got empty arrays",
        ),
        (
            lambda: roc_auc([1, 1, 1], [0.1, 0.2, 0.3]),
            "ROC AUC needs both classes, got 3 PNEUMONIA and 0 NORMAL labels",
        ),
        (
            lambda: roc_curve([0, 0], [0.1, 0.2]),
            "a ROC curve needs both classes, got 0 PNEUMONIA and 2 NORMAL labels",
        ),
        (
            lambda: metrics_at([0, 0], [0.1, 0.2], 0.5),
            "sensitivity and specificity needs both classes, got 0 PNEUMONIA and 2 NORMAL",
        ),
        (
            lambda: evaluate([1], [0.9]),
            "an evaluation needs both classes, got 1 PNEUMONIA and 0 NORMAL labels",
        ),
        (
            lambda: roc_auc([0, 1, 1], [0.1, 0.2, math.nan]),
            "scores must be finite, got 1 NaN or infinite value(s), the first at index 2",
        ),
        (
            lambda: brier([0, 1], [math.inf, 0.2]),
            "scores must be finite, got 1 NaN or infinite value(s), the first at index 0",
        ),
        (
            lambda: roc_auc([0, 2, 1, 2], [0.1, 0.2, 0.3, 0.4]),
            "labels must be 0 (NORMAL) or 1 (PNEUMONIA), got [2] at 2 position(s)",
        ),
        (
            lambda: roc_auc(["NORMAL", "PNEUMONIA"], [0.1, 0.2]),
            "labels must be 0 (NORMAL) or 1 (PNEUMONIA), got dtype <U9",
        ),
        (
            lambda: roc_auc([0, 1], ["a", "b"]),
            "scores must be real numbers, got dtype <U1",
        ),
        (
            lambda: roc_auc([[0, 1]], [[0.1, 0.2]]),
            "ROC AUC needs 1-D labels and scores, got shapes (1, 2) and (1, 2)",
        ),
        (
            lambda: brier([0, 1], [-0.5, 1.5]),
            "the Brier score needs probabilities in [0, 1], got scores from -0.5 to 1.5",
        ),
        (
            lambda: confusion([0, 1], [0.1, 0.2], math.nan),
            "threshold must be a number, got NaN",
        ),
        (
            lambda: confusion([0, 1], [0.1, 0.2], "high"),
            "threshold must be a number, got 'high'",
        ),
        (
            lambda: threshold_for_sensitivity([0, 1], [0.1, 0.2], 0.0),
            "target sensitivity must be a number in (0, 1], got 0.0",
        ),
        (
            lambda: threshold_for_sensitivity([0, 1], [0.1, 0.2], 95),
            "target sensitivity must be a number in (0, 1], got 95",
        ),
        (
            lambda: threshold_for_sensitivity([0, 1], [0.1, 0.2], None),
            "target sensitivity must be a number in (0, 1], got None",
        ),
    ],
    ids=[
        "mismatched-lengths",
        "empty",
        "only-positives",
        "only-negatives-curve",
        "only-negatives-metrics",
        "only-one-image",
        "nan-score",
        "inf-score",
        "label-out-of-range",
        "string-labels",
        "string-scores",
        "two-dimensional",
        "brier-not-probabilities",
        "nan-threshold",
        "string-threshold",
        "target-zero",
        "target-as-percent",
        "target-none",
    ],
)
def test_degenerate_input_raises_a_usage_error(call, message: str) -> None:
    with pytest.raises(UsageError) as info:
        call()
    assert message in str(info.value)


def test_score_agreement_distribution_by_hand() -> None:
    reference = np.array([0.1, 0.2, 0.45, 0.55, 0.9])
    scores = np.array([0.1, 0.25, 0.52, 0.55, 0.7])  # |diff| 0, .05, .07, 0, .2; one label flips
    got = score_agreement(scores, reference, threshold=0.5)
    assert got["images"] == 5 and got["label_agreement"] == pytest.approx(0.8)
    assert got["median_score_diff"] == pytest.approx(0.05)
    assert got["max_score_diff"] == pytest.approx(0.2)
    # numpy's linear percentile: position 0.99 * (5 - 1) = 3.96 in the sorted differences.
    assert got["p99_score_diff"] == pytest.approx(0.07 + 0.96 * (0.2 - 0.07))
    assert got["agreement_lower_95"] == pytest.approx(wilson_lower(4, 5))
    assert got["near_threshold"] == 0


def test_score_agreement_judges_labels_only_away_from_the_threshold() -> None:
    """A reference score within `margin` of the threshold may change label under a re-encoding
    allowed to move it by `margin`: counted as near, not as a disagreement."""
    reference = np.array([0.1, 0.5 + 1e-8, 0.45, 0.9])
    scores = np.array([0.1, 0.5 - 1e-8, 0.52, 0.9])  # two flips: one by 2e-8, one by 0.07
    exact = score_agreement(scores, reference, threshold=0.5, margin=1e-5)
    assert (exact["near_threshold"], exact["label_agreement"]) == (1, pytest.approx(2 / 3))
    loose = score_agreement(scores, reference, threshold=0.5, margin=0.05)
    assert (loose["near_threshold"], loose["label_agreement"]) == (2, 1.0)
    assert loose["agreement_lower_95"] == pytest.approx(wilson_lower(2, 2))
    none_away = score_agreement([0.5], [0.5], threshold=0.5, margin=0.1)
    assert (none_away["label_agreement"], none_away["agreement_lower_95"]) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [(70, 70, 1 / (1 + 1.6449**2 / 70)), (6, 6, 1 / (1 + 1.6449**2 / 6)), (0, 10, 0.0)],
    ids=["70-of-70", "6-of-6", "none"],
)
def test_wilson_lower_bound(successes: int, n: int, expected: float) -> None:
    # All agreeing: the bound is 1 / (1 + z^2 / n), so 100% on 70 images promises >= 96.3%.
    assert wilson_lower(successes, n) == pytest.approx(expected)
    assert wilson_lower(70, 70) == pytest.approx(0.9628, abs=1e-4)


def test_score_agreement_refuses_mismatched_inputs() -> None:
    with pytest.raises(UsageError) as e:
        score_agreement([0.1, 0.2], [0.1])
    assert e.value.message == ("comparing scores needs one score per reference score, got 2 and 1")
    with pytest.raises(UsageError) as e:
        wilson_lower(0, 0)
    assert e.value.message == "a proportion needs at least one trial, got 0"


def test_confident_threshold_keeps_the_target_at_its_lower_bound() -> None:
    """20 positives scored 0.05 .. 1.0 and 20 negatives below: the plain threshold stops where
    19 of 20 positives are above it (0.95 exactly, on the edge); the confident one goes down
    until the Wilson lower bound of the sensitivity reaches 0.8."""
    positives = np.linspace(0.05, 1.0, 20)
    labels = np.array([1] * 20 + [0] * 20)
    scores = np.concatenate([positives, np.full(20, 0.01)])
    assert threshold_for_sensitivity(labels, scores, 0.95) == pytest.approx(0.05)
    assert threshold_for_sensitivity(labels, scores, 0.8) == pytest.approx(0.2)
    confident = threshold_for_sensitivity(labels, scores, 0.8, confident=True)
    called = int((positives > confident).sum())
    assert wilson_lower(called, 20) >= 0.8 > wilson_lower(called - 1, 20)
    assert threshold_for_sensitivity(labels, scores, 0.99, confident=True) == float("-inf")
