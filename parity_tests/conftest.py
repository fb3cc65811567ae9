"""Shared, expensive fixtures for parity tests: the reference model, its converted repository,
and the real X-rays to compare on (../shared/data when present, the shipped samples otherwise).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo_onnx.convert.extra import require

require("parity tests", ("tensorflow", "tf2onnx", "onnx"))

from pneumo_onnx.convert.pipeline import ConvertOptions, ConvertResult, convert  # noqa: E402
from pneumo_onnx.engine.contract import Contract  # noqa: E402
from pneumo_onnx.engine.runtime.listing import list_images  # noqa: E402
from pneumo_onnx.engine.runtime.preprocess import reference_batch  # noqa: E402
from pneumo_onnx.engine.runtime.samples import sample_images  # noqa: E402

SHARED_FULLRES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fullres"
TRAINED = Path(__file__).resolve().parents[1] / "models" / "pneumonia_cnn.keras"
# For a test whose figures are measured on many X-rays (calibration, p99 gates, a wrong
# pipeline's margin): the six shipped samples cannot stand in for the 200 of ../shared.
NEEDS_FULLRES = pytest.mark.skipif(
    not SHARED_FULLRES.is_dir(),
    reason="needs the 200 full-resolution X-rays of ../shared/data/fullres: its figures are "
    "measured on many images, which the 6 shipped samples cannot stand in for",
)
FP32_TOLERANCE = 1e-5


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "parity_tests" in str(item.fspath):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every model a test builds gets the same weights on every run: parity figures are then
    reproducible, and a failure is a finding rather than a draw."""
    import keras

    keras.utils.set_random_seed(1234)


@pytest.fixture(scope="session")
def real_images() -> list[Path]:
    """Real X-rays: the 200 full-resolution images of ../shared when present, else the samples."""
    return list_images(SHARED_FULLRES) if SHARED_FULLRES.is_dir() else sample_images()


@pytest.fixture(scope="session")
def image_folders() -> list[str]:
    return [str(SHARED_FULLRES)] if SHARED_FULLRES.is_dir() else []


@pytest.fixture(scope="session")
def reference_keras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained reference model (a copy): the labelled check that runs on ../shared's
    NORMAL/ and PNEUMONIA/ needs a model that tells them apart."""
    path = tmp_path_factory.mktemp("reference") / "pneumonia_cnn.keras"
    shutil.copyfile(TRAINED, path)
    return path


@pytest.fixture(scope="session")
def reference_repo(
    reference_keras: Path, tmp_path_factory: pytest.TempPathFactory, image_folders: list[str]
) -> ConvertResult:
    """The reference model converted with every variant, as a user would with the CLI."""
    repo = tmp_path_factory.mktemp("repo")
    return convert(reference_keras, repo, ConvertOptions(image_folders=image_folders))


@pytest.fixture(scope="session")
def real_batch(real_images: list[Path]) -> np.ndarray:
    return reference_batch(real_images, Contract())
