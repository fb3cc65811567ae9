"""`pneumo convert`: source model -> validated ONNX + variants -> one repository version.

Nothing is written until the fp32 graph passed its gates (and the labelled check, when labelled
images are given) and every variant named in `--variants` passed its gate; with the default
`all`, a variant that misses its gate is left out, recorded in the manifest and warned about.
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

from pneumo_onnx import __version__
from pneumo_onnx.convert.builders import Inputs
from pneumo_onnx.convert.cam import add_cam_output, with_scale
from pneumo_onnx.convert.detect import Overrides, detect_contract
from pneumo_onnx.convert.expected import expected_scores_check, read_expected
from pneumo_onnx.convert.export import DEFAULT_OPSET, to_onnx
from pneumo_onnx.convert.labelled import labelled_check
from pneumo_onnx.convert.noise import fp32_noise, tolerance_for
from pneumo_onnx.convert.probes import gather_images, probe_batch, spread
from pneumo_onnx.convert.report import Report
from pneumo_onnx.convert.repository import check_target, read_training_list, write_version
from pneumo_onnx.convert.source import LoadedSource, load_source
from pneumo_onnx.convert.validate import parity_check, runtime_checks, structure_checks
from pneumo_onnx.convert.variants import build_and_check
from pneumo_onnx.engine.contract import PROVENANCE_KEY, Contract
from pneumo_onnx.engine.repository.manifest import Manifest
from pneumo_onnx.engine.repository.sections import (
    CamRecord,
    CheckRecord,
    Parity,
    Preprocessing,
    ProbeImages,
    SkippedVariant,
    Source,
    TrainingImages,
)
from pneumo_onnx.engine.repository.variants import OPTIONAL_VARIANTS
from pneumo_onnx.engine.runtime.fidelity import measure, verdict
from pneumo_onnx.engine.runtime.metrics import wilson_lower
from pneumo_onnx.engine.runtime.session import run_batched

log = logging.getLogger(__name__)

DETECTION_IMAGES = 16  # user images the output detection checks sum-to-one on
FEW_GATE_IMAGES = 100  # below this, say how little the variant gates promise for new images


@dataclass(frozen=True)
class ConvertOptions:
    name: str = "pneumonia"
    version: int | None = None
    opset: int = DEFAULT_OPSET
    # None: every optional variant, each kept only if it passes its gate (a miss is recorded
    # and warned about); named keys: each must pass, or nothing is written.
    variants: Sequence[str] | None = None
    overrides: Overrides = field(default_factory=Overrides)
    image_folders: Sequence[str] = ()
    tolerance: float | None = None  # None: from the model's own fp32 noise (convert.noise)
    custom_objects: str | None = None
    training_list: str | None = None  # copied into the version (training_images.txt[.gz])
    expected_scores: str | None = None  # the application's own scores (convert.expected)


@dataclass
class ConvertResult:
    version_dir: Path
    contract: Contract
    report: Report
    manifest: Manifest
    seconds: float


def convert(source: str | Path, repo_dir: str | Path, opts: ConvertOptions) -> ConvertResult:
    """Load, convert, gate, build variants, gate them, then write the repository version.

    A failed conversion leaves nothing behind: no version, and none of the repository or model
    folders it created."""
    start = time.perf_counter()
    repo = Path(repo_dir)
    created = _missing_folders(repo / opts.name)
    try:
        version = check_target(repo, opts.name, opts.version)
        src = load_source(source, opts.custom_objects)
        return convert_loaded(src, repo, version, opts, start)
    except BaseException:
        for folder in created:  # deepest first; only if still empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def convert_loaded(
    src: LoadedSource, repo: Path, version: int, opts: ConvertOptions, start: float | None = None
) -> ConvertResult:
    start = time.perf_counter() if start is None else start
    listed = read_training_list(opts.training_list) if opts.training_list else None
    expected = (
        read_expected(opts.expected_scores, opts.image_folders) if opts.expected_scores else None
    )
    images = gather_images(opts.image_folders)  # every probe image: variant gates, labels
    subset = spread(images)  # parity probes, int8 calibration
    contract = detect_contract(src, opts.overrides, spread(images, DETECTION_IMAGES))
    model = to_onnx(src, contract, opts.opset)
    cam, cam_note = add_cam_output(src, contract, model)  # optional 2nd output, for heatmaps
    metadata = {**contract.to_metadata(), **(cam.to_metadata() if cam else {})}
    onnx.helper.set_model_props(model, metadata)

    probes = probe_batch(contract, subset)
    reference = src.predict(probes)
    noise = fp32_noise(model.SerializeToString(), probes, reference, src.predict)
    tolerance = opts.tolerance if opts.tolerance is not None else tolerance_for(noise)
    report = Report(subject=src.name)
    structure_checks(report, model)
    session = runtime_checks(report, model.SerializeToString(), contract, probes, tolerance)
    if session is not None:
        parity_check(report, session, reference, probes, tolerance, noise=noise)
    report.raise_if_failed(src.name)
    assert session is not None  # runtime_checks failed the report otherwise

    if cam is not None:  # the heatmap colour scale, on real X-rays
        cam = with_scale(cam, session, contract, probes[-len(subset) :])
        metadata.update(cam.to_metadata())
    parity = next(c.figures for c in report.checks if c.name == "parity_keras")
    provenance: dict[str, Any] = {
        "source": {"name": src.name, "format": src.format, "sha256": src.sha256},
        "tools": tool_versions(),
        "parity": parity,
        "converted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    onnx.helper.set_model_props(model, {**metadata, PROVENANCE_KEY: _json(provenance)})
    fp32 = model.SerializeToString()
    files = {"model.onnx": fp32}
    figures: dict[str, Any] = {"model.onnx": {"kind": "fp32", "parity": parity}}

    keys = list(OPTIONAL_VARIANTS) if opts.variants is None else list(opts.variants)
    with tempfile.TemporaryDirectory(prefix="pneumo-convert-") as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        fp32_path.write_bytes(fp32)
        fidelity = fast_path_fidelity(session, contract, images)
        labelled_check(
            report, fp32_path, contract, opts.image_folders, preprocessing=fidelity.verdict
        )
        if expected is not None:
            expected_scores_check(report, fp32_path, expected, preprocessing=fidelity.verdict)
        report.raise_if_failed(src.name)
        inputs = Inputs(
            model, fp32_path, src, contract, probes[-len(subset) :], Path(tmp), tolerance
        )
        built = build_and_check(
            keys, inputs, images, session, report, optional=opts.variants is None
        )
    kept = ",".join(k for k in keys if k in built) or "none"
    report.raise_if_failed(
        f"{src.name} variants",
        hint=f"To get the fp32 model (and the variants that passed) anyway: --variants {kept}",
    )
    for key, (data, variant_figures) in built.items():
        filename = OPTIONAL_VARIANTS[key].filename
        files[filename] = data
        figures[filename] = {"kind": key, **variant_figures}
    skipped = {
        c.name.removeprefix("variant_"): SkippedVariant.of(c.detail, c.figures)
        for c in report.checks
        if c.skipped
    }
    if keys and len(images) < FEW_GATE_IMAGES:
        log.warning(
            "variant gates ran on %d images: 100%% label agreement on them promises only >= "
            "%.1f%% on new X-rays (95%% confidence); give --images a few hundred real X-rays "
            "for gates that bound new data",
            len(images),
            100 * wilson_lower(len(images), len(images)),
        )
    if skipped:
        log.warning(
            "skipped variant(s) %s: each missed its gate (figures in manifest.json, "
            "'skipped_variants'); `--variants %s` gives this same result, and naming a "
            "skipped variant in --variants makes the conversion fail instead",
            ", ".join(skipped),
            kept,
        )

    if listed is not None:
        name, data, count = listed
        files[name], figures[name] = data, {"kind": "training list", "images": count}
    seconds = round(time.perf_counter() - start, 2)
    manifest = Manifest(
        name=opts.name,
        version=version,
        contract=contract,
        preprocessing=fidelity,
        class_activation_map=CamRecord(cam is not None, cam_note, cam.scale if cam else None),
        source=Source(src.name, src.format, src.sha256),
        tools=provenance["tools"],
        parity=Parity.from_dict(parity),
        converted=provenance["converted"],
        training_images=TrainingImages(listed[0], listed[2]) if listed else None,
        checks=tuple(CheckRecord(c.name, c.passed, c.detail, c.skipped) for c in report.checks),
        probe_images=ProbeImages(gates=len(images), parity_and_calibration=len(subset)),
        labelled=next((c.figures for c in report.checks if c.name == "labelled_auc"), None),
        expected_scores=next(
            (c.figures for c in report.checks if c.name == "expected_scores"), None
        ),
        skipped_variants=skipped,
        conversion_seconds=seconds,
        threshold_source="default" if opts.overrides.threshold is None else "stated",
    )
    version_dir, manifest = write_version(
        repo, opts.name, version, files, figures, manifest, contract
    )
    log.info("wrote %s in %.1f s", version_dir, seconds)
    return ConvertResult(version_dir, contract, report, manifest, seconds)


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, deepest first: what a conversion
    into it creates."""
    missing = []
    folder = folder.absolute()
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def fast_path_fidelity(session: Any, contract: Contract, images: Sequence[Path]) -> Preprocessing:
    """The fast preprocessing path against the reference one, with the converted model on the
    probe X-rays, and the engine's verdict on it (its `auto` re-reads the figures)."""
    figures = measure(lambda x: contract.scores(run_batched(session, x)), images, contract)
    path, why = verdict(figures, contract)
    log.info("preprocessing: %s by default (%s)", path, why)
    return Preprocessing(figures, path, why)


def tool_versions() -> dict[str, str]:
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "pneumo-onnx": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
