"""Validation of an ONNX model: structure, contract, runtime behaviour and parity.

Shared by the conversion gate (before anything is written) and `pneumo validate` (for users'
CI pipelines). Every check runs and is recorded; failures are collected, never downgraded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from pneumo_onnx.convert.noise import FLOOR, describe, fp32_noise, tolerance_for
from pneumo_onnx.convert.report import CheckFailed, Figures, Report
from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import (
    ContractError,
    InferenceError,
    RepositoryError,
    UsageError,
    first_line,
)
from pneumo_onnx.engine.repository.cam import CamSpec
from pneumo_onnx.engine.repository.manifest import MANIFEST_NAME, read_manifest
from pneumo_onnx.engine.runtime.session import create_session, run, run_batched

FP32_TOLERANCE = 1e-5  # the floor of a model's fp32 parity bound (convert.noise)
CAM_TOLERANCE = 1e-4  # score rebuilt from the CAM output vs the score, fp32
PARITY_BATCH_SIZES = (1, 7, 64)


def structure_checks(report: Report, model: onnx.ModelProto) -> Contract | None:
    """onnx.checker (full), strict shape inference, and the embedded contract."""

    def checker() -> tuple[str, Figures]:
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as e:
            raise CheckFailed(f"onnx.checker rejects the graph: {first_line(e)}") from e
        opset = max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0
        )
        return f"valid ONNX (IR {model.ir_version}, opset {opset})", {"opset": opset}

    def shapes() -> tuple[str, Figures]:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except Exception as e:  # onnx raises InferenceError or a plain RuntimeError
            raise CheckFailed(f"shape inference fails: {first_line(e)}") from e
        dims = [_dims(i) for i in inferred.graph.input]
        batch = dims[0][0] if dims and dims[0] else None
        if isinstance(batch, int):
            raise CheckFailed(f"batch dimension is fixed at {batch}: expected a dynamic batch")
        return f"input {dims[0]}, output {[_dims(o) for o in inferred.graph.output]}", {}

    report.run("onnx_checker", checker)
    report.run("shape_inference", shapes)
    found: list[Contract] = []

    def contract() -> tuple[str, Figures]:
        metadata = {p.key: p.value for p in model.metadata_props}
        cam = CamSpec.from_metadata(metadata)
        extra = [cam.output] if cam else []
        outputs = [o.name for o in model.graph.output]
        if len(model.graph.input) != 1 or len(outputs) != 1 + len(extra) or outputs[1:] != extra:
            raise CheckFailed(
                f"{len(model.graph.input)} inputs, outputs {outputs}: expected one image input "
                "and one score output" + (f", then '{extra[0]}' (pneumo.cam)" if extra else "")
            )
        c = Contract.from_metadata(
            metadata,
            model.graph.input[0].name,
            _dims(model.graph.input[0]),
            model.graph.output[0].name,
        )
        if c.input.name != model.graph.input[0].name or c.output.name != model.graph.output[0].name:
            raise ContractError(
                f"contract names input '{c.input.name}'/output '{c.output.name}', graph has "
                f"'{model.graph.input[0].name}'/'{model.graph.output[0].name}'"
            )
        found.append(c)
        source = "embedded" if "pneumo.contract" in metadata else "defaults (plain ONNX file)"
        i = c.input
        return (
            f"{source}: {i.layout} {i.height}x{i.width}x{i.channels} {i.scaling}, "
            f"{i.resize_filter} "
            f"resize, {c.output.kind} -> P({c.positive_label}), threshold {c.threshold}",
            {},
        )

    report.run("contract", contract)
    return found[0] if found else None


def runtime_checks(
    report: Report,
    model_bytes: bytes,
    contract: Contract,
    probes: np.ndarray,
    tolerance: float = FP32_TOLERANCE,
) -> ort.InferenceSession | None:
    """Loads in onnxruntime; one batch and one-by-one runs agree within the model's fp32
    `tolerance` (a graph that mixes the images of a batch is far off it) and give scores in
    [0, 1]."""
    sessions: list[ort.InferenceSession] = []

    def load() -> tuple[str, Figures]:
        sessions.append(create_session(model_bytes))
        return "loads on CPUExecutionProvider", {}

    if not report.run("onnxruntime_load", load):
        return None
    session = sessions[0]

    def batch() -> tuple[str, Figures]:
        whole = run_batched(session, probes, batch_size=len(probes))
        single = run_batched(session, probes, batch_size=1)
        diff = float(np.max(np.abs(whole - single)))
        scores = contract.scores(whole)
        figures = {"batch_vs_single_max_abs_diff": diff, "probes": len(probes)}
        if not np.all(np.isfinite(whole)):
            raise CheckFailed("outputs contain NaN or infinity", figures)
        if scores.min() < 0.0 or scores.max() > 1.0:
            raise CheckFailed(
                f"scores {scores.min():.3g}..{scores.max():.3g} outside [0, 1]", figures
            )
        if diff > tolerance:
            raise CheckFailed(
                f"batch of {len(probes)} and one-by-one runs differ by {diff:.2e} "
                f"(tolerance {tolerance:.1e})",
                figures,
            )
        return f"batch {len(probes)} == batch 1 (max diff {diff:.2e}), scores in [0, 1]", figures

    report.run("dynamic_batch", batch)
    cam = CamSpec.from_metadata(session.get_modelmeta().custom_metadata_map)
    if cam is not None:
        reduced = _reduced_precision(onnx.load_from_string(model_bytes))
        report.run(
            "class_activation_map", lambda: _cam_check(session, cam, contract, probes, reduced)
        )
    return session


def _cam_check(
    session: ort.InferenceSession,
    cam: CamSpec,
    contract: Contract,
    probes: np.ndarray,
    reduced: bool,
) -> tuple[str, Figures]:
    """The score rebuilt from the feature-map output (pneumo.cam) equals the model's score.

    fp32 to 1e-4; quantized and fp16 graphs round the feature map and the score separately,
    so they get the int8 variant's score tolerance."""
    names = [contract.output.name, cam.output]
    try:
        score, features = run(session, probes, names)
    except InferenceError as e:
        raise CheckFailed(f"cannot fetch {names}: {e.message}") from e
    rebuilt = cam.scores(cam.maps(features))
    diff = float(np.max(np.abs(rebuilt - contract.scores(score))))
    tolerance = 0.05 if reduced else CAM_TOLERANCE
    figures = {"max_abs_diff": diff, "tolerance": tolerance, "feature_map": list(features.shape)}
    text = f"score rebuilt from '{cam.output}' {features.shape[1:]} within {diff:.2e}"
    if diff > tolerance:
        raise CheckFailed(f"{text} > tolerance {tolerance:g}", figures)
    return f"{text} <= {tolerance:g}", figures


def _reduced_precision(model: onnx.ModelProto) -> bool:
    """int8 (QDQ) or fp16 weights: the feature map and the score are rounded separately."""
    return any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node
    ) or any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def parity_check(
    report: Report,
    session: ort.InferenceSession,
    reference: np.ndarray,
    probes: np.ndarray,
    tolerance: float = FP32_TOLERANCE,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    name: str = "parity_keras",
    noise: Mapping[str, float] | None = None,
) -> None:
    """ONNX outputs equal the original model's outputs within `tolerance`, at every batch size
    (`noise`: the model's own fp32 noise the tolerance was derived from, for the record)."""

    def parity() -> tuple[str, Figures]:
        diffs = {}
        for b in batch_sizes:
            out = run_batched(session, probes, batch_size=b)
            if out.shape != reference.shape:
                raise CheckFailed(f"output shape {out.shape} != original model's {reference.shape}")
            diffs[b] = float(np.max(np.abs(out - reference)))
        worst = max(diffs.values())
        figures: Figures = {
            "max_abs_diff": worst,
            "max_abs_diff_by_batch": {str(b): d for b, d in diffs.items()},
            "tolerance": tolerance,
            "probes": len(probes),
            **({"fp32_noise": dict(noise)} if noise is not None else {}),
        }
        text = ", ".join(f"batch {b}: {d:.2e}" for b, d in diffs.items())
        bound = describe(tolerance, noise) if noise is not None else f"tolerance {tolerance:.1e}"
        if worst > tolerance:
            raise CheckFailed(
                f"max abs difference {worst:.2e} > {bound} ({text}); --tolerance sets the limit",
                figures,
            )
        return f"max abs diff {worst:.2e} <= {bound} on {len(probes)} probes ({text})", figures

    report.run(name, parity)


def manifest_check(report: Report, path: Path) -> None:
    """If the model sits in a repository version folder, its hash must match the manifest."""
    if not (path.parent / MANIFEST_NAME).is_file():
        return

    def check() -> tuple[str, Figures]:
        digest = read_manifest(path.parent).check_file(path)  # its RepositoryError: a failure
        return f"sha256 matches {MANIFEST_NAME}", {"sha256": digest}

    report.run("manifest_sha256", check)


def validate_file(
    path: str | Path,
    against: str | None = None,
    image_folders: Sequence[str] = (),
    tolerance: float | None = None,
    custom_objects: str | None = None,
    min_auc: float | None = None,
    expected_scores: str | None = None,
) -> Report:
    """`pneumo validate`: every check on one ONNX file; TensorFlow only with `against`.

    With labelled images (an `--images` folder holding one subfolder per label of the model),
    the model's ROC AUC on them through the engine's own preprocessing must reach 0.5, or
    `min_auc` when given. The fp32 bounds: `tolerance` if given, else the one the model's
    conversion recorded in its manifest, else one measured from its own noise here. With
    `expected_scores` (a CSV of the user's own application's scores on image files), the
    engine must give each file the same score within 0.02 (convert.expected)."""
    from pneumo_onnx.convert.expected import expected_scores_check, read_expected
    from pneumo_onnx.convert.labelled import labelled_check
    from pneumo_onnx.convert.probes import gather_images, probe_batch, spread

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such ONNX file")
    if min_auc is not None and not 0.0 <= min_auc <= 1.0:
        raise UsageError(f"--min-auc must be a number in [0, 1], got {min_auc}")
    expected = read_expected(expected_scores, image_folders) if expected_scores else None
    report = Report(subject=subject(p))
    data = p.read_bytes()
    parsed: list[onnx.ModelProto] = []

    def parse() -> tuple[str, Figures]:
        try:
            parsed.append(onnx.load_from_string(data))
        except Exception as e:  # protobuf DecodeError and friends
            raise CheckFailed(f"not an ONNX model ({len(data)} bytes): {first_line(e)}") from e
        return f"{len(data)} bytes of ONNX protobuf", {"bytes": len(data)}

    if not report.run("onnx_parse", parse):
        return report
    manifest_check(report, p)
    contract = structure_checks(report, parsed[0])
    if contract is None:
        return report
    probes = probe_batch(contract, spread(gather_images(image_folders)))
    recorded = tolerance if tolerance is not None else recorded_tolerance(p)
    bound = recorded if recorded is not None else _measured_bound(data, probes)
    session = runtime_checks(report, data, contract, probes, bound)
    if session is None:
        return report
    labelled_check(report, p, contract, image_folders, min_auc)
    if expected is not None:
        expected_scores_check(report, p, expected)
    if against is None:
        return report
    from pneumo_onnx.convert.extra import require

    require("pneumo validate --against", ("tensorflow",))
    from pneumo_onnx.convert.source import load_source

    src = load_source(against, custom_objects)
    reference = src.predict(probes)
    if recorded is not None:
        parity_check(report, session, reference, probes, recorded)
    else:
        noise = fp32_noise(data, probes, reference, src.predict)
        parity_check(report, session, reference, probes, tolerance_for(noise), noise=noise)
    return report


def _measured_bound(data: bytes, probes: np.ndarray) -> float:
    """The tolerance from this model's own onnxruntime noise; FLOOR when the graph cannot run
    the probes at all (a fixed batch, a wrong input), which runtime_checks then reports."""
    try:
        return tolerance_for(fp32_noise(data, probes))
    except Exception:  # onnxruntime's errors share no base class; the failure is reported next
        return FLOOR


def recorded_tolerance(p: Path) -> float | None:
    """The fp32 parity bound the conversion of the model at `p` recorded, if it sits in a
    repository version folder whose manifest has one."""
    if not (p.parent / MANIFEST_NAME).is_file():
        return None
    try:
        parity = read_manifest(p.parent).parity
    except RepositoryError:  # manifest_check reports it
        return None
    return parity.tolerance if parity else None


def subject(p: Path) -> str:
    """How reports name a model: `name/version/file` inside a repository version folder (from
    its manifest), else the path as the user gave it."""
    if (p.parent / MANIFEST_NAME).is_file():
        try:
            manifest = read_manifest(p.parent)
        except RepositoryError:  # manifest_check reports it; the name falls back to the path
            return str(p)
        if manifest.name is not None and manifest.version is not None:
            return f"{manifest.name}/{manifest.version}/{p.name}"
    return str(p)


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            dims.append(d.dim_param or None)
    return dims
