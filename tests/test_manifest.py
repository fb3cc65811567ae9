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
from pneumo_onnx.engine.errors import RepositoryError
from pneumo_onnx.engine.repository.manifest import (
    FORMAT,
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    sha256_file,
)
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.repository.sections import FileEntry, Parity, TrainingImages

SHIPPED = default_model_dir()


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
    int8 = manifest.files["model.int8.onnx"]
    assert (int8.kind, int8.size, int8.figures["reference"]) == ("int8", 197128, "onnx")
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
    data = {
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
    ):
        assert problem in message
    assert message.count("; ") == 13  # those 14, and nothing else


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
    bad = Manifest(parity=Parity(float("nan"), {"1": 0.0}, 1e-5, 3))
    with pytest.raises(RepositoryError, match=r"parity\.max_abs_diff must be a finite number"):
        write_version(tmp_path, "m", 1, {"model.onnx": b"onnx"}, {}, bad, Contract())
    assert not (tmp_path / "m" / "1").exists()
    good = replace(bad, parity=replace(bad.parity, max_abs_diff=0.0))  # type: ignore[arg-type]
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
