"""`pneumo convert`: source model -> validated ONNX + variants -> one repository version.

Nothing is written until the fp32 graph and every asked-for variant passed their gates.
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx

import engine
from convert.cam import add_cam_output
from convert.detect import Overrides, detect_contract
from convert.export import DEFAULT_OPSET, to_onnx
from convert.probes import gather_images, probe_batch
from convert.report import Report
from convert.repository import check_target, write_version
from convert.source import LoadedSource, load_source
from convert.validate import FP32_TOLERANCE, parity_check, runtime_checks, structure_checks
from convert.variants import Inputs, build_and_check
from engine.contract import PROVENANCE_KEY, Contract
from engine.repository.variants import OPTIONAL_VARIANTS
from engine.runtime.fidelity import MANIFEST_KEY as PREPROCESSING_KEY
from engine.runtime.fidelity import measure, verdict
from engine.runtime.session import run_batched

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertOptions:
    name: str = "pneumonia"
    version: int | None = None
    opset: int = DEFAULT_OPSET
    variants: Sequence[str] = tuple(OPTIONAL_VARIANTS)
    overrides: Overrides = field(default_factory=Overrides)
    image_folders: Sequence[str] = ()
    tolerance: float = FP32_TOLERANCE
    custom_objects: str | None = None


@dataclass
class ConvertResult:
    version_dir: Path
    contract: Contract
    report: Report
    manifest: dict[str, Any]
    seconds: float


def convert(source: str | Path, repo_dir: str | Path, opts: ConvertOptions) -> ConvertResult:
    """Load, convert, gate, build variants, gate them, then write the repository version."""
    start = time.perf_counter()
    repo = Path(repo_dir)
    model_dir = repo / opts.name
    existed = model_dir.exists()
    version = check_target(repo, opts.name, opts.version)
    try:
        src = load_source(source, opts.custom_objects)
        return convert_loaded(src, repo, version, opts, start)
    except BaseException:
        if not existed and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()  # leave no trace of a conversion that wrote nothing
        raise


def convert_loaded(
    src: LoadedSource, repo: Path, version: int, opts: ConvertOptions, start: float | None = None
) -> ConvertResult:
    start = time.perf_counter() if start is None else start
    contract = detect_contract(src, opts.overrides)
    model = to_onnx(src, contract, opts.opset)
    cam, cam_note = add_cam_output(src, contract, model)  # optional 2nd output, for heatmaps
    metadata = {**contract.to_metadata(), **(cam.to_metadata() if cam else {})}
    onnx.helper.set_model_props(model, metadata)

    images = gather_images(opts.image_folders)
    probes = probe_batch(contract, images)
    reference = src.predict(probes)
    report = Report(subject=src.name)
    structure_checks(report, model)
    session = runtime_checks(report, model.SerializeToString(), contract, probes)
    if session is not None:
        parity_check(report, session, reference, probes, opts.tolerance)
    report.raise_if_failed(src.name)

    parity = next(c.figures for c in report.checks if c.name == "parity_keras")
    provenance = {
        "source": {"name": src.name, "format": src.format, "sha256": src.sha256},
        "tools": tool_versions(),
        "parity": parity,
        "converted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    onnx.helper.set_model_props(model, {**metadata, PROVENANCE_KEY: _json(provenance)})
    fp32 = model.SerializeToString()
    files = {"model.onnx": fp32}
    figures: dict[str, Any] = {"model.onnx": {"kind": "fp32", "parity": parity}}

    real = probes[-len(images) :]
    with tempfile.TemporaryDirectory(prefix="pneumo-convert-") as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        fp32_path.write_bytes(fp32)
        inputs = Inputs(model, fp32_path, src, contract, real, Path(tmp))
        onnx_scores = contract.scores(run_batched(session, real)) if session else real[:0]
        keras_scores = contract.scores(reference[-len(images) :])
        built = build_and_check(list(opts.variants), inputs, onnx_scores, keras_scores, report)
    report.raise_if_failed(f"{src.name} variants")
    for key, (data, variant_figures) in built.items():
        filename = OPTIONAL_VARIANTS[key].filename
        files[filename] = data
        figures[filename] = {"kind": key, **variant_figures}

    fidelity = fast_path_fidelity(session, contract, images)
    manifest = {
        "name": opts.name,
        "version": version,
        "contract": contract.to_dict(),
        PREPROCESSING_KEY: fidelity,
        "class_activation_map": {"available": cam is not None, "detail": cam_note},
        **provenance,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in report.checks],
    }
    seconds = round(time.perf_counter() - start, 2)
    manifest["conversion_seconds"] = seconds
    version_dir, manifest = write_version(
        repo, opts.name, version, files, figures, manifest, contract
    )
    log.info("wrote %s in %.1f s", version_dir, manifest["conversion_seconds"])
    return ConvertResult(version_dir, contract, report, manifest, seconds)


def fast_path_fidelity(session: Any, contract: Contract, images: Sequence[Path]) -> dict[str, Any]:
    """The fast preprocessing path against the reference one, with the converted model on the
    probe X-rays, and the engine's verdict on it (its `auto` re-reads the figures)."""
    figures = measure(lambda x: contract.scores(run_batched(session, x)), images, contract)
    path, why = verdict(figures, contract)
    log.info("preprocessing: %s by default (%s)", path, why)
    return {"fast_vs_reference": figures, "verdict": path, "reason": why}


def tool_versions() -> dict[str, str]:
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "pneumo-onnx": engine.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
