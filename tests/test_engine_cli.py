"""`pneumo predict`, `pneumo batch` and `pneumo info`, in process and once as a real process."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.runtime.results import ROW_COLUMNS

CONTRACT = Contract(input=InputSpec(height=32, width=32))


@pytest.fixture
def model(write_model) -> str:
    return str(write_model(contract=CONTRACT))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Five good images (two in a subfolder) and one corrupt file."""
    root = tmp_path / "xrays"
    (root / "sub").mkdir(parents=True)
    for i, value in enumerate((20, 60, 140, 220)):
        Image.new("L", (80, 60), value).save(root / f"img{i}.png")
    Image.new("L", (80, 60), 250).save(root / "sub" / "deep.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    return root


def test_predict_text_json_and_exit_codes(model: str, folder: Path, capsys) -> None:
    good, bad = str(folder / "img3.png"), str(folder / "broken.jpg")
    assert main(["predict", good, "--model", model]) == 0
    assert "img3.png: PNEUMONIA (confidence" in capsys.readouterr().out
    assert main(["predict", good, bad, "--model", model, "--json", "--threshold", "0.99"]) == 1
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["image_path"] for r in rows] == [good, bad]
    assert all(set(r) == set(ROW_COLUMNS) for r in rows)  # the one row schema
    assert rows[0]["prediction"] == "NORMAL" and rows[0]["threshold"] == 0.99
    assert "truncated or corrupt" in rows[1]["error"] and "broken.jpg" in captured.err
    assert main(["predict", "--image", good, "--model", model]) == 0  # the seed CLI's flag
    capsys.readouterr()
    assert main(["predict", "--model", model]) == 2
    assert "name at least one image" in capsys.readouterr().err


def test_batch_csv_summary_and_errors(model: str, folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.csv"
    assert main(["batch", str(folder), "-o", str(out), "--model", model, "--batch-size", "2"]) == 1
    text = capsys.readouterr().out
    assert "scored 4 of 5 images" in text and "1 errors" in text
    assert "unreadable:" in text and "broken.jpg" in text
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [Path(r["image_path"]).name for r in rows] == [
        "broken.jpg",
        "img0.png",
        "img1.png",
        "img2.png",
        "img3.png",
    ]
    assert rows[0]["error"] and not rows[0]["prediction"]
    assert {r["prediction"] for r in rows[1:]} == {"NORMAL", "PNEUMONIA"}
    assert all(float(r["raw_score"]) > 0 for r in rows[1:])


def test_batch_refuses_to_clobber_and_resumes_a_torn_file(
    model: str, folder: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "results.jsonl"
    args = ["batch", str(folder), "-o", str(out), "--model", model, "--recursive"]
    main(args)
    complete = out.read_text().splitlines()
    assert len(complete) == 6
    assert main(args) == 2
    assert "pass --resume" in capsys.readouterr().err
    # Simulate a run killed mid-write: two full rows and half of the third.
    out.write_text("\n".join(complete[:2]) + "\n" + complete[2][:15])
    # broken.jpg sorts first: its error row is already in the file, so resuming skips it.
    assert main([*args, "--resume"]) == 0
    summary = capsys.readouterr().out
    assert "skipped (already in" in summary and "2 skipped" in summary
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["image_path"] for r in resumed) == sorted(
        json.loads(line)["image_path"] for line in complete
    )
    assert main([*args, "--overwrite"]) == 1
    assert len(out.read_text().splitlines()) == 6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["batch", "{folder}", "-o", "{tmp}/r.xlsx"], "expected a .csv or .jsonl"),
        (["batch", "{tmp}/nowhere", "-o", "{tmp}/r.csv"], "nowhere: no such folder"),
        (["batch", "{folder}", "-o", "{tmp}/r.csv", "--batch-size", "0"], "batch size must be"),
        (["predict", "{folder}/img0.png", "--threshold", "nan"], "expected a number in [0, 1]"),
        (["predict", "{folder}/img0.png", "--model", "{tmp}/none.onnx"], "no such model"),
    ],
    ids=["suffix", "no-folder", "batch-size", "threshold", "model"],
)
def test_usage_errors(model: str, folder: Path, tmp_path: Path, capsys, argv, message) -> None:
    args = [a.format(folder=folder, tmp=tmp_path) for a in argv]
    if "--model" not in args:
        args += ["--model", model]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_batch_resume_rejects_a_foreign_file(
    model: str, folder: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "results.csv"
    out.write_text("name,score\nx,1\n")
    assert main(["batch", str(folder), "-o", str(out), "--model", model, "--resume"]) == 2
    assert "is not a pneumo results file" in capsys.readouterr().err


def test_info_text_and_json(capsys, model: str) -> None:
    from pneumo_onnx import Engine

    shipped = Engine.load()  # its preprocessing path: the verdict of its manifest's figures
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for field in (
        "model:",
        "input:        image NHWC 128x128x3",
        "pipeline:     rgb, bicubic stretch, scaling unit",
        f"preprocess:   {shipped.preprocessing}: {shipped.preprocessing_reason}",
        "provider:     CPUExecutionProvider",
        "variant fp32",
        "int8",
        "onnxruntime",
    ):
        assert field in text
    assert main(["info", "--json", "--variant", "int8"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variant"] == "int8" and info["model"].endswith("model.int8.onnx")
    assert (
        info["contract"]["threshold"] == 0.71
        and "CPUExecutionProvider" in info["providers_available"]
    )
    assert info["preprocessing"] == shipped.preprocessing
    assert info["fast_vs_reference"] == shipped.info()["fast_vs_reference"]
    assert main(["info", "--json", model]) == 0  # a plain .onnx: no figures
    plain = json.loads(capsys.readouterr().out)
    assert (plain["preprocessing"], plain["fast_vs_reference"]) == ("reference", None)
    assert plain["preprocessing_reason"].startswith("no measured fast-path figures")


def test_predict_as_a_real_process(tmp_path: Path) -> None:
    from pneumo_onnx.engine.runtime.samples import sample_images

    image = sample_images()[0]
    done = subprocess.run(
        [sys.executable, "-m", "pneumo_onnx.engine.cli", "predict", str(image), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["prediction"] in ("NORMAL", "PNEUMONIA")


def test_predict_reads_every_supported_format(model: str, tmp_path: Path) -> None:
    from pneumo_onnx import Engine

    engine = Engine.load(model)
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("TIFF", "tif")):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 200, 200)).save(buf, fmt)
        (tmp_path / f"x.{suffix}").write_bytes(buf.getvalue())
        assert engine.predict(tmp_path / f"x.{suffix}")["prediction"] == "PNEUMONIA"


def test_evaluate_labelled_folder(model: str, tmp_path: Path, capsys) -> None:
    root = tmp_path / "labelled"
    for label, values in (("NORMAL", (10, 30, 50, 140)), ("PNEUMONIA", (120, 200, 230, 250))):
        (root / label).mkdir(parents=True)
        for v in values:
            Image.new("L", (64, 64), v).save(root / label / f"{v}.png")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(root), "--model", model, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "8 images (4 negative, 4 positive): ROC AUC 0.938 (95% CI 0.438 to 0.997, DeLong" in text
    metrics = json.loads(out.read_text())
    # Flat images score sigmoid(4 * (v/255 - 0.5)): only 140 (NORMAL) and 120 (PNEUMONIA)
    # sit on the wrong side of 0.5.
    cm = metrics["at_threshold"]["confusion"]
    assert (cm["tp"], cm["fp"], cm["tn"], cm["fn"]) == (3, 1, 3, 1)
    assert metrics["roc_auc"] == 0.9375 and metrics["roc_auc_ci"]["low"] < 0.5
    assert metrics["errors"] == []
    # 4 images of a class choose no threshold (tests/test_evaluate.py: 50 of each do).
    assert metrics["recommended_threshold"] is None and metrics["at_recommended"] is None
    assert metrics["caveats"] == [
        "only 4 NORMAL and 4 PNEUMONIA images (under 50 of a class, each image moves the "
        "figures a lot)"
    ]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"NORMAL": 1}, "needs subfolders NORMAL/ and PNEUMONIA/ (missing: PNEUMONIA)"),
        ({"NORMAL": 1, "PNEUMONIA": 0}, "labelled/PNEUMONIA (looked for"),
        ({"NORMAL": 2, "PNEUMONIA": 2, "broken": 1}, None),
    ],
    ids=["missing-subfolder", "empty-subfolder", "corrupt-image"],
)
def test_evaluate_errors(model: str, tmp_path: Path, capsys, layout, message) -> None:
    root = tmp_path / "labelled"
    for label, count in layout.items():
        target = root / ("PNEUMONIA" if label == "broken" else label)
        target.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            if label == "broken":
                (target / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
            else:
                Image.new("L", (64, 64), 40 + 60 * i + (100 if label == "PNEUMONIA" else 0)).save(
                    target / f"{i}.png"
                )
    code = main(["evaluate", str(root), "--model", model])
    captured = capsys.readouterr()
    if message is None:  # one unreadable image: metrics on the rest, listed, exit 1
        assert code == 1 and "unreadable:" in captured.out and "broken.png" in captured.out
    else:
        assert code == 2 and message in captured.err


def test_progress_bar_only_on_a_terminal() -> None:
    from pneumo_onnx.engine.offline.batch import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        progress = Progress(10, stream)
        progress.update(10)
        progress.close()
    assert pipe.getvalue() == ""
    line = tty.getvalue()
    assert line.startswith("\r[" + "#" * 30 + "] 10/10") and "img/s ETA 0:00" in line


def test_batch_of_a_folder_without_images_says_why(model: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "scans" / "NORMAL").mkdir(parents=True)
    Image.new("L", (80, 60), 90).save(tmp_path / "scans" / "NORMAL" / "a.png")
    out = tmp_path / "results.csv"
    assert main(["batch", str(tmp_path / "scans"), "-o", str(out), "--model", model]) == 2
    assert "its subfolders hold some, add --recursive" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    assert main(["batch", str(tmp_path / "empty"), "-o", str(out), "--model", model]) == 2
    assert f"no images in {tmp_path / 'empty'}" in capsys.readouterr().err  # the path as typed
