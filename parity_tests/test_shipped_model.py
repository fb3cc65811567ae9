"""The committed default model: its ONNX files match the committed Keras model and the
manifest matches the files, so what `pip install .` ships is what was validated."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from engine.repository.manifest import read_manifest, sha256_file, verify_files
from engine.repository.resolve import default_model_dir
from engine.runtime.session import create_session, run_batched
from parity_tests.conftest import FP32_TOLERANCE

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_manifest_matches_the_shipped_files() -> None:
    version_dir = default_model_dir() / "1"
    manifest = read_manifest(version_dir)
    assert verify_files(version_dir, manifest) == []
    assert {"model.onnx", "model.int8.onnx"} <= set(manifest["files"])
    assert manifest["source"]["sha256"] == sha256_file(MODELS / "pneumonia_cnn.keras")
    assert (version_dir.parent / "config.pbtxt").is_file()


@pytest.mark.parametrize("name", sorted(p.name for p in (default_model_dir() / "1").glob("*.onnx")))
def test_every_shipped_onnx_file_passes_the_checker(name: str) -> None:
    onnx.checker.check_model(onnx.load(default_model_dir() / "1" / name), full_check=True)


def test_shipped_onnx_matches_shipped_keras(real_batch: np.ndarray) -> None:
    model = keras.saving.load_model(MODELS / "pneumonia_cnn.keras", compile=False)
    expected = np.concatenate(
        [
            model(real_batch[i : i + 64], training=False).numpy()
            for i in range(0, len(real_batch), 64)
        ]
    )
    got = run_batched(create_session(default_model_dir() / "1" / "model.onnx"), real_batch, 32)
    assert np.max(np.abs(got - expected)) <= FP32_TOLERANCE
