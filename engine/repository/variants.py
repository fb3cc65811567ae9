"""THE table of the files a model version can hold: key -> file name, runtime, and the gate a
variant must pass against its reference before `pneumo convert` keeps it.

`convert` builds the variants (convert/variants.py); the engine, the server and the CLI only
read which keys exist and which file each names. Adding a variant starts here.
"""

from __future__ import annotations

from dataclasses import dataclass

FP32 = "fp32"


@dataclass(frozen=True)
class Variant:
    key: str
    filename: str
    runtime: str  # which runtime loads it: onnxruntime | tflite
    compare_to: str  # the reference it is gated against: onnx (the fp32 ONNX) | keras (source)
    max_score_diff: float  # gate: largest |score - reference score| allowed on the probes
    min_agreement: float  # gate: smallest share of probes with the reference's label
    about: str


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant(FP32, "model.onnx", "onnxruntime", "keras", 1e-5, 1.0, "fp32, the reference"),
        Variant(
            "int8",
            "model.int8.onnx",
            "onnxruntime",
            "onnx",
            0.05,
            0.99,
            "static QDQ int8, per-channel weights, calibrated on real X-rays; first conv fp32",
        ),
        Variant(
            "int8-full",
            "model.int8-full.onnx",
            "onnxruntime",
            "onnx",
            0.5,  # gated on label agreement: single scores near the middle move by up to ~0.3
            0.99,
            "static QDQ int8, every layer quantized: fastest on VNNI CPUs, least faithful",
        ),
        Variant(
            "fp16",
            "model.fp16.onnx",
            "onnxruntime",
            "onnx",
            5e-3,
            0.99,
            "fp16 weights and compute for CUDA; fp32 inputs and outputs",
        ),
        Variant("tflite", "model.tflite", "tflite", "keras", 1e-5, 1.0, "TensorFlow Lite fp32"),
        Variant(
            "tflite-dynamic",
            "model.dynamic.tflite",
            "tflite",
            "keras",
            0.05,
            0.99,
            "TensorFlow Lite, dynamic-range int8 weights",
        ),
        Variant(
            "ort",
            "model.ort",
            "onnxruntime",
            "onnx",
            1e-5,
            1.0,
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
