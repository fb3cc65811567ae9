"""The runtime's named choices, importable without onnxruntime or Pillow (the CLI builds its
options from them at start-up): execution devices and preprocessing paths."""

from __future__ import annotations

DEVICES = ("cpu", "cuda")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
PREPROCESSING = ("auto", "fast", "reference")
PREPROCESSING_HELP = (
    "auto: fast where the model's conversion measured it within 0.01 of the model's own "
    "pipeline on its probe X-rays, else reference (`pneumo info` says which and why); fast: "
    "reduced-scale JPEG decoding; reference: exactly the model's own pipeline"
)
