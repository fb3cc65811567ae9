"""The gate each variant of engine.repository.variants.VARIANTS must pass on real X-rays before
`pneumo convert` keeps it (convert/builders.py builds them; the table holds names, files and
gates), and the runners that score them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from pneumo_onnx.convert.builders import BUILDERS, Built, Inputs
from pneumo_onnx.convert.extra import quiet_stderr
from pneumo_onnx.convert.probes import real_chunks
from pneumo_onnx.convert.report import CheckFailed, Figures, Report
from pneumo_onnx.engine.errors import UsageError, first_line
from pneumo_onnx.engine.repository.variants import OPTIONAL_VARIANTS, Variant
from pneumo_onnx.engine.runtime.metrics import score_agreement
from pneumo_onnx.engine.runtime.session import create_session, run_batched


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
    made: dict[str, Built] = {}
    broken: dict[str, CheckFailed] = {}
    for key in keys:
        try:
            made[key] = _build(OPTIONAL_VARIANTS[key], inputs)
        except CheckFailed as e:
            broken[key] = e
    scores = _score_every_image({k: b.data for k, b in made.items()}, inputs, images, fp32, broken)
    kept: dict[str, tuple[bytes, Figures]] = {}
    for key in keys:
        v = OPTIONAL_VARIANTS[key]
        holder: list[Figures] = []

        def check(v: Variant = v, holder: list[Figures] = holder) -> tuple[str, Figures]:
            if v.key in broken:
                raise broken[v.key]
            b = made[v.key]
            gate = v.gate.for_model(inputs.tolerance)
            figures = score_agreement(
                scores[v.key], scores[v.compare_to], inputs.contract.threshold, gate.margin
            )
            figures.update(
                bytes=len(b.data), reference=v.compare_to, about=v.about, gate=gate.describe()
            )
            if b.precision is not None:
                figures["precision"] = b.precision
            holder.append(figures)
            text = (
                f"{figures['label_agreement']:.2%} label agreement (95% lower bound "
                f"{figures['agreement_lower_95']:.1%}; {figures['near_threshold']} within "
                f"{gate.margin:g} of the threshold not judged), score diff p99 "
                f"{figures['p99_score_diff']:.2e}, max {figures['max_score_diff']:.2e} vs "
                f"{v.compare_to} on {figures['images']} images, {len(b.data) / 1e6:.2f} MB"
            )
            if b.precision is not None and b.precision["fp32_nodes"]:
                text += (
                    f", {len(b.precision['fp32_nodes'])} node(s) kept in fp32 "
                    f"({b.precision['fp32_mac_share']:.0%} of the multiply-adds run in fp32)"
                )
            misses = gate.misses(figures)
            if misses:
                why = ""
                if b.diagnose is not None and b.precision is not None:
                    figures["precision"] = {**b.precision, **b.diagnose()}
                    why = _why(figures["precision"])
                raise CheckFailed(f"{text}: {'; '.join(misses)}{why} ({gate.describe()})", figures)
            return text, figures

        if report.run(f"variant_{key}", check, optional=optional):
            kept[key] = (made[key].data, holder[0])
    return kept


def _why(precision: dict[str, Any]) -> str:
    """The gate miss in words: the node whose reduced precision alone costs most, and the fp32
    model's own sensitivity to half a grey level of noise."""
    worst = precision["worst_nodes"]
    text = ""
    if worst:
        w = worst[0]
        text += (
            f"; most sensitive node {w['node']} ({w['op']}, {w['reduced']}) alone moves p99 "
            f"{w['alone_p99_score_diff']:.2e}"
        )
    return text + (
        "; half a grey level of noise moves fp32 p99 "
        f"{precision['fp32_half_grey_level_p99_score_diff']:.2e}"
    )


def _build(v: Variant, inputs: Inputs) -> Built:
    try:
        built = BUILDERS[v.key](inputs, v)
    except Exception as e:  # quantizers and converters raise anything
        raise CheckFailed(f"building {v.key} failed: {first_line(e)}") from e
    if v.filename.endswith(".onnx"):
        try:
            onnx.checker.check_model(onnx.ModelProto.FromString(built.data), full_check=True)
        except onnx.checker.ValidationError as e:
            raise CheckFailed(f"{v.key}: onnx.checker rejects it: {first_line(e)}") from e
    return built


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
