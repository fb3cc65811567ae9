"""The one I/O convention of `pneumo`: `--json [PATH]` means the same in every command that
has it, and `-` is stdin or stdout where a command names a file."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.cli.options import bare_json_flags
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.runtime.results import ROW_COLUMNS
from pneumo_onnx.engine.serve.store.predictions import PredictionLog
from tests.conftest import rec

CONTRACT = Contract(input=InputSpec(height=32, width=32))
QUICK_BENCH = ["--seconds", "0.05", "--batch-sizes", "1", "--batch-size", "1"]


@dataclass(frozen=True)
class Inputs:
    model: str  # a tiny .onnx
    image: str
    labelled: str  # NORMAL/ and PNEUMONIA/
    db: str  # a prediction log


@pytest.fixture
def inputs(tmp_path: Path, write_model: Callable[..., Path]) -> Inputs:
    labelled = tmp_path / "labelled"
    for label, values in (("NORMAL", (10, 60)), ("PNEUMONIA", (190, 240))):
        (labelled / label).mkdir(parents=True)
        for v in values:
            Image.new("L", (64, 64), v).save(labelled / label / f"{v}.png")
    db = tmp_path / "predictions.db"
    with PredictionLog(db) as log:
        for i in range(20):
            log.record(rec(time.time() - 60 * i, 0.2))
    return Inputs(
        model=str(write_model(contract=CONTRACT)),
        image=str(labelled / "NORMAL" / "10.png"),
        labelled=str(labelled),
        db=str(db),
    )


# Each command with --json: (its words, its arguments); --json goes between or after them.
COMMANDS: dict[str, Callable[[Inputs], tuple[list[str], list[str]]]] = {
    "predict": lambda i: (["predict"], [i.image, "--model", i.model]),
    "info": lambda i: (["info"], [i.model]),
    "evaluate": lambda i: (["evaluate"], [i.labelled, "--model", i.model]),
    "bench": lambda i: (["bench"], [i.model, "--images", i.labelled, *QUICK_BENCH]),
    "monitor-summary": lambda i: (["monitor", "summary"], ["--db", i.db]),
    "monitor-drift": lambda i: (["monitor", "drift"], ["--db", i.db]),
}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_json_means_the_same_in_every_command(
    command: str,
    inputs: Inputs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # where a file named `-` would land
    words, args = COMMANDS[command](inputs)
    code, text, _ = run([*words, *args], capsys)
    assert code in (0, 1) and text.strip()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)  # without --json: text for people
    for form in (["--json"], ["--json", "-"]):
        for argv in ([*words, *args, *form], [*words, *form, *args]):  # after and before
            got, out, _ = run(argv, capsys)
            assert got == code
            json.loads(out)  # stdout holds the JSON alone
    assert not (tmp_path / "-").exists()
    named, other = tmp_path / "out.json", tmp_path / "report.txt"
    for form, written in ((["--json", str(named)], named), ([f"--json={other}"], other)):
        got, out, _ = run([*words, *args, *form], capsys)
        assert got == code
        heading = text.splitlines()[0].split(" (")[0]  # a window's clock may tick between runs
        assert out.startswith(heading)  # the usual text, as without --json
        assert out.rstrip().endswith(f"wrote {written}")
        json.loads(written.read_text())


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--json"], ["--json=-"]),
        (["--json", "-"], ["--json", "-"]),
        (["--json", "out.JSON", "m.onnx"], ["--json", "out.JSON", "m.onnx"]),
        (["--json", "m.onnx"], ["--json=-", "m.onnx"]),
        (["--json", "--db", "x.db"], ["--json=-", "--db", "x.db"]),
        (["--json=notes.txt", "a.png"], ["--json=notes.txt", "a.png"]),
        (["--", "--json", "a.png"], ["--", "--json", "a.png"]),
    ],
    ids=["alone", "dash", "path", "argument-after", "option-after", "equals", "after-dashdash"],
)
def test_the_word_after_json_is_its_path_only_when_it_names_json(
    argv: list[str], expected: list[str]
) -> None:
    assert bare_json_flags(argv) == expected


def test_json_path_in_a_missing_folder_is_refused_before_any_work(
    inputs: Inputs, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in COMMANDS.values():
        words, args = command(inputs)
        code, out, err = run([*words, *args, "--json", "/nonexistent/dir/out.json"], capsys)
        assert code == 2 and out == ""
        assert "error: --json /nonexistent/dir/out.json: no such folder" in err


def test_batch_writes_csv_to_stdout_with_dash(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["batch", inputs.labelled, "--recursive", "--model", inputs.model, "-o", "-"]
    code, out, err = run(argv, capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == ROW_COLUMNS and len(rows) == 4
    assert "scored 4 of 4 images" in err  # the summary leaves stdout to the CSV
    assert not (tmp_path / "-").exists()
    for flag in (["--resume"], ["--report", "r.html"], ["--ray"]):
        code, _, err = run([*argv, *flag], capsys)
        assert code == 2 and f"{flag[0]} needs an output file, not -o - (stdout)" in err


def test_predict_reads_one_image_from_stdin(
    inputs: Inputs, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    data = Path(inputs.image).read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, _ = run(["predict", "-", inputs.image, "--json", "--model", inputs.model], capsys)
    assert code == 0
    rows = json.loads(out)
    assert rows[0]["image_path"] == "-" and rows[0]["raw_score"] == rows[1]["raw_score"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, _, err = run(["predict", "-", "--model", inputs.model], capsys)
    assert code == 1 and "expected an image file, got 0 bytes from stdin" in err
    for argv, message in (
        (["-", "-"], "- (stdin) is named more than once"),
        (["-", "--heatmap", "maps"], "--heatmap reads each image twice"),
    ):
        code, _, err = run(["predict", *argv, "--model", inputs.model], capsys)
        assert code == 2 and message in err


def test_predict_from_stdin_as_a_real_process(inputs: Inputs, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pneumo_onnx.engine.cli", "predict", "-", "--model", inputs.model],
        input=Path(inputs.image).read_bytes(),
        capture_output=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith("-: NORMAL (confidence")
