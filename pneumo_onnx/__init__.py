"""pneumo-onnx: run Keras pneumonia-detection CNNs with onnxruntime, without TensorFlow.

    from pneumo_onnx import Engine

    with Engine.load() as engine:             # the shipped model; or Engine.load("repo/")
        print(engine.predict("xray.jpeg"))    # {'prediction': 'PNEUMONIA', ...}

The engine lives in `pneumo_onnx.engine` (TensorFlow-free), the conversion stage in
`pneumo_onnx.convert` (the 'convert' extra). Importing this package imports neither
onnxruntime nor TensorFlow: `Engine` loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pneumo_onnx.engine.contract import Contract
    from pneumo_onnx.engine.errors import PneumoError
    from pneumo_onnx.engine.runtime.engine import Engine

_LAZY = {
    "Engine": "pneumo_onnx.engine.runtime.engine",
    "Contract": "pneumo_onnx.engine.contract",
    "PneumoError": "pneumo_onnx.engine.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pneumo_onnx' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module), name)


__all__ = ["Contract", "Engine", "PneumoError", "__version__"]
