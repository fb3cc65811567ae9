"""The runtime's named choices, importable without onnxruntime or Pillow (the CLI builds its
options from them at start-up): execution devices and preprocessing paths."""

from __future__ import annotations

DEVICES = ("cpu", "cuda")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# fast: reduced-scale JPEG decoding (the default); reference: exactly as in training.
PREPROCESSING = ("fast", "reference")
