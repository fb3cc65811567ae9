"""pneumo-onnx engine: score chest X-rays with an ONNX model, TensorFlow-free.

Importing this package must never import tensorflow, keras or tf2onnx (tested).
"""

from __future__ import annotations

__version__ = "0.1.0"
