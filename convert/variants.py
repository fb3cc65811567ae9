"""How each variant of engine.repository.variants.VARIANTS is built from the validated fp32
model, and the gate each must pass on real images (the table holds names, files and gates).

int8 (static QDQ, per-channel, calibrated on real X-rays) for fast CPUs, fp16 for CUDA (fp32
inputs/outputs kept), TFLite fp32 and dynamic-range quantized TFLite for edge devices, and the
ORT format for onnxruntime's mobile builds.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf

from convert.extra import quiet_stderr
from convert.report import CheckFailed, Figures, Report
from convert.source import LoadedSource
from engine.contract import Contract
from engine.errors import UsageError, first_line
from engine.repository.variants import OPTIONAL_VARIANTS, Variant
from engine.runtime.session import create_session, run_batched


@dataclass(frozen=True)
class Inputs:
    """What every variant builder gets."""

    fp32: onnx.ModelProto
    fp32_path: Path
    src: LoadedSource
    contract: Contract
    real: np.ndarray  # real X-rays, reference-preprocessed: calibration and checking
    workdir: Path


def _int8(i: Inputs, keep_first_conv: bool) -> bytes:
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
                np.array_split(i.real, max(1, len(i.real) // 8))
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {name: batch}

    pre, out = i.workdir / "int8.pre.onnx", i.workdir / "int8.onnx"
    quant_pre_process(str(i.fp32_path), str(pre), skip_symbolic_shape=True)
    # `int8` keeps the first convolution in fp32: it sees raw pixels and is by far the most
    # sensitive layer (trained reference model, 782 validation X-rays: label agreement with
    # fp32 98.3% -> 100%, max score diff 0.28 -> 0.04), at the price of speed (2.2x -> 1.3x
    # fp32: QDQ around a full-resolution activation). `int8-full` quantizes every layer.
    convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,  # u8 activations x s8 weights: the VNNI fast path
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=convs[:1] if keep_first_conv else [],
    )
    return _with_metadata(onnx.load(str(out)), i.fp32).SerializeToString()


def _fp16(i: Inputs) -> bytes:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(
        onnx.ModelProto.FromString(i.fp32.SerializeToString()), keep_io_types=True
    )
    # keep_io_types appends the input Cast after the nodes that read it: onnx.checker refuses
    # such a graph (onnxruntime sorts it itself), so sort it before shipping.
    OnnxModel.graph_topological_sort(model.graph)
    return _with_metadata(model, i.fp32).SerializeToString()


def _ort_format(i: Inputs) -> bytes:
    out = i.workdir / "model.ort"
    opts = ort.SessionOptions()
    # Basic optimizations only: the result must stay portable to other CPUs and mobile EPs.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(i.fp32_path), opts, providers=["CPUExecutionProvider"])
    return out.read_bytes()


def _tflite(i: Inputs, quantize: bool) -> bytes:
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
        return bytes(converter.convert())


BUILDERS: dict[str, Callable[[Inputs], bytes]] = {
    "int8": lambda i: _int8(i, keep_first_conv=True),
    "int8-full": lambda i: _int8(i, keep_first_conv=False),
    "fp16": _fp16,
    "tflite": lambda i: _tflite(i, quantize=False),
    "tflite-dynamic": lambda i: _tflite(i, quantize=True),
    "ort": _ort_format,
}
assert set(BUILDERS) == set(OPTIONAL_VARIANTS), "every optional variant needs a builder"


def parse_variants(text: str) -> list[str]:
    """`all`, `none`, or a comma list of variant keys."""
    if text == "all":
        return list(OPTIONAL_VARIANTS)
    if text in ("", "none"):
        return []
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in OPTIONAL_VARIANTS]
    if unknown:
        raise UsageError(
            f"--variants: unknown {', '.join(unknown)}; "
            f"choose from {', '.join(OPTIONAL_VARIANTS)}, all, none"
        )
    return list(dict.fromkeys(keys))


def build_and_check(
    keys: list[str],
    inputs: Inputs,
    onnx_scores: np.ndarray,
    keras_scores: np.ndarray,
    report: Report,
) -> dict[str, tuple[bytes, Figures]]:
    """Build each variant and gate it against its reference on the real images."""
    built: dict[str, tuple[bytes, Figures]] = {}
    for key in keys:
        v = OPTIONAL_VARIANTS[key]
        holder: list[tuple[bytes, Figures]] = []

        def check(
            v: Variant = v, holder: list[tuple[bytes, Figures]] = holder
        ) -> tuple[str, Figures]:
            try:
                data = BUILDERS[v.key](inputs)
            except Exception as e:  # quantizers and converters raise anything
                raise CheckFailed(f"building {v.key} failed: {first_line(e)}") from e
            if v.filename.endswith(".onnx"):
                try:
                    onnx.checker.check_model(onnx.ModelProto.FromString(data), full_check=True)
                except onnx.checker.ValidationError as e:
                    raise CheckFailed(f"{v.key}: onnx.checker rejects it: {first_line(e)}") from e
            scores = inputs.contract.scores(run_variant(v.runtime, data, inputs.real))
            reference = onnx_scores if v.compare_to == "onnx" else keras_scores
            figures = compare(scores, reference, inputs.contract.threshold)
            figures.update(bytes=len(data), reference=v.compare_to, about=v.about)
            holder.append((data, figures))
            text = (
                f"{figures['label_agreement']:.2%} label agreement, max score diff "
                f"{figures['max_score_diff']:.2e} vs {v.compare_to} on {len(scores)} real images, "
                f"{len(data) / 1e6:.2f} MB"
            )
            if (
                figures["label_agreement"] < v.min_agreement
                or figures["max_score_diff"] > v.max_score_diff
            ):
                raise CheckFailed(
                    f"{text}: needs >= {v.min_agreement:.0%} agreement and <= {v.max_score_diff:g}",
                    figures,
                )
            return text, figures

        if report.run(f"variant_{key}", check):
            built[key] = holder[0]
    return built


def compare(scores: np.ndarray, reference: np.ndarray, threshold: float) -> Figures:
    agree = float(np.mean((scores > threshold) == (reference > threshold))) if len(scores) else 1.0
    return {
        "label_agreement": agree,
        "max_score_diff": float(np.max(np.abs(scores - reference))) if len(scores) else 0.0,
        "images": len(scores),
    }


def run_variant(runtime: str, data: bytes, x: np.ndarray) -> np.ndarray:
    if runtime == "onnxruntime":
        return run_batched(create_session(data), x, batch_size=32)
    return run_tflite(data, x)


def run_tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    """Run a .tflite model with LiteRT (tf.lite.Interpreter is deprecated), whole batch."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
        interpreter = Interpreter(model_content=data)
        inp = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=True)
        interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(np.float32))
    interpreter.invoke()
    return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def _with_metadata(model: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """Variants carry the same contract as their fp32 parent."""
    del model.metadata_props[:]
    model.metadata_props.extend(fp32.metadata_props)
    return model
