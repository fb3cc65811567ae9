"""pneumo-onnx engine: score chest X-rays with an ONNX model, TensorFlow-free.

    from engine import Engine
    result = Engine.load().predict("xray.jpeg")

Importing this package must never import tensorflow, keras or tf2onnx (tested).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from engine.runtime.engine import Engine


def __getattr__(name: str) -> Any:
    # Lazy: `import engine` (and `pneumo --help`) stays free of onnxruntime's import cost.
    if name == "Engine":
        from engine.runtime.engine import Engine

        return Engine
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = ["Engine", "__version__"]
