"""How each variant of engine.repository.variants.VARIANTS is built from the validated fp32
model, and the gate each must pass on real images (the table holds names, files and gates).

int8 (static QDQ, per-channel, calibrated on real X-rays) for fast CPUs, fp16 for CUDA (fp32
inputs/outputs kept), TFLite fp32 and dynamic-range quantized TFLite for edge devices, and the
ORT format for onnxruntime's mobile builds.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf

from pneumo_onnx.convert.extra import quiet_stderr
from pneumo_onnx.convert.probes import real_chunks
from pneumo_onnx.convert.report import CheckFailed, Figures, Report
from pneumo_onnx.convert.source import LoadedSource
from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import UsageError, first_line
from pneumo_onnx.engine.repository.variants import OPTIONAL_VARIANTS, Variant
from pneumo_onnx.engine.runtime.metrics import score_agreement
from pneumo_onnx.engine.runtime.session import create_session, run_batched


@dataclass(frozen=True)
class Inputs:
    """What every variant builder gets."""

    fp32: onnx.ModelProto
    fp32_path: Path
    src: LoadedSource
    contract: Contract
    calibration: np.ndarray  # real X-rays, reference-preprocessed: int8 calibration
    workdir: Path
    tolerance: float = 1e-5  # this model's fp32 parity bound: the gate of exact re-encodings


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
                np.array_split(i.calibration, max(1, len(i.calibration) // 8))
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


def parse_variants(text: str) -> list[str] | None:
    """`--variants`: None for `all` (every variant, each kept only if it passes its gate),
    [] for `none`, or the keys named (each must pass: asked for by name, it fails hard)."""
    if text == "all":
        return None
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
    images: Sequence[Path],
    fp32: ort.InferenceSession,
    report: Report,
    optional: bool,
) -> dict[str, tuple[bytes, Figures]]:
    """Build each variant, then gate it against its reference on every probe image.

    One check per variant in `report`; with `optional`, a variant that cannot be built or
    misses its gate is recorded as skipped instead of failing the conversion. Returns the
    variants that passed: key -> (file bytes, figures for the manifest).
    """
    built: dict[str, bytes] = {}
    broken: dict[str, CheckFailed] = {}
    for key in keys:
        try:
            built[key] = _build(OPTIONAL_VARIANTS[key], inputs)
        except CheckFailed as e:
            broken[key] = e
    scores = _score_every_image(built, inputs, images, fp32, broken)
    kept: dict[str, tuple[bytes, Figures]] = {}
    for key in keys:
        v = OPTIONAL_VARIANTS[key]
        holder: list[Figures] = []

        def check(v: Variant = v, holder: list[Figures] = holder) -> tuple[str, Figures]:
            if v.key in broken:
                raise broken[v.key]
            data = built[v.key]
            gate = v.gate.for_model(inputs.tolerance)
            figures = score_agreement(
                scores[v.key], scores[v.compare_to], inputs.contract.threshold, gate.margin
            )
            figures.update(
                bytes=len(data), reference=v.compare_to, about=v.about, gate=gate.describe()
            )
            holder.append(figures)
            text = (
                f"{figures['label_agreement']:.2%} label agreement (95% lower bound "
                f"{figures['agreement_lower_95']:.1%}; {figures['near_threshold']} within "
                f"{gate.margin:g} of the threshold not judged), score diff p99 "
                f"{figures['p99_score_diff']:.2e}, max {figures['max_score_diff']:.2e} vs "
                f"{v.compare_to} on {figures['images']} images, {len(data) / 1e6:.2f} MB"
            )
            misses = gate.misses(figures)
            if misses:
                raise CheckFailed(f"{text}: {'; '.join(misses)} ({gate.describe()})", figures)
            return text, figures

        if report.run(f"variant_{key}", check, optional=optional):
            kept[key] = (built[key], holder[0])
    return kept


def _build(v: Variant, inputs: Inputs) -> bytes:
    try:
        data = BUILDERS[v.key](inputs)
    except Exception as e:  # quantizers and converters raise anything
        raise CheckFailed(f"building {v.key} failed: {first_line(e)}") from e
    if v.filename.endswith(".onnx"):
        try:
            onnx.checker.check_model(onnx.ModelProto.FromString(data), full_check=True)
        except onnx.checker.ValidationError as e:
            raise CheckFailed(f"{v.key}: onnx.checker rejects it: {first_line(e)}") from e
    return data


def _score_every_image(
    built: dict[str, bytes],
    inputs: Inputs,
    images: Sequence[Path],
    fp32: ort.InferenceSession,
    broken: dict[str, CheckFailed],
) -> dict[str, np.ndarray]:
    """Scores of every image from the fp32 ONNX model ("onnx"), the source model ("keras")
    and each built variant, CHUNK images at a time. A variant its runtime refuses to run
    moves to `broken`."""
    c = inputs.contract
    runners: dict[str, Runner] = {}
    for key, data in built.items():
        try:
            runners[key] = runner(OPTIONAL_VARIANTS[key].runtime, data)
        except Exception as e:  # onnxruntime and LiteRT raise their own untyped errors
            broken[key] = CheckFailed(f"{key} does not load: {first_line(e)}")
    needs_keras = any(OPTIONAL_VARIANTS[k].compare_to == "keras" for k in runners)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("onnx", "keras", *runners)}
    for x in real_chunks(c, images) if runners else ():
        parts["onnx"].append(c.scores(run_batched(fp32, x)))
        if needs_keras:
            parts["keras"].append(c.scores(inputs.src.predict(x)))
        for key, run_variant in list(runners.items()):
            try:
                parts[key].append(c.scores(run_variant(x)))
            except Exception as e:  # as above
                broken[key] = CheckFailed(f"{key} fails to run: {first_line(e)}")
                del runners[key]
    return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in parts.items()}


Runner = Callable[[np.ndarray], np.ndarray]


def runner(runtime: str, data: bytes) -> Runner:
    """A loaded variant: a batch in, its raw outputs out."""
    if runtime == "onnxruntime":
        session = create_session(data)
        return lambda x: run_batched(session, x, batch_size=32)
    return tflite_runner(data)


def tflite_runner(data: bytes) -> Runner:
    """A .tflite model loaded once in LiteRT (tf.lite.Interpreter is deprecated); each call
    runs one whole batch."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
        interpreter = Interpreter(model_content=data)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    shape: list[tuple[int, ...]] = []

    def run(x: np.ndarray) -> np.ndarray:
        if shape != [x.shape]:
            interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=True)
            with quiet_stderr():
                interpreter.allocate_tensors()
            shape[:] = [x.shape]
        interpreter.set_tensor(inp["index"], x.astype(np.float32))
        interpreter.invoke()
        return np.array(interpreter.get_tensor(out["index"]))

    return run


def run_tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    """Run a .tflite model on one batch."""
    return tflite_runner(data)(x)


def _with_metadata(model: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """Variants carry the same contract as their fp32 parent."""
    del model.metadata_props[:]
    model.metadata_props.extend(fp32.metadata_props)
    return model
