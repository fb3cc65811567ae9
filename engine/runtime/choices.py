"""The runtime's named choices, importable without onnxruntime or Pillow (the CLI builds its
options from them at start-up): execution devices and preprocessing paths."""

from __future__ import annotations

DEVICES = ("cpu", "cuda")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# auto (the default): fast where the model's conversion measured it faithful, else reference;
# fast: reduced-scale JPEG decoding; reference: exactly the model's own pipeline.
PREPROCESSING = ("auto", "fast", "reference")
