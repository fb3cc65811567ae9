"""`pneumo monitor summary|drift`, in process and once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.serve.store.predictions import PredictionLog
from pneumo_onnx.engine.serve.store.reports import summarize
from tests.conftest import rec

HOUR = 3600.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Last week: 40 NORMAL scores; last hour: 30 NORMAL and 30 PNEUMONIA (a drift)."""
    now = time.time()
    path = tmp_path / "predictions.db"
    with PredictionLog(path) as log:
        for i in range(40):
            log.record(rec(now - 72 * HOUR, 0.1 + i / 1000, latency=12.0))
        for i in range(60):
            log.record(rec(now - HOUR, 0.2 if i % 2 else 0.8, latency=10.0 + i))
    return path


def test_summary_table_and_json(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "summary", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "predictions  60  (scored 60, errors 0, 2.5/h)" in out
    assert "NORMAL            30   50.0%" in out and "PNEUMONIA         30   50.0%" in out
    assert "latency ms   p50 39.5" in out
    assert main(["monitor", "summary", "--db", str(db), "--hours", "100", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 100 and report["classes"]["NORMAL"]["count"] == 70
    assert report["window"]["hours"] == 100
    assert report["score"] == summarize(db, hours=100)["score"]


def test_drift_exit_codes(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "drift", "--db", str(db)]) == 1  # significant drift: exit 1
    out = capsys.readouterr().out
    assert out.startswith("drift: SIGNIFICANT")
    assert "NORMAL     100.0% ->  50.0%  (-50.0%)" in out
    # a recent window of 100 h holds both groups and leaves no reference: no verdict, exit 0
    code = main(
        [
            "monitor",
            "drift",
            "--db",
            str(db),
            "--recent-hours",
            "100",
            "--reference-hours",
            "200",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["status"] == "insufficient_data"
    assert "the reference window has 0 scored predictions, fewer than 30" in report["messages"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["monitor", "summary", "--db", "{missing}"], "error: no prediction log at"),
        (["monitor", "drift", "--db", "{missing}"], "error: no prediction log at"),
        (["monitor", "summary", "--db", "{db}", "--hours", "0"], "expected a positive number"),
        (
            ["monitor", "drift", "--db", "{db}", "--recent-hours", "48", "--reference-hours", "24"],
            "error: reference hours (24) must exceed recent hours (48)",
        ),
        (["monitor"], "the following arguments are required: REPORT"),
    ],
    ids=["summary-missing-db", "drift-missing-db", "bad-hours", "bad-windows", "no-report"],
)
def test_usage_errors_exit_2(
    db: Path, tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(missing=tmp_path / "nope.db", db=db) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_not_a_prediction_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("hello")
    assert main(["monitor", "summary", "--db", str(junk)]) == 2
    assert "is not a pneumo prediction log" in capsys.readouterr().err


def test_summary_as_a_real_process(db: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumo_onnx.engine.cli",
            "monitor",
            "summary",
            "--db",
            str(db),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total"] == 60
