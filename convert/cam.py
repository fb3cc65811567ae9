"""Expose the last convolutional feature map as an extra ONNX output, for class activation maps.

Only for models whose classifier is `GlobalAveragePooling2D -> [Dropout] -> Dense` (sigmoid, or a
2-unit softmax): the Dense weights then turn the feature map into a CAM with numpy alone
(engine/cam.py). The output is added with an Identity node named `feature_map` after the score
output, and the weights go into the metadata (`pneumo.cam`). Before anything is kept, the
score rebuilt from the feature map and the weights must equal the model's own score; a model
where it does not gets no CAM output (heatmaps then use occlusion), never a wrong one.

`with_scale` then measures the model's heatmap colour scale on the real probe X-rays, stored in
the same metadata, so pictures of one model share one scale (engine.repository.cam).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from pneumo_onnx.convert.detect import _is_graph_model, _walk_layers
from pneumo_onnx.convert.source import LoadedSource
from pneumo_onnx.convert.validate import CAM_TOLERANCE
from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import PneumoError
from pneumo_onnx.engine.repository.cam import FEATURE_OUTPUT, CamSpec, measure_scale
from pneumo_onnx.engine.runtime.preprocess import finish
from pneumo_onnx.engine.runtime.session import create_session, run

log = logging.getLogger(__name__)

_PASS_THROUGH = ("Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "Activation")


def add_cam_output(
    src: LoadedSource, contract: Contract, model: onnx.ModelProto
) -> tuple[CamSpec | None, str]:
    """Add the feature-map output to `model` in place; return its spec, or None and why not."""
    head = _keras_head(src, contract)
    if isinstance(head, str):
        return None, head
    weights, bias, layer = head
    found = _gap_input(model)
    if found is None:
        return None, "no global average pooling node found in the ONNX graph"
    tensor, layout = found
    candidate = onnx.ModelProto.FromString(model.SerializeToString())
    _expose(candidate, tensor)
    spec = CamSpec(FEATURE_OUTPUT, layout, weights, bias, layer)
    why = _mismatch(candidate, spec, contract)
    if why:
        log.warning("%s: no class activation map output: %s", src.name, why)
        return None, why
    _expose(model, tensor)
    return spec, f"feature map '{layer}' ({layout}), {weights.size} channels"


def with_scale(
    spec: CamSpec,
    session: ort.InferenceSession,
    contract: Contract,
    images: np.ndarray,
    batch_size: int = 32,
) -> CamSpec:
    """`spec` with its colour scale measured on `images` (real X-rays, the model's input)."""
    names = [contract.output.name, spec.output]
    maps, scores = [], []
    for i in range(0, len(images), batch_size):
        score, features = run(session, images[i : i + batch_size], names)
        maps.append(spec.maps(features))
        scores.append(contract.scores(score))
    scale = measure_scale(np.concatenate(maps), np.concatenate(scores), contract.threshold)
    return dataclasses.replace(spec, scale=scale)


def _keras_head(src: LoadedSource, contract: Contract) -> tuple[np.ndarray, float, str] | str:
    """The positive-class logit weights of a GAP -> Dense head, or why there is none."""
    if src.model is None or not _is_graph_model(src.model):
        return "not a Keras graph model: cannot read its classifier"
    if contract.output.kind == "sigmoid2":  # o_pos / (o_0 + o_1) is no sigmoid of one logit
        return "two sigmoid units read by argmax: the score is not one logit's sigmoid"
    layers = [
        layer for layer in _walk_layers(src.model) if type(layer).__name__ not in _PASS_THROUGH
    ]
    if len(layers) < 3:
        return "too few layers for a GAP classifier"
    dense, gap = layers[-1], layers[-2]
    if type(dense).__name__ != "Dense" or type(gap).__name__ != "GlobalAveragePooling2D":
        return (
            f"the classifier is {type(gap).__name__} -> {type(dense).__name__}, "
            "not GlobalAveragePooling2D -> Dense"
        )
    kernel, *rest = (np.asarray(w, dtype=np.float64) for w in dense.get_weights())
    bias = rest[0] if rest else np.zeros(kernel.shape[1])
    pos = contract.output.positive_index
    if contract.output.kind == "softmax2":
        weights, b = kernel[:, pos] - kernel[:, 1 - pos], float(bias[pos] - bias[1 - pos])
    else:
        weights, b = kernel[:, 0], float(bias[0])
    source = _producer_name(gap)
    return weights, b, source


def _producer_name(gap: Any) -> str:
    history = getattr(getattr(gap, "input", None), "_keras_history", None)
    operation = getattr(history, "operation", None) if history is not None else None
    return str(getattr(operation, "name", "")) or f"input of {gap.name}"


def _gap_input(model: onnx.ModelProto) -> tuple[str, str] | None:
    """The input tensor and layout of the last spatial mean in the graph."""
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in reversed(model.graph.node):
        if node.op_type == "GlobalAveragePool":
            return node.input[0], "NCHW"
        if node.op_type == "ReduceMean":
            axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
            if axes is None and len(node.input) > 1 and node.input[1] in constants:
                axes = [int(a) for a in constants[node.input[1]].ravel()]
            if axes is not None and sorted(axes) in ([1, 2], [-3, -2]):
                return node.input[0], "NHWC"
            if axes is not None and sorted(axes) in ([2, 3], [-2, -1]):
                return node.input[0], "NCHW"
    return None


def _expose(model: onnx.ModelProto, tensor: str) -> None:
    """Identity(tensor) -> graph output `feature_map`, typed as shape inference finds it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    info = next((v for v in inferred.graph.value_info if v.name == tensor), None)
    output = helper.make_tensor_value_info(FEATURE_OUTPUT, onnx.TensorProto.FLOAT, None)
    if info is not None and info.type.tensor_type.HasField("shape"):
        output.type.CopyFrom(info.type)
        output.type.tensor_type.shape.dim[0].Clear()
        output.type.tensor_type.shape.dim[0].dim_param = "batch"
    else:  # unknown rank: a dynamic 4-D shape
        output = helper.make_tensor_value_info(
            FEATURE_OUTPUT, onnx.TensorProto.FLOAT, ["batch", None, None, None]
        )
    model.graph.node.append(
        helper.make_node("Identity", [tensor], [FEATURE_OUTPUT], name="pneumo_feature_map")
    )
    model.graph.output.append(output)


def _mismatch(model: onnx.ModelProto, spec: CamSpec, contract: Contract) -> str:
    """'' when the score rebuilt from the feature map equals the model's score, else why not."""
    rng = np.random.default_rng(0)
    i = contract.input
    pixels = rng.uniform(0.0, 255.0, size=(4, i.height, i.width, i.channels))
    probe = np.stack([finish(p, contract) for p in pixels])
    try:
        session = create_session(model.SerializeToString())
        score, features = run(session, probe, [contract.output.name, FEATURE_OUTPUT])
        rebuilt = spec.scores(spec.maps(features))
    except PneumoError as e:
        return e.message
    except Exception as e:  # numpy on a feature map the spec cannot reduce (wrong shape)
        return f"{type(e).__name__}: {e}"
    diff = float(np.max(np.abs(rebuilt - contract.scores(score))))
    if diff > CAM_TOLERANCE:
        return f"score rebuilt from the feature map differs by {diff:.2e} (> {CAM_TOLERANCE:g})"
    return ""
