"""The ROC AUC's 95% interval (DeLong, on the logit scale): by hand on a small case, against the
pairwise definition on a larger one, and where it cannot be given."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pneumo_onnx.engine.runtime.metrics import auc_phrase, evaluate, roc_auc, roc_auc_interval


def expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_delong_by_hand() -> None:
    """Positives 0.9, 0.8, 0.4 and negatives 0.7, 0.3, 0.5: the positives beat 3, 3 and 1 of
    the negatives (V10 = 1, 1, 1/3), the negatives are beaten by 2, 3 and 2 positives (V01 =
    2/3, 1, 2/3); AUC 7/9, variance var(V10)/3 + var(V01)/3 = (4/27)/3 + (1/27)/3 = 5/81."""
    labels = [1, 1, 1, 0, 0, 0]
    scores = [0.9, 0.8, 0.4, 0.7, 0.3, 0.5]
    auc = 7 / 9
    se_logit = math.sqrt(5 / 81) / (auc * (1 - auc))
    centre = math.log(auc / (1 - auc))
    z = 1.959963984540054
    ci = roc_auc_interval(labels, scores)
    assert roc_auc(labels, scores) == pytest.approx(auc)
    assert ci["low"] == pytest.approx(expit(centre - z * se_logit), abs=1e-12)
    assert ci["high"] == pytest.approx(expit(centre + z * se_logit), abs=1e-12)
    assert (ci["low"], ci["high"]) == pytest.approx((0.17298, 0.98321), abs=1e-5)
    assert ci["method"] == "DeLong, logit scale" and ci["level"] == 0.95
    assert auc_phrase(auc, ci) == "ROC AUC 0.778 (95% CI 0.173 to 0.983, DeLong, logit scale)"


def test_delong_matches_the_pairwise_definition_with_ties() -> None:
    """The mid-rank shortcut equals DeLong's structural components written as pairs, ties
    counting one half (scores rounded to make ties)."""
    rng = np.random.default_rng(20180222)
    y = rng.integers(0, 2, 120)
    s = np.round(rng.normal(size=120) + 1.2 * y, 1)
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc = psi.mean()
    var = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    half = 1.959963984540054 * math.sqrt(var) / (auc * (1 - auc))
    centre = math.log(auc / (1 - auc))
    ci = roc_auc_interval(y, s)
    assert roc_auc(y, s) == pytest.approx(auc)
    assert ci["low"] == pytest.approx(expit(centre - half))
    assert ci["high"] == pytest.approx(expit(centre + half))
    assert ci["low"] < auc < ci["high"]


@pytest.mark.parametrize(
    ("labels", "scores", "why"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], "the two classes' scores do not overlap"),
        ([0, 1, 1], [0.5, 0.2, 0.9], "one image of a class"),
    ],
    ids=["separated", "one-negative"],
)
def test_no_interval_where_delong_has_none(
    labels: list[int], scores: list[float], why: str
) -> None:
    ci = roc_auc_interval(labels, scores)
    assert ci["low"] is None and ci["high"] is None and ci["why"] == why
    assert auc_phrase(roc_auc(labels, scores), ci).endswith(f"(no 95% CI: {why})")


def test_evaluate_carries_the_interval() -> None:
    labels = [1, 1, 1, 0, 0, 0]
    scores = [0.9, 0.8, 0.4, 0.7, 0.3, 0.5]
    assert evaluate(labels, scores)["roc_auc_ci"] == roc_auc_interval(labels, scores)
