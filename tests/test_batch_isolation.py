"""Batch scoring decodes in worker processes: a poison file is its own error row, its
neighbours in the same worker call are scored, the run goes on, and memory stays bounded."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.memory import TreeMemory
from benchmarks.payloads import dicom_sequence_bomb, j2k_dicom_bomb, png, tiff_strip_bomb
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.isolated import decode_sandbox
from pneumo_onnx.engine.runtime.sandbox import Limits

MB = 2**20


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load()


def poisoned_folder(tmp_path: Path, samples: list[Path]) -> Path:
    folder = tmp_path / "xrays"
    folder.mkdir()
    for s in samples:
        shutil.copy(s, folder / s.name)
    (folder / "frame.dcm").write_bytes(j2k_dicom_bomb())
    (folder / "strips.tif").write_bytes(tiff_strip_bomb(16 * MB))
    (folder / "tall.tif").write_bytes(tiff_strip_bomb(16 * MB, consistent=True))
    (folder / "items.dcm").write_bytes(dicom_sequence_bomb(16 * MB))
    return folder


def test_pneumo_batch_survives_poison_files(tmp_path: Path, samples: list[Path]) -> None:
    """Four files built to exhaust a decoder's memory among six X-rays: exit 1, a row for
    every file, the X-rays scored, each poison file's row saying why, and the command with
    its workers under 1 GB."""
    folder = poisoned_folder(tmp_path, samples)
    out = tmp_path / "results.csv"
    cmd = [sys.executable, "-m", "pneumo_onnx.engine.cli", "batch", str(folder), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(proc.pid).start()
    stdout, stderr = proc.communicate(timeout=120)
    memory.stop()
    assert proc.returncode == 1, stderr
    with out.open() as f:
        rows = {Path(r["image_path"]).name: r for r in csv.DictReader(f)}
    assert len(rows) == 10
    for s in samples:
        assert rows[s.name]["prediction"] in ("NORMAL", "PNEUMONIA"), rows[s.name]
    assert rows["frame.dcm"]["error"].startswith("frame.dcm: its compressed frame is 13000x")
    assert "TIFF header lists" in rows["strips.tif"]["error"]
    assert rows["tall.tif"]["error"].startswith("tall.tif needs more")
    assert "holds more than 50000 data elements" in rows["items.dcm"]["error"]
    assert "scored 6 of 10 images" in stdout and "4 errors" in stdout
    assert memory.peak_mb() < 1024


def test_a_call_that_fails_is_retried_image_by_image(
    engine: Engine, samples: list[Path], tmp_path: Path
) -> None:
    """A worker call of several images in which one is killed at its deadline: that image's
    row says so, the others of the same call are scored."""
    slow = tmp_path / "slow.png"
    slow.write_bytes(png("L", 8944, 5))
    images = [samples[0], slow, samples[1], samples[2]]  # one call of four
    limits = Limits(max_input=256 * MB, seconds=0.1)
    with decode_sandbox(1, limits) as sandbox:
        results = [r for _, r in engine.stream(images, sandbox=sandbox)]
    assert results[1] == {"error": "slow.png took more than 0.1 s to decode: refused"}
    for r in (results[0], results[2], results[3]):
        assert r["prediction"] in ("NORMAL", "PNEUMONIA"), r
    assert [r["raw_score"] for r in (results[0], results[2])] == [
        engine.predict(samples[0])["raw_score"],
        engine.predict(samples[1])["raw_score"],
    ]
