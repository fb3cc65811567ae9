"""`pneumo validate` on tiny ONNX graphs: every check, both report formats, exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from pneumo_onnx.convert.report import CheckFailed, Report
from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.repository.manifest import MANIFEST_NAME, Manifest
from pneumo_onnx.engine.repository.sections import FileEntry
from tests.conftest import rerecord, tiny_model

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
    manifest = Manifest(files={"tiny.onnx": FileEntry("0" * 64, 1)})
    (model.parent / MANIFEST_NAME).write_text(manifest.to_json())
    assert main(["validate", str(model)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  manifest_sha256: tiny.onnx does not match the sha256 in its manifest.json" in out
    rerecord(model.parent, "tiny.onnx")
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


# --- the labelled check ------------------------------------------------------------------------
# The tiny model scores sigmoid(4 * (mean pixel - 0.5)): on uniform grey images, darker is
# NORMAL. Each image is one grey level.
DARK, BRIGHT = (40, 60, 80, 110), (150, 170, 200, 230)


def labelled(folder: Path, normal=DARK, pneumonia=BRIGHT) -> Path:
    for label, levels in (("NORMAL", normal), ("PNEUMONIA", pneumonia)):
        (folder / label).mkdir(parents=True)
        for level in levels:
            Image.new("L", (64, 64), level).save(folder / label / f"grey{level}.png")
    return folder


def test_labelled_images_pass_and_are_reported(write_model, tmp_path: Path, capsys) -> None:
    model = write_model(contract=CONTRACT)
    report = tmp_path / "report.json"
    images = labelled(tmp_path / "xrays")
    assert main(["validate", str(model), "--images", str(images), "--report", str(report)]) == 0
    check = json.loads(report.read_text())["checks"][-1]
    assert check["name"] == "labelled_auc" and check["passed"]
    assert check["detail"] == (
        "ROC AUC 1.000 on 8 labelled images (4 NORMAL, 4 PNEUMONIA; reference preprocessing, as "
        "the engine runs it); sensitivity 1.000, specificity 1.000 at 0.5"
    )
    assert check["figures"]["roc_auc"] == 1.0 and check["figures"]["better_scalings"] == []


def test_inverted_labels_fail(write_model, tmp_path: Path, capsys) -> None:
    """A model whose contract has the label order the wrong way round: every other check passes,
    the labelled one does not."""
    inverted = Contract(
        input=InputSpec(height=32, width=32), negative_label="PNEUMONIA", positive_label="NORMAL"
    )
    model = write_model(contract=inverted)
    images = labelled(tmp_path / "xrays")
    assert main(["validate", str(model), "--images", str(images)]) == 1
    out = capsys.readouterr().out
    assert (
        "FAIL  labelled_auc: labels look inverted: ROC AUC 0.000 on 8 labelled images (4 "
        "PNEUMONIA, 4 NORMAL; reference preprocessing, as the engine runs it); sensitivity 0.000, "
        "specificity 0.000 at 0.5; with the labels the other way round it would be 1.000: did "
        "you mean --labels NORMAL,PNEUMONIA?\n"
    ) in out
    assert out.count("FAIL") == 1 and "tiny.onnx: INVALID" in out


def test_a_clearly_better_input_scaling_is_named(write_model, tmp_path: Path, capsys) -> None:
    """Pixels fed in [0, 255] to a model that wants [0, 1]: every score saturates at 1."""
    raw = Contract(input=InputSpec(height=32, width=32, scaling="raw"))
    model = write_model(contract=raw)
    images = labelled(tmp_path / "xrays")
    assert main(["validate", str(model), "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "PASS  labelled_auc: ROC AUC 0.500 on 8 labelled images" in out
    assert (
        "; input scaling 'unit' scores clearly better on 8 of these images (ROC AUC 1.000 vs "
        "0.500, balanced accuracy 1.000 vs 0.500): did you mean --input-scaling unit?"
    ) in out


@pytest.mark.parametrize(("min_auc", "code"), [("0.95", 1), ("0.9", 0)])
def test_min_auc(write_model, tmp_path: Path, capsys, min_auc: str, code: int) -> None:
    # One bright NORMAL image outscores one PNEUMONIA image: 15 of 16 pairs in order.
    images = labelled(tmp_path / "xrays", normal=(40, 60, 160, 110))
    model = write_model(contract=CONTRACT)
    assert main(["validate", str(model), "--images", str(images), "--min-auc", min_auc]) == code
    out = capsys.readouterr().out
    assert "labelled_auc: ROC AUC 0.938 on 8 labelled images" in out
    if code:
        assert "specificity 0.750 at 0.5: below --min-auc 0.95\n" in out


def test_labelled_folders_inside_the_folder_given(write_model, tmp_path: Path, capsys) -> None:
    """A dataset as downloaded: chest_xray/train/{NORMAL,PNEUMONIA}, chest_xray/test/{...}."""
    labelled(tmp_path / "chest_xray" / "train")
    labelled(tmp_path / "chest_xray" / "test", normal=(90,), pneumonia=(140,))
    model = write_model(contract=CONTRACT)
    assert main(["validate", str(model), "--images", str(tmp_path / "chest_xray")]) == 0
    assert "PASS  labelled_auc: ROC AUC 1.000 on 10 labelled images (5 NORMAL, 5 PNEUMONIA;" in (
        capsys.readouterr().out
    )


def test_min_auc_needs_labelled_images(write_model, tmp_path: Path, capsys) -> None:
    model = write_model(contract=CONTRACT)
    assert main(["validate", str(model), "--min-auc", "0.8"]) == 2
    assert capsys.readouterr().err == (
        "error: --min-auc needs labelled images: --images DIR where DIR holds NORMAL/ and "
        "PNEUMONIA/ subfolders, each with images\n"
    )


def test_other_class_folders_are_named(write_model, tmp_path: Path, capsys, caplog) -> None:
    model = write_model(contract=CONTRACT)
    images = tmp_path / "pets"
    for name in ("cats", "dogs"):
        (images / name).mkdir(parents=True)
        Image.new("L", (64, 64), 99).save(images / name / "a.png")
    assert main(["validate", str(model), "--images", str(images)]) == 0
    assert (
        f"--images {images} has subfolders cats, dogs but the model's labels are NORMAL and "
        "PNEUMONIA: no labelled check on it (it needs subfolders named after the labels)"
    ) in caplog.text
    assert "labelled_auc" not in capsys.readouterr().out


# --- reports name their model ------------------------------------------------------------------


def test_junit_suites_carry_the_model_name(tmp_path: Path) -> None:
    """Two models validated in one CI job: their suites and test cases never collide."""
    suites = []
    for name in ("alpha", "beta"):
        version = tmp_path / "repo" / name / "1"
        version.mkdir(parents=True)
        model = version / "model.onnx"
        model.write_bytes(tiny_model(contract=CONTRACT).SerializeToString())
        files = {"model.onnx": FileEntry.of(model.read_bytes(), {})}
        manifest = Manifest(files=files, name=name, version=1)
        (version / MANIFEST_NAME).write_text(manifest.to_json())
        report = tmp_path / f"{name}.xml"
        assert main(["validate", str(model), "--report", str(report)]) == 0
        suites.append(ET.parse(report).getroot().find("testsuite"))
    assert [s.get("name") for s in suites] == [
        "pneumo validate alpha/1/model.onnx",
        "pneumo validate beta/1/model.onnx",
    ]
    classnames = [{c.get("classname") for c in s.iter("testcase")} for s in suites]
    assert classnames == [
        {"pneumo.validate.alpha.1.model_onnx"},
        {"pneumo.validate.beta.1.model_onnx"},
    ]


def test_plain_file_report_is_named_by_its_path(write_model, tmp_path: Path) -> None:
    model = write_model(contract=CONTRACT)
    report = tmp_path / "r.xml"
    assert main(["validate", str(model), "--report", str(report)]) == 0
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and suite.get("name") == f"pneumo validate {model}"


def test_skipped_checks_do_not_fail_a_report(tmp_path: Path) -> None:
    report = Report(subject="m.keras")
    report.run("needed", lambda: ("fine", {}))

    def miss() -> tuple[str, dict]:
        raise CheckFailed("p99 0.2 > 0.05", {"p99_score_diff": 0.2})

    report.run("variant_x", miss, optional=True)
    assert report.ok and report.failures() == []
    assert report.summary_lines() == ["PASS  needed: fine", "SKIP  variant_x: p99 0.2 > 0.05"]
    report.write(tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite is not None and (suite.get("skipped"), suite.get("failures")) == ("1", "0")
    skipped = suite.find("testcase/skipped")
    assert skipped is not None and skipped.get("message") == "p99 0.2 > 0.05"
    report.run("variant_y", miss)
    assert not report.ok and report.failures() == ["variant_y: p99 0.2 > 0.05"]
