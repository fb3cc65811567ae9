"""The committed models: each version's ONNX files match its committed Keras model and the
manifest matches the files, so what `pip install .` ships is what was validated. Version 2 is
the default; version 1 stays for comparison and rollback."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from parity_tests.conftest import FP32_TOLERANCE
from pneumo_onnx import Engine
from pneumo_onnx.engine.repository.manifest import read_manifest, sha256_file, verify_files
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.runtime.session import create_session, run_batched

MODELS = Path(__file__).resolve().parents[1] / "models"
SOURCES = {1: MODELS / "pneumonia_cnn.keras", 2: MODELS / "pneumonia_cnn_v2.keras"}


def shipped_onnx() -> list[tuple[int, str]]:
    return [
        (version, p.name)
        for version in sorted(SOURCES)
        for p in sorted((default_model_dir() / str(version)).glob("*.onnx"))
    ]


@pytest.mark.parametrize("version", sorted(SOURCES))
def test_manifest_matches_the_shipped_files(version: int) -> None:
    version_dir = default_model_dir() / str(version)
    manifest = read_manifest(version_dir)
    assert verify_files(version_dir, manifest) == []
    assert {"model.onnx", "model.int8.onnx", "model.fp16.onnx"} <= set(manifest.files)
    assert manifest.source is not None
    assert manifest.source.sha256 == sha256_file(SOURCES[version])
    assert (version_dir.parent / "config.pbtxt").is_file()


def test_version_2_is_the_default_with_its_stated_threshold() -> None:
    engine = Engine.load()
    assert engine.model.version == 2
    assert engine.contract.threshold == 0.71  # models/README.md: the stored threshold


@pytest.mark.parametrize(("version", "name"), shipped_onnx())
def test_every_shipped_onnx_file_passes_the_checker(version: int, name: str) -> None:
    path = default_model_dir() / str(version) / name
    onnx.checker.check_model(onnx.load(path), full_check=True)


@pytest.mark.parametrize("version", sorted(SOURCES))
def test_shipped_onnx_matches_shipped_keras(version: int, real_batch: np.ndarray) -> None:
    model = keras.saving.load_model(SOURCES[version], compile=False)
    expected = np.concatenate(
        [
            model(real_batch[i : i + 64], training=False).numpy()
            for i in range(0, len(real_batch), 64)
        ]
    )
    onnx_file = default_model_dir() / str(version) / "model.onnx"
    got = run_batched(create_session(onnx_file), real_batch, 32)
    assert np.max(np.abs(got - expected)) <= FP32_TOLERANCE
