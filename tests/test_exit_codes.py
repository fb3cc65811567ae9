"""Every command's exit codes, as documented: 0 success; 1 some input failed (an unreadable
image, a failed check or conversion); 2 usage error (a missing file, a bad option value, an
extra the command needs and does not have).

In process for missing files and bad values; a missing extra in a real `pneumo` process whose
PYTHONPATH puts first a package that fails to import exactly as an absent one does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, EXTRA_MODULES
from pneumo_onnx.engine.runtime.samples import SAMPLES_DIR
from pneumo_onnx.engine.serve.store.predictions import PredictionLog
from tests.conftest import rec

SAMPLES = str(SAMPLES_DIR)
MODEL = str(Path(__file__).resolve().parents[1] / "models" / "pneumonia" / "2" / "model.onnx")
ROOT = Path(__file__).resolve().parents[1]
HOUR = 3600.0
IMAGE = f"{SAMPLES}/NORMAL/IM-0651-0001.jpeg"

# (argv, exit code, what stderr says); {tmp} is the test's own folder.
MISSING_FILE = {
    "predict": (["predict", "/nope/x.jpg"], "/nope/x.jpg: no such file"),
    "predict-model": (["predict", "--model", "/nope.onnx", IMAGE], "no such model file"),
    "batch": (["batch", "/nope", "-o", "{tmp}/r.csv"], "/nope: no such folder"),
    "evaluate": (["evaluate", "/nope"], "/nope: no such folder"),
    "info": (["info", "/nope.onnx"], "/nope.onnx: no such model file or folder"),
    "bench": (["bench", "/nope.onnx"], "/nope.onnx: no such model file or folder"),
    "bench-images": (["bench", "--images", "/nope"], "/nope: no such folder"),
    "validate": (["validate", "/nope.onnx"], "/nope.onnx: no such ONNX file"),
    "validate-images": (["validate", MODEL, "--images", "/nope"], "/nope: no such folder"),
    "validate-expected": (
        ["validate", MODEL, "--expected-scores", "/nope.csv"],
        "--expected-scores /nope.csv: No such file",
    ),
    "monitor-summary": (["monitor", "summary", "--db", "/nope.db"], "no prediction log at"),
    "monitor-drift": (["monitor", "drift", "--db", "/nope.db"], "no prediction log at"),
}
BAD_VALUE = {
    "predict": (["predict", SAMPLES, "--threshold", "2"], "expected a number in [0, 1]"),
    "predict-grid": (
        [
            *["predict", IMAGE, "--heatmap", "{tmp}"],
            *["--occlusion-grid", "99", "--heatmap-method", "occlusion"],
        ],
        "occlusion grid must be between 2 and 16, got 99",
    ),
    "batch": (
        ["batch", SAMPLES, "-o", "{tmp}/r.csv", "--batch-size", "0"],
        "batch size must be at least 1, got 0",
    ),
    "batch-output": (["batch", SAMPLES, "-o", "{tmp}/r.txt"], "expected a .csv or .jsonl file"),
    "evaluate": (
        ["evaluate", SAMPLES, "--target-sensitivity", "1.5"],
        "expected a number in [0, 1], got '1.5'",
    ),
    "info": (["info", "--variant", "int9"], "invalid choice: 'int9'"),
    "bench": (["bench", "--batch-sizes", "0"], "expected integers >= 1 like 1,8,32, got '0'"),
    "convert": (["convert", "m.keras", "-o", "{tmp}", "--threshold", "nan"], "expected a number"),
    "validate": (["validate", MODEL, "--min-auc", "2"], "expected a number in [0, 1]"),
    "serve": (["serve", "--port", "http"], "--port: expected a whole number, got 'http'"),
    "monitor-summary": (["monitor", "summary", "--db", "x.db", "--hours", "-1"], "positive"),
    "monitor-drift": (["monitor", "drift", "--db", "x.db", "--recent-hours", "0"], "positive"),
}


# Runs that work (exit 0) and runs where one input fails (exit 1): {xrays} is a labelled folder
# of two good images, {broken} the same plus a corrupt one, {model} a tiny model.
QUICK_BENCH = ["--seconds", "0.05", "--batch-sizes", "1", "--batch-size", "1"]
OK_AND_FAILED = {
    "predict": (["predict", IMAGE], ["predict", IMAGE, "{broken}/NORMAL/broken.jpg"]),
    "batch": (
        ["batch", "{xrays}", "--recursive", "-o", "{tmp}/ok.csv"],
        ["batch", "{broken}", "--recursive", "-o", "{tmp}/failed.csv"],
    ),
    "evaluate": (["evaluate", "{xrays}"], ["evaluate", "{broken}"]),
    "info": (["info"], ["info", "{tmp}/corrupt.onnx"]),
    "bench": (
        ["bench", "{model}", "--images", "{xrays}/NORMAL", *QUICK_BENCH],
        ["bench", "{model}", "--images", "{broken}/NORMAL", *QUICK_BENCH],
    ),
    "validate": (["validate", "{model}"], ["validate", "{tmp}/corrupt.onnx"]),
    "monitor-drift": (
        ["monitor", "drift", "--db", "{tmp}/steady.db"],
        ["monitor", "drift", "--db", "{tmp}/drifted.db"],
    ),
}


def fill(argv: list[str], tmp: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)) for a in argv]


def inputs(tmp: Path, model: Path) -> dict[str, str]:
    """The folders, model, corrupt model and prediction logs OK_AND_FAILED names."""
    for name, broken in (("xrays", False), ("broken", True)):
        for label, sample in (("NORMAL", IMAGE), ("PNEUMONIA", f"{SAMPLES}/PNEUMONIA")):
            (tmp / name / label).mkdir(parents=True)
            source = Path(sample) if label == "NORMAL" else sorted(Path(sample).iterdir())[0]
            shutil.copy(source, tmp / name / label / source.name)
        if broken:
            (tmp / name / "NORMAL" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (tmp / "corrupt.onnx").write_bytes(b"\x08\x07garbage that is not protobuf" * 3)
    now = time.time()
    for name, recent in (("steady", 0.1), ("drifted", 0.9)):
        with PredictionLog(tmp / f"{name}.db") as log:
            for i in range(60):
                log.record(rec(now - 72 * HOUR, 0.1 + i / 1000, latency=12.0))
                log.record(rec(now - HOUR, recent + i / 1000, latency=12.0))
    return {"{xrays}": str(tmp / "xrays"), "{broken}": str(tmp / "broken"), "{model}": str(model)}


@pytest.mark.parametrize(
    ("argv", "code"),
    [pytest.param(ok, EXIT_OK, id=f"ok-{k}") for k, (ok, _) in OK_AND_FAILED.items()]
    + [pytest.param(bad, EXIT_FAILED, id=f"failed-{k}") for k, (_, bad) in OK_AND_FAILED.items()],
)
def test_success_exits_0_and_a_failed_input_exits_1(
    argv: list[str], code: int, write_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = inputs(tmp_path, write_model(contract=Contract(input=InputSpec(height=32, width=32))))
    for key, value in names.items():
        argv = [a.replace(key, value) for a in argv]
    assert main(fill(argv, tmp_path)) == code, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(("name", "code"), [("good", EXIT_OK), ("broken", EXIT_FAILED)])
def test_predict_exit_code_in_a_real_process(name: str, code: int, tmp_path: Path) -> None:
    """The code `main` returns is the one the shell sees (`python -m` and the script alike)."""
    image = tmp_path / f"{name}.jpeg"
    if name == "good":
        shutil.copy(IMAGE, image)
    else:
        image.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    done = pneumo(["predict", str(image)], tmp_path)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [pytest.param(*v, id=f"missing-file-{k}") for k, v in MISSING_FILE.items()]
    + [pytest.param(*v, id=f"bad-value-{k}") for k, v in BAD_VALUE.items()],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(fill(argv, tmp_path)) == EXIT_USAGE
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "r.csv").exists()  # refused before any output


# Real processes, so their start-up is slow: TensorFlow for convert, a server for serve.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "/nope.keras", "-o", "{tmp}/repo"], "/nope.keras: no such model file"),
        (["serve", "--model-repo", "/nope", "--port", "0"], "/nope: no such model repository"),
    ],
    ids=["convert", "serve"],
)
def test_missing_file_in_a_real_process_exits_2(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    done = pneumo(fill(argv, tmp_path), tmp_path)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert message in done.stderr


def fake_dicom(tmp: Path) -> str:
    """A file that announces DICOM (the preamble, then DICM): reading it needs pydicom."""
    (tmp / "scan.dcm").write_bytes(bytes(128) + b"DICM" + bytes(64))
    return str(tmp / "scan.dcm")


# (module made unimportable, argv, exit code, what stderr says)
MISSING_EXTRA = {
    "convert": ("tensorflow", ["convert", "m.keras", "-o", "{tmp}/repo"], EXIT_USAGE, "convert"),
    "validate": ("onnx", ["validate", MODEL], EXIT_USAGE, "convert"),
    "validate-against": (
        "tensorflow",
        ["validate", MODEL, "--against", "{tmp}/m.keras"],
        EXIT_USAGE,
        "convert",
    ),
    "evaluate-plots": (
        "matplotlib",
        ["evaluate", SAMPLES, "--plots", "{tmp}"],
        EXIT_USAGE,
        "report",
    ),
    "batch-report": (
        "matplotlib",
        ["batch", SAMPLES, "--recursive", "-o", "{tmp}/r.csv", "--report", "{tmp}/r.html"],
        EXIT_USAGE,
        "report",
    ),
    "batch-ray": ("ray", ["batch", SAMPLES, "-o", "{tmp}/out", "--ray"], EXIT_USAGE, "ray"),
    "serve": ("uvicorn", ["serve", "--port", "0"], EXIT_USAGE, "serve"),
    "serve-metrics": ("prometheus_client", ["serve", "--port", "0"], EXIT_USAGE, "serve"),
    "serve-grpc": ("grpc", ["serve", "--port", "0", "--grpc-port", "0"], EXIT_USAGE, "serve"),
    "batch-dicomweb": (
        "httpx",
        ["batch", "--dicomweb", "http://127.0.0.1:9/dicom-web", "-o", "{tmp}/r.csv"],
        EXIT_USAGE,
        "dicomweb",
    ),
    # An input that needs an extra fails as that input (its row says which), as in batch.
    "predict-dicom": ("pydicom", ["predict", "{dicom}"], EXIT_FAILED, "dicom"),
}


@pytest.mark.parametrize(
    ("hidden", "argv", "code", "extra"), list(MISSING_EXTRA.values()), ids=list(MISSING_EXTRA)
)
def test_missing_extra(hidden: str, argv: list[str], code: int, extra: str, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / hidden
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{hidden}'\", name={hidden!r})\n"
    )
    (tmp_path / "m.keras").write_bytes(b"PK\x03\x04")
    argv = [a.replace("{dicom}", fake_dicom(tmp_path)) for a in fill(argv, tmp_path)]
    done = pneumo(argv, tmp_path, first_on_path=tmp_path / "shadow")
    assert done.returncode == code, done.stderr
    assert f"needs the '{extra}' extra" in done.stderr
    assert f"pip install 'pneumo-onnx[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "repo").exists()


def pneumo(
    argv: list[str], cwd: Path, first_on_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`pneumo ARGV` as a real process, importing this checkout (after `first_on_path`)."""
    path = [str(first_on_path)] if first_on_path else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "pneumo_onnx.engine.cli", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_every_module_of_an_extra_is_installed_by_it() -> None:
    """`EXTRA_MODULES` names the extra a missing module's install takes: pyproject agrees."""
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    for module, (extra, distribution) in EXTRA_MODULES.items():
        names = {re.split(r"[<>=!;\[ ]", r, maxsplit=1)[0].lower() for r in extras[extra]}
        assert distribution.lower() in names, (module, extra, distribution)
