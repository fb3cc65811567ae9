"""The variant table: one gate per kind of variant, judged on score_agreement's figures."""

from __future__ import annotations

import pytest

from pneumo_onnx.engine.repository.variants import GATES, OPTIONAL_VARIANTS, VARIANTS, Gate


def test_one_gate_per_kind() -> None:
    kinds = {key: v.gate.kind for key, v in VARIANTS.items()}
    assert kinds == {
        "fp32": "exact",
        "int8": "int8",
        "int8-full": "int8",
        "fp16": "fp16",
        "tflite": "exact",
        "tflite-dynamic": "int8",
        "ort": "exact",
    }
    assert all(v.gate is GATES[v.gate.kind] for v in OPTIONAL_VARIANTS.values())


def figures(agreement: float, p99: float, top: float) -> dict[str, float]:
    return {"label_agreement": agreement, "p99_score_diff": p99, "max_score_diff": top}


@pytest.mark.parametrize(
    ("gate", "seen", "misses"),
    [
        (GATES["int8"], figures(1.0, 0.04, 0.3), []),  # one outlier: the max is not gated
        (GATES["int8"], figures(0.99, 0.05, 0.05), []),  # bounds are inclusive
        (
            GATES["int8"],
            figures(0.9857, 0.2366, 0.3194),
            ["label agreement 98.57% < 99%", "p99 score diff 2.37e-01 > 0.05"],
        ),
        (GATES["exact"], figures(1.0, 1e-6, 2e-5), ["max score diff 2.00e-05 > 1e-05"]),
        (GATES["fp16"], figures(1.0, 6e-3, 6e-3), ["p99 score diff 6.00e-03 > 0.005"]),
    ],
    ids=["int8-outlier", "int8-on-bounds", "int8-full-trained", "exact-max", "fp16-p99"],
)
def test_gate_misses(gate: Gate, seen: dict[str, float], misses: list[str]) -> None:
    assert gate.misses(seen) == misses


def test_gate_describes_itself() -> None:
    assert GATES["int8"].describe() == "int8 gate: p99 <= 0.05, agreement >= 99%"
    assert GATES["exact"].describe() == (
        "exact gate: max <= 1e-05, p99 <= 1e-05, agreement >= 100%"
    )
