"""The converted reference model equals the Keras model on real X-rays, at several batch sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from parity_tests.conftest import FP32_TOLERANCE
from pneumo_onnx.convert.pipeline import ConvertResult
from pneumo_onnx.engine.contract import CONTRACT_KEY, PROVENANCE_KEY, Contract
from pneumo_onnx.engine.repository.cam import CAM_KEY
from pneumo_onnx.engine.repository.manifest import read_manifest, sha256_file, verify_files
from pneumo_onnx.engine.repository.variants import OPTIONAL_VARIANTS
from pneumo_onnx.engine.runtime.session import create_session, run_batched


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_onnx_matches_keras_on_real_images(
    reference_repo: ConvertResult, reference_keras: Path, real_batch: np.ndarray, batch_size: int
) -> None:
    model = keras.saving.load_model(reference_keras, compile=False)
    expected = np.concatenate(
        [
            model(real_batch[i : i + 64], training=False).numpy()
            for i in range(0, len(real_batch), 64)
        ]
    )
    session = create_session(reference_repo.version_dir / "model.onnx")
    got = run_batched(session, real_batch, batch_size=batch_size)
    assert got.shape == expected.shape == (len(real_batch), 1)
    assert np.max(np.abs(got - expected)) <= FP32_TOLERANCE


def test_contract_and_provenance_are_embedded(
    reference_repo: ConvertResult, reference_keras: Path
) -> None:
    model = onnx.load(reference_repo.version_dir / "model.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    contract = Contract.from_metadata(meta, "image", [None, 128, 128, 3], "score")
    assert contract == Contract()  # the reference: 128x128x3 in [0, 1], bicubic, one sigmoid unit
    provenance = json.loads(meta[PROVENANCE_KEY])
    assert provenance["source"] == {
        "name": "pneumonia_cnn.keras",
        "format": "keras",
        "sha256": sha256_file(reference_keras),
    }
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "pneumo-onnx"} <= set(
        provenance["tools"]
    )
    assert provenance["parity"]["max_abs_diff"] <= FP32_TOLERANCE
    assert provenance["parity"]["probes"] >= 6 + 6
    assert [i.name for i in model.graph.input] == ["image"]
    # The score first; the reference model has GAP before its classifier, so the feature map
    # for class activation maps follows (engine/cam.py).
    assert [o.name for o in model.graph.output] == ["score", "feature_map"]
    assert CAM_KEY in meta
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert CONTRACT_KEY in meta


def test_repository_layout_manifest_and_triton_config(reference_repo: ConvertResult) -> None:
    version_dir = reference_repo.version_dir
    assert version_dir.name == "1"
    manifest = read_manifest(version_dir)
    skipped = manifest.skipped_variants or {}
    kept = [v.filename for k, v in OPTIONAL_VARIANTS.items() if k not in skipped]
    assert set(manifest.files) == {"model.onnx", *kept}
    assert verify_files(version_dir, manifest) == []
    checks = manifest.checks or ()
    assert checks and all(c.passed or c.skipped for c in checks)
    assert {c.name for c in checks if c.skipped} == {f"variant_{k}" for k in skipped}
    config = (version_dir.parent / "config.pbtxt").read_text()
    assert 'name: "pneumonia"' in config and "dims: [ 128, 128, 3 ]" in config
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1", "config.pbtxt"]


def test_cli_convert_and_validate_end_to_end(reference_keras: Path, tmp_path: Path) -> None:
    """One real subprocess run of each command, as a user types them."""
    repo = tmp_path / "repo"
    pneumo = [sys.executable, "-m", "pneumo_onnx.engine.cli"]
    done = subprocess.run(
        [
            *pneumo,
            "convert",
            str(reference_keras),
            "-o",
            str(repo),
            "--variants",
            "int8",
            "--version",
            "3",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "PASS  parity_keras" in done.stdout and "model.int8.onnx" in done.stdout
    model = repo / "pneumonia" / "3" / "model.onnx"
    for report in ("report.json", "report.xml"):
        checked = subprocess.run(
            [
                *pneumo,
                "validate",
                str(model),
                "--against",
                str(reference_keras),
                "--report",
                str(tmp_path / report),
            ],
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    data = json.loads((tmp_path / "report.json").read_text())
    names = [c["name"] for c in data["checks"]]
    assert data["ok"] and "manifest_sha256" in names and names[-1] == "parity_keras"


def test_validate_against_a_different_model_fails(
    reference_repo: ConvertResult, tmp_path: Path, capsys
) -> None:
    from models.training.pneumonia_cnn import build_model
    from pneumo_onnx.engine.cli import main

    other = tmp_path / "other.keras"
    build_model(seed=1).save(other)
    code = main(
        ["validate", str(reference_repo.version_dir / "model.onnx"), "--against", str(other)]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL  parity_keras: max abs difference" in out and "> tolerance 1.0e-05" in out
