"""Keras/TF -> ONNX with tf2onnx, refusing any graph tf2onnx only half converted.

tf2onnx logs unsupported ops as errors and still returns a graph with TF ops left in it; we
collect its error log and scan the graph for non-ONNX ops, and fail naming each one.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import onnx
import tensorflow as tf
import tf2onnx
from onnx import numpy_helper

from pneumo_onnx.convert.source import LoadedSource
from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import ConversionError, first_line

DEFAULT_OPSET = 17


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def to_onnx(src: LoadedSource, contract: Contract, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert with a dynamic batch dimension; input/output named as in the contract."""
    spec = tf.TensorSpec((None, *contract.input_shape), tf.float32, name=contract.input.name)
    function = tf.function(src.call, input_signature=[spec], autograph=False)
    collector = _Collect()
    tf2onnx_log = logging.getLogger("tf2onnx")
    tf2onnx_log.addHandler(collector)
    try:
        model, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
    except Exception as e:  # tf2onnx raises bare ValueError/KeyError/RuntimeError from deep inside
        raise ConversionError(f"tf2onnx failed on {src.name}: {first_line(e)}") from e
    finally:
        tf2onnx_log.removeHandler(collector)
    foreign = Counter(
        node.op_type
        for node in model.graph.node
        if not onnx.defs.has(node.op_type, node.domain or "")
    )
    if foreign or collector.messages:
        ops = ", ".join(f"{op} (x{n})" for op, n in sorted(foreign.items())) or "none left"
        said = "; ".join(dict.fromkeys(collector.messages)) or "nothing"
        raise ConversionError(
            f"tf2onnx could not convert {src.name} to ONNX opset {opset}: unsupported ops: {ops}."
            f" tf2onnx said: {said}"
        )
    _bind_captured_tensors(model, function, contract.input.name)
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise ConversionError(
            f"converted graph has {len(model.graph.input)} inputs and {len(model.graph.output)} "
            "outputs: expected one image input and one score output"
        )
    _rename_output(model, contract.output.name)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    model.producer_name = "pneumo-onnx (tf2onnx)"
    model.doc_string = f"Converted from {src.name} ({src.format}) by pneumo-onnx."
    return model


def _bind_captured_tensors(model: onnx.ModelProto, function: Any, image: str) -> None:
    """Constants the traced function captured as tensors (Keras 3's Normalization layer keeps
    its mean and variance so: EfficientNet's and ConvNeXt's built-in preprocessing) come out of
    tf2onnx as extra graph inputs: bind each to its value, as an initializer."""
    graph = function.get_concrete_function().graph
    values = {
        inner.name: outer.numpy()
        for outer, inner in zip(graph.external_captures, graph.internal_captures, strict=True)
        if outer.dtype != tf.resource and hasattr(outer, "numpy")
    }
    for value in [v for v in model.graph.input if v.name != image and v.name in values]:
        model.graph.initializer.append(numpy_helper.from_array(values[value.name], value.name))
        model.graph.input.remove(value)


def _rename_output(model: onnx.ModelProto, new: str) -> None:
    old = model.graph.output[0].name
    if old == new:
        return
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    model.graph.output[0].name = new
