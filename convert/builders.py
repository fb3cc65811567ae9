"""How each variant of engine.repository.variants.VARIANTS is built from the validated fp32
model (convert/variants.py gates them).

int8 (static QDQ, per-channel, calibrated on real X-rays) for fast CPUs, fp16 for CUDA (fp32
inputs/outputs kept), TFLite fp32 and dynamic-range quantized TFLite for edge devices, and the
ORT format for onnxruntime's mobile builds. The reduced-precision ones (int8, fp16) are measured
on the calibration X-rays while they are built and, where they lose too much, partly kept in
fp32 (convert/precision.py).
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf

from pneumo_onnx.convert.precision import (
    TARGET_SHARE,
    Scorer,
    fallback,
    fp16_nodes,
    grey_level_sensitivity,
    int8_nodes,
    mac_share,
    prefixes,
    worst_nodes,
)
from pneumo_onnx.convert.source import LoadedSource
from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.repository.variants import OPTIONAL_VARIANTS, Variant


@dataclass(frozen=True)
class Inputs:
    """What every variant builder gets."""

    fp32: onnx.ModelProto
    fp32_path: Path
    src: LoadedSource
    contract: Contract
    # Real X-rays, reference-preprocessed: int8 calibration, and what reduced-precision builds
    # are scored on while they are built.
    calibration: np.ndarray
    workdir: Path
    tolerance: float = 1e-5  # this model's fp32 parity bound: the gate of exact re-encodings

    @cached_property
    def scorer(self) -> Scorer:
        """fp32's scores of the calibration X-rays, which every reduced-precision build is
        measured against while it is built."""
        return Scorer.of(self.fp32.SerializeToString(), self.contract, self.calibration)


@dataclass(frozen=True)
class Built:
    """A variant's file, and for reduced-precision variants how it was built (the nodes kept in
    fp32, each attempt's figures) and how to find the nodes that lose its fidelity, run only
    when it misses its gate."""

    data: bytes
    precision: dict[str, Any] | None = None
    diagnose: Callable[[], dict[str, Any]] | None = None


def _int8(i: Inputs, v: Variant, keep_first_conv: bool) -> Built:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = i.contract.input.name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(
                np.array_split(i.calibration, max(1, len(i.calibration) // 8))
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {name: batch}

    pre, out = i.workdir / "int8.pre.onnx", i.workdir / "int8.onnx"
    # Folds BatchNormalization into the convolutions (ORT basic optimizations) and infers shapes.
    quant_pre_process(str(i.fp32_path), str(pre), skip_symbolic_shape=True)
    pre_model = onnx.load(str(pre))
    # `int8` keeps the first convolution in fp32: it sees raw pixels and is by far the most
    # sensitive layer (trained reference model, 782 validation X-rays: label agreement with
    # fp32 98.3% -> 100%, max score diff 0.28 -> 0.04), at the price of speed (2.2x -> 1.3x
    # fp32: QDQ around a full-resolution activation). `int8-full` quantizes every layer.
    convs = [n.name for n in pre_model.graph.node if n.op_type == "Conv"]
    standing = convs[:1] if keep_first_conv else []
    # Every attempt has the same calibration ranges: an onnxruntime whose quantize_static takes
    # calibration_cache_path (1.32 does) keeps them in a file (a 224 px MobileNetV2 on 70
    # X-rays: 1.8 s -> 0.5 s an attempt); older ones compute the same ranges every time.
    cache = (
        {"calibration_cache_path": str(i.workdir / f"{v.key}.ranges.json")}
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters
        else {}
    )

    def build(keep: list[str]) -> bytes:
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,  # u8 activations x s8 weights: the VNNI fast path
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=[*standing, *keep],
            **cache,
        )
        return _with_metadata(onnx.load(str(out)), i.fp32).SerializeToString()

    target = v.gate.p99_score_diff * TARGET_SHARE
    data, figures = fallback(build, prefixes(pre_model, skip=standing), i.scorer, target)
    figures["fp32_mac_share"] = mac_share(pre_model, [*standing, *figures["fp32_nodes"]])

    def diagnose() -> dict[str, Any]:
        qdq = onnx.ModelProto.FromString(data)
        return _diagnosis(int8_nodes(pre_model, qdq), i.scorer)

    return Built(data, figures, diagnose)


def _fp16(i: Inputs, v: Variant) -> Built:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    base = _basic_optimized(i)

    def build(keep: list[str]) -> bytes:
        model = convert_float_to_float16(
            onnx.ModelProto.FromString(base.SerializeToString()),
            keep_io_types=True,
            node_block_list=keep or None,
        )
        # keep_io_types appends the input Cast after the nodes that read it: onnx.checker
        # refuses such a graph (onnxruntime sorts it itself), so sort it before shipping.
        OnnxModel.graph_topological_sort(model.graph)
        return _with_metadata(model, i.fp32).SerializeToString()

    target = v.gate.p99_score_diff * TARGET_SHARE
    data, figures = fallback(build, prefixes(base), i.scorer, target)
    figures["fp32_mac_share"] = mac_share(base, figures["fp32_nodes"])
    return Built(data, figures, lambda: _diagnosis(fp16_nodes(base), i.scorer))


def _basic_optimized(i: Inputs) -> onnx.ModelProto:
    """The fp32 graph after onnxruntime's basic (portable, standard-ONNX) rewrites, as
    quant_pre_process does for int8. tf2onnx leaves a Keras 3 depthwise convolution's
    BatchNormalization as a Mul and an Add after it; in fp16 each rounds on its own, and the
    Add subtracts two rounded, nearly equal values. MobileNetV2 alpha 0.35, 224 px, 64 X-rays,
    BatchNormalization statistics from pink noise: p99 score diff 3.1e-3 -> 1.9e-3, mean
    6.5e-4 -> 4.8e-4; from the X-rays: mean 2.8e-3 -> 2.4e-3; where the first layers'
    rounding dominates (the depthwise test model) it moves p99 5.6e-3 -> 4.7e-3 and is left to
    the fallback."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    out = i.workdir / "fp16.base.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(i.fp32_path), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(str(out))
    OnnxModel.graph_topological_sort(model.graph)
    return model


def _diagnosis(reduced: Iterator[tuple[onnx.NodeProto, str, bytes]], s: Scorer) -> dict[str, Any]:
    return {
        "worst_nodes": worst_nodes(reduced, s),
        "fp32_half_grey_level_p99_score_diff": grey_level_sensitivity(s),
    }


def _ort_format(i: Inputs, v: Variant) -> Built:
    out = i.workdir / "model.ort"
    opts = ort.SessionOptions()
    # Basic optimizations only: the result must stay portable to other CPUs and mobile EPs.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(i.fp32_path), opts, providers=["CPUExecutionProvider"])
    return Built(out.read_bytes())


def _tflite(i: Inputs, v: Variant, quantize: bool) -> Built:
    # from_concrete_functions cannot freeze Keras 3 variables (the model comes out without
    # weights, producing NaN): convert Keras models as such, SavedModels from their folder.
    if i.src.model is not None:
        converter = tf.lite.TFLiteConverter.from_keras_model(i.src.model)
    elif i.src.path is not None and i.src.path.is_dir():
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(i.src.path), signature_keys=["serving_default"]
        )
    else:
        raise UsageError(f"{i.src.name}: TFLite variants need a Keras model or a SavedModel folder")
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights
    with contextlib.redirect_stdout(io.StringIO()):  # Keras' export prints its signature
        return Built(bytes(converter.convert()))


BUILDERS: dict[str, Callable[[Inputs, Variant], Built]] = {
    "int8": lambda i, v: _int8(i, v, keep_first_conv=True),
    "int8-full": lambda i, v: _int8(i, v, keep_first_conv=False),
    "fp16": _fp16,
    "tflite": lambda i, v: _tflite(i, v, quantize=False),
    "tflite-dynamic": lambda i, v: _tflite(i, v, quantize=True),
    "ort": _ort_format,
}
assert set(BUILDERS) == set(OPTIONAL_VARIANTS), "every optional variant needs a builder"


def _with_metadata(model: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """Variants carry the same contract as their fp32 parent."""
    del model.metadata_props[:]
    model.metadata_props.extend(fp32.metadata_props)
    return model
