"""`pneumo validate` on tiny ONNX graphs: every check, both report formats, exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from engine.cli import main
from engine.contract import Contract, InputSpec
from engine.repository.manifest import FORMAT, MANIFEST_NAME, sha256_file

CONTRACT = Contract(input=InputSpec(height=32, width=32))


def test_valid_model_passes_with_json_report(write_model, tmp_path: Path, capsys) -> None:
    model = write_model(contract=CONTRACT)
    report = tmp_path / "report.json"
    assert main(["validate", str(model), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["ok"] is True
    names = [c["name"] for c in data["checks"]]
    assert names == [
        "onnx_parse",
        "onnx_checker",
        "shape_inference",
        "contract",
        "onnxruntime_load",
        "dynamic_batch",
    ]
    assert "embedded" in data["checks"][3]["detail"]
    assert "tiny.onnx: valid" in capsys.readouterr().out


def test_plain_onnx_uses_defaults_and_junit_report(write_model, tmp_path: Path) -> None:
    model = write_model()
    report = tmp_path / "report.xml"
    assert main(["validate", str(model), "--report", str(report)]) == 0
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("tests") == "6"
    contract = next(c for c in suite if c.get("name") == "contract")
    assert "defaults (plain ONNX file)" in (contract.findtext("system-out") or "")


def test_fixed_batch_fails_and_is_reported(write_model, tmp_path: Path, capsys) -> None:
    model = write_model(batch=1, contract=CONTRACT)
    report = tmp_path / "report.xml"
    assert main(["validate", str(model), "--report", str(report)]) == 1
    failures = ET.parse(report).getroot().iter("failure")
    assert any("batch dimension is fixed at 1" in (f.get("message") or "") for f in failures)
    assert "INVALID" in capsys.readouterr().out


def test_corrupt_file_fails(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not protobuf" * 3)
    assert main(["validate", str(bad)]) == 1
    assert "FAIL  onnx_parse: not an ONNX model" in capsys.readouterr().out


def test_manifest_hash_mismatch_fails(write_model, capsys) -> None:
    model = write_model(contract=CONTRACT)
    manifest = {"format": FORMAT, "files": {"tiny.onnx": {"sha256": "0" * 64, "bytes": 1}}}
    (model.parent / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert main(["validate", str(model)]) == 1
    assert "FAIL  manifest_sha256: sha256" in capsys.readouterr().out
    manifest["files"]["tiny.onnx"]["sha256"] = sha256_file(model)
    (model.parent / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert main(["validate", str(model)]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["validate", "missing.onnx"], "missing.onnx: no such ONNX file"),
        (["validate", "{model}", "--report", "{tmp}/r.txt"], "expected a .json or .xml"),
        (
            ["validate", "{model}", "--images", "{tmp}/nowhere"],
            "--images: {tmp}/nowhere: no such folder",
        ),
        (["validate", "{model}", "--images", "{tmp}/empty"], "--images: no images in {tmp}/empty"),
    ],
    ids=["missing-model", "report-suffix", "missing-images", "empty-images"],
)
def test_usage_errors_exit_2(write_model, tmp_path: Path, capsys, argv, message) -> None:
    model = write_model(contract=CONTRACT)
    (tmp_path / "empty").mkdir()
    args = [a.format(model=model, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(tmp=tmp_path) in err
    assert "Traceback" not in err
