"""CLI behaviour that needs no model: usage errors, exit codes, the missing-extra message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pneumo_onnx.engine.cli import main


def test_help_and_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert "pneumo-onnx" in capsys.readouterr().out
    assert main(["convert", "--help"]) == 0
    assert "REPO_DIR" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["convert", "m.keras"], "-o/--output"),
        (["convert", "m.keras", "-o", "r", "--threshold", "nan"], "expected a number in [0, 1]"),
        (["convert", "m.keras", "-o", "r", "--threshold", "2"], "expected a number in [0, 1]"),
        (["convert", "m.keras", "-o", "r", "--input-size", "big"], "expected HxW"),
        (["convert", "m.keras", "-o", "r", "--labels", "A"], "expected two names"),
        (["convert", "m.keras", "-o", "r", "--input-scaling", "x"], "invalid choice"),
        (["convert", "m.keras", "-o", "r", "--preset", "imagenet"], "invalid choice: 'imagenet'"),
        (["convert", "m.keras", "-o", "r", "--resize-mode", "zoom"], "invalid choice: 'zoom'"),
        (["convert", "m.keras", "-o", "r", "--color", "cmyk"], "invalid choice: 'cmyk'"),
        (["convert", "m.keras", "-o", "r", "--input-mean", "a,b"], "expected numbers like"),
        (["convert", "m.keras", "-o", "r", "--input-std", "1,inf"], "expected finite numbers"),
        (["batch", "d", "-o", "r.csv", "--preprocessing", "turbo"], "invalid choice: 'turbo'"),
        (["serve", "--preprocessing", "turbo"], "invalid choice: 'turbo'"),
        (["frobnicate"], "invalid choice"),
    ],
    ids=[
        "no-command",
        "no-output",
        "nan",
        "threshold-2",
        "size",
        "labels",
        "scaling",
        "preset",
        "resize-mode",
        "color",
        "mean",
        "std",
        "preprocessing",
        "serve-preprocessing",
        "command",
    ],
)
def test_usage_errors_exit_2(capsys, argv, message) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["convert", "validate"])
def test_without_the_convert_extra_the_message_names_it(tmp_path, command) -> None:
    # A fresh interpreter where importing tensorflow/onnx fails exactly as when not installed.
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['onnx'] = None\n"
        "from pneumo_onnx.engine.cli import main\n"
        f"extra = ['-o', 'r'] if {command!r} == 'convert' else []\n"
        f"sys.exit(main([{command!r}, 'x.keras'] + extra))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert f"pneumo {command} needs the 'convert' extra" in proc.stderr
    assert "pip install 'pneumo-onnx[convert]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ray_without_the_ray_extra_names_it(tmp_path) -> None:
    from pneumo_onnx.engine.runtime.samples import SAMPLES_DIR

    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from pneumo_onnx.engine.cli import main\n"
        f"sys.exit(main(['batch', {str(SAMPLES_DIR)!r}, '-o', 'r.parquet', '--ray']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert (
        "needs the 'ray' extra" in proc.stderr and "pip install 'pneumo-onnx[ray]'" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("batch", ["--batch-size BATCH_SIZE", "(default: 32)", "(default: auto)"]),
        ("convert", ["(default: all)", "stretched with PIL bicubic", "(default: 17)"]),
        ("serve", ["(default: 127.0.0.1)", "(default: 8000)", "(default: 256)"]),
    ],
)
def test_help_shows_the_defaults(capsys, command: str, shown: list[str]) -> None:
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(s in text for s in shown), text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_a_closed_pipe_ends_quietly(tmp_path: Path, write_model) -> None:
    """`pneumo predict ... | head -1`: the reader leaves early; no traceback, no noise."""
    from pneumo_onnx.engine.runtime.samples import sample_images

    image = str(sample_images()[0])
    args = " ".join([image] * 2000)  # ~200 KB of output: more than a pipe buffer holds
    model = write_model()
    script = (
        f"{sys.executable} -m pneumo_onnx.engine.cli predict --model {model} {args} 2> err.txt "
        "| head -1; "
        "echo ${PIPESTATUS[0]} > status.txt"
    )
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.stdout.count("\n") == 1 and " (confidence " in done.stdout
    assert (tmp_path / "err.txt").read_text() == ""  # no traceback, no "Exception ignored"
    assert (tmp_path / "status.txt").read_text().strip() == "141"  # as a Unix tool on SIGPIPE
