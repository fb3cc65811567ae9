"""The fast path's fidelity: measured per model on real X-rays, and the one rule (`verdict`)
that conversions and the engine's `auto` both apply to the figures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pneumo_onnx import Engine
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.repository.manifest import Manifest
from pneumo_onnx.engine.repository.sections import FastPathFigures, Preprocessing
from pneumo_onnx.engine.runtime.fidelity import choose, measure, verdict

BICUBIC = Contract(input=InputSpec(height=32, width=32))
NEAREST = Contract(input=InputSpec(height=32, width=32, resize_filter="nearest"))


def figures(**changes: Any) -> FastPathFigures:
    base = FastPathFigures(
        images=70,
        shortcut_images=58,
        exact_by_construction=False,
        max_score_diff=0.005,
        p99_score_diff=0.002,
        mean_score_diff=0.0005,
        label_changes=0,
        label_changes_away_from_threshold=0,
        largest_threshold_distance_of_a_change=0.0,
        threshold=0.5,
    )
    return replace(base, **changes)


def test_measure_on_real_samples(write_model, samples: list[Path]) -> None:
    engine = Engine.load(write_model(contract=BICUBIC))
    got = measure(engine.scores, samples, BICUBIC)
    assert (got.images, got.shortcut_images, got.exact_by_construction) == (6, 6, False)
    assert 0 < got.max_score_diff < 0.01 and got.label_changes == 0
    assert verdict(got, BICUBIC) == (
        "reference",
        "fast measured on too few large X-rays: it departs from the reference only on images "
        "of 256 px or more on a side, and 6 of the 6 probe X-rays were (20 needed; max score "
        f"diff {got.max_score_diff:.4f} on 6 probe X-rays): convert with --images DIR "
        "holding at least 20 X-rays that large to measure it",
    )
    exact = measure(engine.scores, samples, NEAREST)
    assert (exact.shortcut_images, exact.max_score_diff) == (0, 0.0)
    assert exact.exact_by_construction is True
    assert verdict(exact, NEAREST)[0] == "fast"


@pytest.mark.parametrize(
    ("changes", "path", "reason"),
    [
        ({}, "fast", "fast stays within 0.01 of reference: max score diff 0.0050 on 70 probe"),
        (
            {"max_score_diff": 0.0101},
            "reference",
            "fast differs from reference by up to 0.0101 (0 label changes away from the "
            "threshold) on 70 probe X-rays: over the 0.01 bound",
        ),
        (
            {"label_changes_away_from_threshold": 1},
            "reference",
            "(1 label changes away from the threshold)",
        ),
        (
            {"shortcut_images": 19},
            "reference",
            "256 px or more on a side, and 19 of the 70 probe X-rays were (20 needed",
        ),
    ],
    ids=["within", "over", "label-change", "too-few"],
)
def test_verdict(changes: dict[str, Any], path: str, reason: str) -> None:
    got = verdict(figures(**changes), BICUBIC)
    assert got[0] == path and reason in got[1]


def test_exact_filters_need_no_full_size_evidence() -> None:
    path, why = verdict(figures(shortcut_images=0, max_score_diff=0.0), NEAREST)
    assert path == "fast" and why.startswith("fast is exact for the nearest filter")


def test_choose() -> None:
    manifest = Manifest(preprocessing=Preprocessing(figures(), "fast", "measured"))
    assert choose("auto", BICUBIC, manifest)[0] == "fast"
    assert choose("reference", BICUBIC, manifest) == (
        "reference",
        "--preprocessing reference asked for",
    )
    assert choose("auto", BICUBIC, Manifest()) == (
        "reference",
        "no measured fast-path figures (its manifest predates them): the reference pipeline, "
        "the faithful one (--preprocessing fast overrides)",
    )
    tf = Contract(input=InputSpec(height=32, width=32, resize_filter="tf-bilinear"))
    assert choose("auto", tf, None)[0] == "fast"
    with pytest.raises(UsageError, match="preprocessing must be one of auto, fast, reference"):
        choose("quick", BICUBIC, None)


def test_measure_needs_images() -> None:
    with pytest.raises(UsageError, match="no X-rays to measure the fast preprocessing path on"):
        measure(lambda x: x[:, 0, 0, 0], [], BICUBIC)
