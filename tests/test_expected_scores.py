"""`pneumo validate --expected-scores`: the engine against the user's own application.

The application here is what an author of the shipped model v2 writes without pneumo: PIL's
`Image.open(p).convert("RGB").resize((128, 128))` (bicubic), / 255, then the model (run with
onnxruntime directly; its parity with Keras is test_reference_parity's). A second application
runs one more step before the resize, a gain of 2 with saturation (what
cv2.convertScaleAbs(img, alpha=2) does): a pipeline the model was not converted with, which
the check must catch.
"""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.runtime.session import create_session

MODEL = Path(__file__).resolve().parents[1] / "models" / "pneumonia" / "2" / "model.onnx"


def application(gain: float = 1.0) -> Callable[[Path], float]:
    session = create_session(MODEL)
    name = session.get_inputs()[0].name

    def score(path: Path) -> float:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        if gain != 1.0:
            pixels = np.clip(np.rint(pixels * gain), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8)).resize((128, 128))
        x = np.asarray(image, dtype=np.float32)[None] / 255.0
        return float(session.run(None, {name: x})[0][0, 0])

    return score


@pytest.fixture
def xrays(tmp_path: Path) -> Path:
    """The six shipped X-rays in NORMAL/ and PNEUMONIA/ subfolders of one folder."""
    folder = tmp_path / "xrays"
    for p in sample_images():
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.parent.name / p.name)
    return folder


def write_csv(
    path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("image", "score")
) -> Path:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)
    return path


def expected(folder: Path, app: Callable[[Path], float], target: Path) -> Path:
    """The recipe of the README: one row per image, path relative to the folder."""
    images = sorted(folder.rglob("*.jpeg"))
    return write_csv(target, [(str(p.relative_to(folder)), repr(app(p))) for p in images])


def validate(*args: str) -> int:
    return main(["validate", str(MODEL), *args])


def test_the_faithful_application_passes(xrays: Path, tmp_path: Path, capsys) -> None:
    table = expected(xrays, application(), tmp_path / "expected.csv")
    report = tmp_path / "report.json"
    assert (
        validate("--images", str(xrays), "--expected-scores", str(table), "--report", str(report))
        == EXIT_OK
    )
    check = next(
        c for c in json.loads(report.read_text())["checks"] if c["name"] == "expected_scores"
    )
    assert check["passed"]
    assert check["figures"]["images"] == 6 and check["figures"]["over_bound"] == 0
    assert 0 < check["figures"]["max_score_diff"] <= 0.02  # the fast path: close, not equal
    assert check["figures"]["preprocessing"] == "fast"
    assert (
        "6 images of expected.csv through the engine's fast preprocessing"
        in capsys.readouterr().out
    )


def test_an_unstated_step_fails_with_one_row_per_image(xrays: Path, tmp_path: Path, capsys) -> None:
    table = expected(xrays, application(gain=2.0), tmp_path / "expected.csv")
    report = tmp_path / "report.xml"
    args = ("--images", str(xrays), "--expected-scores", str(table), "--report", str(report))
    assert validate(*args) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "FAIL  expected_scores: 6 images of expected.csv" in out
    assert "3 of 6 images: your application likely prepares images differently" in out
    assert "1 label change away from the threshold" in out  # 0.032 -> 0.993 at 0.71
    cases = ET.parse(report).getroot().iter("testcase")
    rows = {
        c.get("name"): c.find("failure")
        for c in cases
        if c.get("name", "").startswith("expected_score ")
    }
    assert len(rows) == 3, rows.keys()  # the NORMAL ones: the PNEUMONIA ones stay at ~1.0
    failure = rows["expected_score NORMAL/IM-0651-0001.jpeg"]
    assert failure is not None and "your application's" in failure.get("message", "")
    figures = json.loads(failure.text or "{}")
    assert figures["diff"] > 0.02 and figures["line"] >= 2


def test_names_resolve_by_relative_path_or_unique_file_name(xrays: Path, tmp_path: Path) -> None:
    app = application()
    normal = sorted((xrays / "NORMAL").iterdir())
    table = write_csv(
        tmp_path / "mixed.csv",
        [
            (normal[0].name, repr(app(normal[0]))),
            (f"NORMAL/{normal[1].name}", repr(app(normal[1]))),
        ],
    )
    assert validate("--images", str(xrays), "--expected-scores", str(table)) == EXIT_OK
    # Without --images, names are relative to the CSV's folder.
    beside = write_csv(xrays / "beside.csv", [(f"NORMAL/{normal[2].name}", repr(app(normal[2])))])
    assert validate("--expected-scores", str(beside)) == EXIT_OK


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (
            [("NORMAL/x.jpeg", "0.5")],
            ("file", "prob"),
            "needs a header with the columns 'image' and 'score', found 'file', 'prob'",
        ),
        ([("nowhere.jpeg", "0.5")], ("image", "score"), "line 2: nowhere.jpeg: no such image in"),
        (
            [("IM-0651-0001.jpeg", "high")],
            ("image", "score"),
            "line 2: score 'high' is not a number",
        ),
        (
            [("IM-0651-0001.jpeg", "1.5")],
            ("image", "score"),
            "line 2: score 1.5 is not a probability in [0, 1]",
        ),
        ([("IM-0651-0001.jpeg", "nan")], ("image", "score"), "score nan is not a probability"),
        (
            [("IM-0651-0001.jpeg", "0.1"), ("NORMAL/IM-0651-0001.jpeg", "0.1")],
            ("image", "score"),
            "line 3: NORMAL/IM-0651-0001.jpeg is listed twice (line 2)",
        ),
        ([], ("image", "score"), "no rows under its header"),
    ],
    ids=["columns", "missing-image", "not-a-number", "out-of-range", "nan", "twice", "empty"],
)
def test_a_bad_csv_is_a_usage_error(
    xrays: Path, tmp_path: Path, capsys, rows, header, message: str
) -> None:
    table = write_csv(tmp_path / "bad.csv", rows, header)
    assert validate("--images", str(xrays), "--expected-scores", str(table)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_ambiguous_file_name_asks_for_the_path(xrays: Path, tmp_path: Path, capsys) -> None:
    first = sorted((xrays / "NORMAL").iterdir())[0]
    shutil.copy(first, xrays / "PNEUMONIA" / first.name)
    table = write_csv(tmp_path / "twice.csv", [(first.name, "0.1")])
    assert validate("--images", str(xrays), "--expected-scores", str(table)) == EXIT_USAGE
    assert f"{first.name} names 2 files" in capsys.readouterr().err


def test_an_unreadable_image_is_a_failing_row(tmp_path: Path, capsys) -> None:
    """Named by an absolute path, outside any --images folder (whose files are probes, which
    must all be readable)."""
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    table = write_csv(tmp_path / "expected.csv", [(str(broken), "0.2")])
    assert validate("--expected-scores", str(table)) == EXIT_FAILED
    out = capsys.readouterr().out
    assert f"FAIL  expected_score {broken}: the engine could not read {broken}: " in out
    assert "not a supported image" in out
    assert "FAIL  expected_scores: 1 image of expected.csv" in out
