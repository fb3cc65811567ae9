"""Scoring on Ray Data gives exactly the local `pneumo batch` results (the 'ray' extra)."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.payloads import j2k_dicom_bomb, tiff_strip_bomb
from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.runtime.samples import sample_images

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")

SHARED_FULLRES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fullres"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The shipped samples, the full-resolution set when present, and one corrupt file."""
    root = tmp_path / "xrays"
    root.mkdir()
    images = sample_images() + (
        sorted(SHARED_FULLRES.rglob("*.jpeg")) if SHARED_FULLRES.is_dir() else []
    )
    for p in images:
        shutil.copy(p, root / p.name)
    (root / "corrupt.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    # Built to exhaust a decoder's memory: each is its own error row, as in a local run.
    (root / "frame.dcm").write_bytes(j2k_dicom_bomb())
    (root / "strips.tif").write_bytes(tiff_strip_bomb(16 * 2**20))
    return root


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["image_path"]).name: r for r in rows}


def test_ray_batch_equals_local_batch(local_ray, folder: Path, tmp_path: Path, capsys) -> None:
    local_csv = tmp_path / "local.csv"
    assert main(["batch", str(folder), "-o", str(local_csv)]) == 1
    ray_out = tmp_path / "results.parquet"
    assert main(["batch", str(folder), "-o", str(ray_out), "--ray"]) == 1
    out = capsys.readouterr().out
    assert "on Ray" in out and "unreadable:" in out and "corrupt.jpeg" in out

    local = by_name(list(csv.DictReader(io.StringIO(local_csv.read_text()))))
    remote = by_name(ray.data.read_parquet(str(ray_out)).take_all())
    assert set(local) == set(remote) and len(local) >= 7
    scored = [n for n, r in local.items() if not r["error"]]
    for name in ("corrupt.jpeg", "frame.dcm", "strips.tif"):
        assert remote[name]["error"] == local[name]["error"] != ""
        assert remote[name]["prediction"] is None
    for name in scored:
        assert remote[name]["prediction"] == local[name]["prediction"]
        assert remote[name]["error"] is None
    diff = np.array([abs(remote[n]["raw_score"] - float(local[n]["raw_score"])) for n in scored])
    assert diff.max() <= 1e-6


def test_score_dataset_library_api_and_csv(local_ray, folder: Path, tmp_path: Path) -> None:
    from pneumo_onnx.engine.offline.ray import score_dataset

    ds = ray.data.read_binary_files(str(folder), include_paths=True)
    rows = score_dataset(ds, variant="int8", threshold=0.3, batch_size=8).take_all()
    assert {r["threshold"] for r in rows if not r["error"]} == {0.3}
    assert {"image_path", "prediction", "confidence", "raw_score", "threshold", "error"} == set(
        rows[0]
    )
    out = tmp_path / "results.csv"
    assert main(["batch", str(folder), "-o", str(out), "--ray", "--batch-size", "16"]) == 1
    assert any(out.glob("*.csv"))  # Ray writes a folder of CSV parts
    assert main(["batch", str(folder), "-o", str(out), "--ray"]) == 2  # no silent overwrite


def test_ray_usage_errors(local_ray, folder: Path, tmp_path: Path, capsys) -> None:
    assert main(["batch", str(folder), "-o", str(tmp_path / "r.jsonl"), "--ray"]) == 2
    assert "expected a .parquet or .csv folder" in capsys.readouterr().err
    assert main(["batch", str(folder), "-o", str(tmp_path / "r.csv"), "--ray", "--resume"]) == 2
    assert "--resume works on local runs only" in capsys.readouterr().err
