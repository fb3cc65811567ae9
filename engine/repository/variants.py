"""THE table of the files a model version can hold: key -> file name, runtime, and the gate a
variant must pass against its reference before `pneumo convert` keeps it.

`convert` builds the variants (convert/variants.py) and measures them (the figures of
`engine.runtime.metrics.score_agreement`); the gates below judge those figures. The engine, the
server and the CLI only read which keys exist and which file each names. Adding a variant
starts here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

FP32 = "fp32"


@dataclass(frozen=True)
class Gate:
    """What a variant must show on every probe image, against its reference.

    A maximum over N images is the most extreme of N draws: it grows with N and says little
    about the next image (int8, trained model: max 0.04 on 70 probes, 0.11 on 624 other X-rays).
    Approximate variants are therefore gated on the 99th percentile of |score difference| and on
    label agreement, both of which settle as N grows; only exact re-encodings of the fp32
    arithmetic bound every single image.
    """

    kind: str
    p99_score_diff: float  # bound on the 99th percentile of |score - reference score|
    min_agreement: float  # smallest share of images given the reference's label
    max_score_diff: float | None = None  # bound on every image (exact re-encodings only)

    @property
    def margin(self) -> float:
        """How near the threshold a reference score may lie and still change label legally:
        the score difference this gate allows."""
        return self.max_score_diff if self.max_score_diff is not None else self.p99_score_diff

    def misses(self, figures: Mapping[str, Any]) -> list[str]:
        """Each way `figures` (score_agreement's) falls short of this gate; empty: it passes."""
        found = []
        if figures["label_agreement"] < self.min_agreement:
            found.append(
                f"label agreement {figures['label_agreement']:.2%} < {self.min_agreement:.0%}"
            )
        if figures["p99_score_diff"] > self.p99_score_diff:
            found.append(
                f"p99 score diff {figures['p99_score_diff']:.2e} > {self.p99_score_diff:g}"
            )
        if self.max_score_diff is not None and figures["max_score_diff"] > self.max_score_diff:
            found.append(
                f"max score diff {figures['max_score_diff']:.2e} > {self.max_score_diff:g}"
            )
        return found

    def for_model(self, tolerance: float) -> Gate:
        """This gate for a model whose fp32 parity bound is `tolerance` (measured from its
        own noise at conversion): an exact re-encoding is held to that bound; the others'
        bounds are precision losses far above any fp32 noise, and stay."""
        if self.kind != "exact":
            return self
        return replace(self, p99_score_diff=tolerance, max_score_diff=tolerance)

    def describe(self) -> str:
        bound = f"max <= {self.max_score_diff:g}, " if self.max_score_diff is not None else ""
        return (
            f"{self.kind} gate: {bound}p99 <= {self.p99_score_diff:g}, "
            f"agreement >= {self.min_agreement:.0%}"
        )


# One gate per kind of variant. Trained reference model, 698 X-rays (200 full-resolution, 498
# Kermany 224 px): int8 p99 0.021 (max 0.037), tflite-dynamic p99 0.017, fp16 p99 0.002, each
# 100% agreement; int8-full p99 0.237 with 98.6% agreement: it misses the int8 gate.
GATES: dict[str, Gate] = {
    g.kind: g
    for g in (
        # The same fp32 arithmetic in another container (TFLite, ORT format): every image,
        # within the model's own fp32 parity bound (`for_model`; 1e-5 is the floor).
        Gate("exact", p99_score_diff=1e-5, min_agreement=1.0, max_score_diff=1e-5),
        Gate("fp16", p99_score_diff=5e-3, min_agreement=0.99),
        Gate("int8", p99_score_diff=0.05, min_agreement=0.99),
    )
}


@dataclass(frozen=True)
class Variant:
    key: str
    filename: str
    runtime: str  # which runtime loads it: onnxruntime | tflite
    compare_to: str  # the reference it is gated against: onnx (the fp32 ONNX) | keras (source)
    gate: Gate
    about: str


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant(FP32, "model.onnx", "onnxruntime", "keras", GATES["exact"], "fp32, the reference"),
        Variant(
            "int8",
            "model.int8.onnx",
            "onnxruntime",
            "onnx",
            GATES["int8"],
            "static QDQ int8, per-channel weights, calibrated on real X-rays; first conv fp32, "
            "and the first layers too where the calibration X-rays show they lose too much",
        ),
        Variant(
            "int8-full",
            "model.int8-full.onnx",
            "onnxruntime",
            "onnx",
            GATES["int8"],
            "static QDQ int8, every layer quantized (but the first layers where the calibration "
            "X-rays show they lose too much): fastest on VNNI CPUs, least faithful",
        ),
        Variant(
            "fp16",
            "model.fp16.onnx",
            "onnxruntime",
            "onnx",
            GATES["fp16"],
            "fp16 weights and compute for CUDA (BatchNormalization folded first; the first "
            "layers fp32 where the calibration X-rays show they lose too much); fp32 inputs "
            "and outputs",
        ),
        Variant(
            "tflite", "model.tflite", "tflite", "keras", GATES["exact"], "TensorFlow Lite fp32"
        ),
        Variant(
            "tflite-dynamic",
            "model.dynamic.tflite",
            "tflite",
            "keras",
            GATES["int8"],
            "TensorFlow Lite, dynamic-range int8 weights",
        ),
        Variant(
            "ort",
            "model.ort",
            "onnxruntime",
            "onnx",
            GATES["exact"],
            "ORT format (basic optimizations) for onnxruntime mobile builds",
        ),
    )
}

# What `pneumo convert --variants` may build besides the fp32 model it always writes.
OPTIONAL_VARIANTS: dict[str, Variant] = {k: v for k, v in VARIANTS.items() if k != FP32}
# What the engine can load (onnxruntime): key -> file name, the choices of --variant.
VARIANT_FILES: dict[str, str] = {
    k: v.filename for k, v in VARIANTS.items() if v.runtime == "onnxruntime"
}


def variant_of(filename: str) -> str:
    """The key of a file name (a plain .onnx file of any other name is fp32)."""
    return next((k for k, f in VARIANT_FILES.items() if f == filename), FP32)
