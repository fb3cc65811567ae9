"""The fidelity matrix's promise for models trained on OpenCV pipelines (cv2.imread, optional
cvtColor, cv2.resize, / 255), as Kaggle pneumonia notebooks write them: converted with only
`--preset opencv...` (and `--resize-filter cv2-*` for a non-default interpolation), then
`pneumo batch` with default settings on full-size X-rays, every score within 0.02 of the
author's own cv2 + Keras code, and Pillow's bilinear (the plausible mistake) caught.

The cases, the calibration and the comparison are test_fidelity_matrix's own (`check_case`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from parity_tests import test_fidelity_matrix as matrix
from parity_tests.test_fidelity_matrix import Case, Pipeline, check_case, raw, rescale, small_cnn

folders = matrix.folders  # the matrix's probe and scored X-rays, as fixtures here
report = matrix.report  # prints (and writes) these cases' figures too

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the 'dev' extra) is missing")


def opencv(
    size: int,
    then: Callable[[np.ndarray], np.ndarray],
    color: str = "bgr",
    interpolation: int = cv2.INTER_LINEAR,
) -> Pipeline:
    """cv2.imread (BGR, or IMREAD_GRAYSCALE), optionally cvtColor BGR2RGB, cv2.resize, then
    `then`: the author's code."""

    def run(paths: list[Path]) -> np.ndarray:
        out = []
        for p in paths:
            flag = cv2.IMREAD_GRAYSCALE if color == "grayscale" else cv2.IMREAD_COLOR
            img = cv2.imread(str(p), flag)
            if color == "rgb":
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            img = cv2.resize(img, (size, size), interpolation=interpolation)
            x = img.astype(np.float32)
            out.append(then(x[:, :, None] if x.ndim == 2 else x))
        return np.stack(out)

    return run


BILINEAR = (("resize_filter", "bilinear"),)  # PIL's bilinear, antialiased: the easy mistake
CASES = {
    "opencv": Case(
        lambda: small_cnn(128),
        opencv(128, rescale),
        ("--preset", "opencv"),
        128,
        wrong=BILINEAR,
    ),
    "opencv-rgb-nearest": Case(
        lambda: small_cnn(96),
        opencv(96, rescale, "rgb", cv2.INTER_NEAREST),
        ("--preset", "opencv-rgb", "--resize-filter", "cv2-nearest"),
        96,
        wrong=BILINEAR,
    ),
    "opencv-gray-area": Case(
        lambda: small_cnn(64, channels=1, rescaling=True),
        opencv(64, raw, "grayscale", cv2.INTER_AREA),
        ("--preset", "opencv-gray", "--resize-filter", "cv2-area"),
        64,
        channels=1,
        wrong=(("scaling", "raw"), ("resize_filter", "nearest")),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_default_batch_matches_the_authors_cv2_pipeline(
    name: str, folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_case(name, CASES[name], folders, tmp_path, capsys)
