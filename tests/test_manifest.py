"""The manifest is a typed, versioned record: both shipped manifests read and round-trip, a
malformed one is refused with every problem listed, a future format asks for an upgrade, and
every file check goes through one function (`Manifest.check_file`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pneumo_onnx.convert.repository import write_version
from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import EXIT_FAILED, RepositoryError
from pneumo_onnx.engine.repository.manifest import (
    FORMAT,
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    sha256_file,
)
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.repository.sections import FileEntry, Parity, TrainingImages
from pneumo_onnx.engine.repository.variant_figures import WorstNode
from pneumo_onnx.engine.repository.variants import GATES

SHIPPED = default_model_dir()
INT8 = {  # a variant's gate figures, as build_and_check records them
    "images": 70,
    "near_threshold": 1,
    "label_agreement": 1.0,
    "agreement_lower_95": 0.95,
    "median_score_diff": 1e-4,
    "p99_score_diff": 0.01,
    "max_score_diff": 0.02,
    "reference": "onnx",
    "about": "static QDQ int8",
    "gate": "int8 gate: p99 <= 0.05, agreement >= 99%",
}
PRECISION = {  # how it was built (convert/precision.py): its first two nodes kept in fp32
    "calibration_images": 70,
    "target_p99_score_diff": 0.02,
    "fp32_nodes": ["conv_1", "conv_2"],
    "attempts": [
        {"fp32_nodes": 0, "last_fp32_node": None, "p99_score_diff": 0.04, "max_score_diff": 0.1},
        {
            "fp32_nodes": 2,
            "last_fp32_node": "conv_2",
            "p99_score_diff": 0.01,
            "max_score_diff": 0.02,
        },
    ],
    "fp32_mac_share": 0.25,
}


def shipped_json(version: int) -> dict[str, Any]:
    return json.loads((SHIPPED / str(version) / MANIFEST_NAME).read_text())


def test_version_2_round_trips_exactly() -> None:
    data = shipped_json(2)
    manifest = Manifest.from_dict(data)
    assert manifest.to_dict() == data
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    # The facts its readers use, typed.
    assert (manifest.name, manifest.version, manifest.format) == ("pneumonia", 2, FORMAT)
    assert manifest.contract is not None and manifest.contract.threshold == 0.71
    assert manifest.preprocessing is not None and manifest.preprocessing.verdict == "fast"
    assert manifest.fast_vs_reference is not None and manifest.fast_vs_reference.images == 1250
    assert manifest.parity is not None and manifest.parity.tolerance == 1e-05
    assert manifest.parity.max_abs_diff_by_batch["64"] == pytest.approx(8.64e-07, rel=1e-3)
    cam = manifest.class_activation_map
    assert cam is not None and cam.available and cam.scale is not None and cam.scale.images == 70
    assert manifest.training_images == TrainingImages("training_images.txt.gz", 4172)
    assert manifest.source is not None and manifest.source.name == "pneumonia_cnn_v2.keras"
    assert manifest.tools is not None and manifest.tools["tf2onnx"] == "1.17.0"
    assert manifest.probe_images is not None and manifest.probe_images.gates == 1250
    assert manifest.labelled is not None and manifest.labelled["roc_auc"] > 0.99
    assert manifest.expected_scores is None  # converted before that check existed: no key
    assert manifest.skipped_variants == {}
    kept = ["fp32", "int8", "int8-full", "fp16", "tflite", "tflite-dynamic", "ort"]
    assert list(manifest.variants) == kept
    int8 = manifest.variants["int8"]
    assert (int8.kind, int8.size, int8.figures) == ("int8", 197128, {})
    assert int8.variant is not None and int8.variant.reference == "onnx"
    assert int8.variant.p99_score_diff == pytest.approx(0.0133, abs=1e-4)
    assert int8.variant.gate == "int8 gate: p99 <= 0.05, agreement >= 99%"
    assert (int8.precision, int8.fp32_mac_share) == (None, None)  # converted before the record
    assert manifest.sha256("model.int8.onnx") == int8.sha256
    assert manifest.variants["fp32"].figures["parity"] == manifest.parity.to_dict()
    assert manifest.threshold_source is None  # converted before it was recorded
    checks = manifest.checks or ()
    assert len(checks) == 14 and all(c.passed and not c.skipped for c in checks)


def test_version_1_reads_and_round_trips_with_the_contract_restated() -> None:
    """Version 1 predates the skipped flag of checks and contract schema 2: its round trip
    states both as today's writer does, with the same meaning, and reads back equal."""
    data = shipped_json(1)
    manifest = Manifest.from_dict(data)
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    again = manifest.to_dict()
    assert data["contract"]["schema"] == 1 and again["contract"]["schema"] == 2
    assert Contract.from_dict(again["contract"]) == Contract.from_dict(data["contract"])
    assert again["checks"] == [{**c, "skipped": False} for c in data["checks"]]
    rest = {k for k in data if k not in ("contract", "checks")}
    assert {k: again[k] for k in rest} == {k: data[k] for k in rest} and set(again) == set(data)
    assert manifest.preprocessing is not None and manifest.preprocessing.verdict == "reference"
    assert manifest.class_activation_map is not None
    assert manifest.class_activation_map.scale is None  # measured only since version 2
    assert manifest.parity is not None and manifest.parity.fp32_noise is None
    assert (manifest.probe_images, manifest.labelled, manifest.skipped_variants) == (None,) * 3
    fp16 = manifest.variants["fp16"].variant  # before the p99 gates: agreement and max only
    assert fp16 is not None and fp16.images == 70 and fp16.label_agreement == 1.0
    assert (fp16.p99_score_diff, fp16.gate, fp16.near_threshold) == (None, None, None)


def test_a_hand_written_manifest_needs_only_format_and_files() -> None:
    """What tests, scripts and older code wrote: files and hashes, nulls for "none", and keys
    a newer pneumo-onnx may add within the format (ignored)."""
    data = {
        "format": FORMAT,
        "files": {"model.onnx": {"sha256": "0" * 64, "bytes": 3}},
        "labelled": None,
        "expected_scores": None,
        "a_fact_from_the_future": {"x": 1},
    }
    manifest = Manifest.from_dict(data)
    assert manifest == Manifest(files={"model.onnx": FileEntry("0" * 64, 3)})
    assert manifest.to_dict() == {"format": FORMAT, "files": data["files"]}


def test_every_problem_is_reported_at_once() -> None:
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": 0,
        "files": {
            "model.onnx": {"sha256": "not-a-hash", "bytes": -1},
            "../escape.onnx": {"sha256": "0" * 64, "bytes": 1},
        },
        "contract": {**shipped_json(2)["contract"], "threshold": 7},
        "preprocessing": {"verdict": "quick", "reason": "?"},
        "parity": {"max_abs_diff": "small", "max_abs_diff_by_batch": {"1": None}, "probes": 3},
        "checks": [{"name": "x", "passed": "yes", "detail": ""}],
        "tools": ["tensorflow"],
        "converted": "yesterday",
        "class_activation_map": {"available": True, "detail": "", "scale": {"floor": 1}},
        "threshold_source": "guessed",
        "skipped_variants": {"fp16": {"reason": "missed", **INT8, "label_agreement": 2}},
    }
    data["files"]["model.int8.onnx"] = {
        "sha256": "1" * 64,
        "bytes": 1,
        "kind": "int8",
        **INT8,
        "precision": {**PRECISION, "fp32_nodes": "conv", "worst_nodes": [{"node": "n"}]},
    }
    with pytest.raises(RepositoryError) as e:
        Manifest.from_dict(data)
    message = e.value.message
    assert message.startswith("manifest.json is malformed: ")
    for problem in (
        "version must be a whole number >= 1, got 0",
        "files.model.onnx.sha256 must be 64 lowercase hex digits (a sha256), got 'not-a-hash'",
        "files.model.onnx.bytes must be a whole number >= 0, got -1",
        "files: '../escape.onnx' must be a file name inside the version folder",
        "contract: invalid model contract: threshold must be a finite number in [0, 1], got 7",
        "preprocessing.verdict must be one of fast, reference, got 'quick'",
        "preprocessing.fast_vs_reference is missing",
        "parity.max_abs_diff must be a finite number, got 'small'",
        "parity.max_abs_diff_by_batch must be an object whose values are each a finite number",
        "parity.tolerance is missing",
        "checks[0].passed must be true or false, got 'yes'",
        "tools must be a JSON object, got ['tensorflow']",
        "converted must be an ISO 8601 time, got 'yesterday'",
        "class_activation_map.scale: not a colour scale: 'full'",
        "threshold_source must be one of stated, default, got 'guessed'",
        "skipped_variants.fp16.label_agreement must be a share in [0, 1], got 2",
        "files.model.int8.onnx.precision.fp32_nodes must be a JSON list of node names, got 'conv'",
        "files.model.int8.onnx.precision.worst_nodes[0].op is missing",
        "files.model.int8.onnx.precision.worst_nodes[0].alone_p99_score_diff is missing",
        "files.model.int8.onnx.precision.worst_nodes[0].reduced is missing",
    ):
        assert problem in message
    assert message.count("; ") == 19  # those 20, and nothing else


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"format": "pneumo-model-repository/2", "files": "anything"},
            "manifest.json has format 'pneumo-model-repository/2', and this pneumo-onnx reads "
            "pneumo-model-repository/1: upgrade pneumo-onnx",
        ),
        ({"format": "other"}, "manifest.json is not a pneumo-model-repository/1 manifest"),
        ([1, 2], "manifest.json is not a pneumo-model-repository/1 manifest"),
        ({"format": FORMAT}, "manifest.json is malformed: files is missing"),
        (
            {
                "format": FORMAT,
                "files": {},
                "contract": {**shipped_json(2)["contract"], "schema": 9},
            },
            "contract: model contract schema 9 is not supported (this pneumo-onnx reads "
            "schemas 1, 2, 3): upgrade pneumo-onnx",
        ),
    ],
    ids=["future-format", "other-format", "not-an-object", "no-files", "future-contract"],
)
def test_what_cannot_be_read_is_refused(data: object, message: str) -> None:
    with pytest.raises(RepositoryError) as e:
        Manifest.from_dict(data)
    assert message in e.value.message


def test_check_file_is_the_one_sha256_check(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    manifest = Manifest(files={"model.onnx": FileEntry.of(b"onnx", {"kind": "fp32"})})
    assert manifest.check_file(model) == sha256_file(model)
    assert manifest.check_file(model, b"onnx") == sha256_file(model)
    with pytest.raises(RepositoryError, match=r"^model.onnx does not match the sha256 in its"):
        manifest.check_file(model, b"0nnx")
    with pytest.raises(RepositoryError, match=r"^other.onnx is not listed in its manifest.json$"):
        manifest.check_file(tmp_path / "other.onnx")


def test_the_writer_refuses_what_its_reader_would(tmp_path: Path) -> None:
    """write_version reads its manifest back before writing anything: a NaN where the reader
    wants a finite number is a conversion bug, not a version that fails on every load."""
    parity = Parity(float("nan"), {"1": 0.0}, 1e-5, 3)
    bad = Manifest(parity=parity)
    with pytest.raises(RepositoryError, match=r"parity\.max_abs_diff must be a finite number"):
        write_version(tmp_path, "m", 1, {"model.onnx": b"onnx"}, {}, bad, Contract())
    assert not (tmp_path / "m" / "1").exists()
    good = replace(bad, parity=replace(parity, max_abs_diff=0.0))
    folder, written = write_version(tmp_path, "m", 1, {"model.onnx": b"onnx"}, {}, good, Contract())
    assert read_manifest(folder) == written and (written.name, written.version) == ("m", 1)
    assert written.files["model.onnx"] == FileEntry.of(b"onnx", {})


def test_info_shows_the_manifest_facts(capsys: pytest.CaptureFixture[str]) -> None:
    manifest = read_manifest(SHIPPED / "2")
    assert main(["info", str(SHIPPED / "2")]) == 0
    text = capsys.readouterr().out
    assert "source:       pneumonia_cnn_v2.keras (keras, sha256 fceb6c2d3a5e...)" in text
    assert "parity:       max abs diff 8.64e-07 vs the source on 76 probes (tolerance 1.0e-05)" in (
        text
    )
    assert main(["info", "--json", str(SHIPPED / "2")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert manifest.source and info["source"] == manifest.source.to_dict()
    assert manifest.parity and info["parity"] == manifest.parity.to_dict()
    assert manifest.fast_vs_reference
    assert info["fast_vs_reference"] == manifest.fast_vs_reference.to_dict()


def test_variants_say_what_their_fp32_layers_cost() -> None:
    """Since variants keep their first layers in fp32 the manifest records which and at what
    share of the multiply-adds; a skipped variant also records the nodes that lose fidelity."""
    worst = {
        "node": "pool",
        "op": "GlobalAveragePool",
        "alone_p99_score_diff": 0.2,
        "reduced": "u8",
    }
    data = {
        "format": FORMAT,
        "threshold_source": "stated",
        "files": {
            "model.onnx": {"sha256": "0" * 64, "bytes": 3, "kind": "fp32"},
            "model.int8.onnx": {
                "sha256": "1" * 64,
                "bytes": 2,
                "kind": "int8",
                **INT8,
                "precision": PRECISION,
                "a_figure_from_the_future": [1],
            },
        },
        "skipped_variants": {
            "int8-full": {
                "reason": "missed its gate",
                **INT8,
                "bytes": 2,
                "precision": {
                    **PRECISION,
                    "worst_nodes": [worst],
                    "fp32_half_grey_level_p99_score_diff": 1e-4,
                },
            },
            "fp16": {"reason": "building fp16 failed: no CUDA kernels"},
        },
    }
    manifest = Manifest.from_dict(data)
    assert manifest.to_dict() == data
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    assert manifest.threshold_source == "stated"
    int8 = manifest.variants["int8"]
    assert int8.precision is not None and int8.precision.fp32_nodes == ("conv_1", "conv_2")
    assert int8.fp32_mac_share == 0.25 and int8.precision.worst_nodes is None
    assert int8.variant is not None and int8.variant.rest == {"a_figure_from_the_future": [1]}
    assert GATES["int8"].misses(int8.variant.to_dict()) == []
    full = (manifest.skipped_variants or {})["int8-full"]
    assert full.variant is not None and full.variant.rest == {"bytes": 2}
    assert full.variant.precision is not None
    assert full.variant.precision.worst_nodes == (
        WorstNode("pool", "GlobalAveragePool", 0.2, "u8"),
    )
    failed = (manifest.skipped_variants or {})["fp16"]
    assert (failed.variant, failed.figures) == (None, {})


def test_info_names_a_broken_manifest_and_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = tmp_path / "pneumonia" / "3"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes((SHIPPED / "2" / "model.onnx").read_bytes())
    data = shipped_json(2)
    data["version"] = "three"
    data["files"]["model.int8.onnx"]["precision"] = {**PRECISION, "fp32_mac_share": 4}
    (version / MANIFEST_NAME).write_text(json.dumps(data))
    assert main(["info", str(version)]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err == (
        "error: pneumonia/3/manifest.json is malformed: files.model.int8.onnx.precision."
        "fp32_mac_share must be a share in [0, 1], got 4; version must be a whole number >= 1, "
        "got 'three'\n"
    )
