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
from parity_tests.conftest import NEEDS_FULLRES
from parity_tests.test_fidelity_matrix import Case, Pipeline, check_case, raw, rescale, small_cnn
from pneumo_onnx.engine.cli import main

folders = matrix.folders  # the matrix's probe and scored X-rays, as fixtures here
report = matrix.report  # prints (and writes) these cases' figures too

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the 'dev' extra) is missing")


def opencv(
    size: int,
    then: Callable[[np.ndarray], np.ndarray],
    color: str = "bgr",
    interpolation: int = cv2.INTER_LINEAR,
    before: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Pipeline:
    """cv2.imread (BGR, or IMREAD_GRAYSCALE; "gray-of-bgr": BGR then cvtColor BGR2GRAY;
    "gray-as-rgb": IMREAD_GRAYSCALE, `before`, then cvtColor GRAY2RGB for a 3-channel model),
    optionally cvtColor BGR2RGB, `before` (an intensity step on the full-size image),
    cv2.resize, then `then`: the author's code."""

    def run(paths: list[Path]) -> np.ndarray:
        out = []
        for p in paths:
            gray = color in ("grayscale", "gray-as-rgb")
            img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
            if color == "rgb":
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            if color == "gray-of-bgr":
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            if before is not None:
                img = before(img)
            if color == "gray-as-rgb":
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
            img = cv2.resize(img, (size, size), interpolation=interpolation)
            x = img.astype(np.float32)
            out.append(then(x[:, :, None] if x.ndim == 2 else x))
        return np.stack(out)

    return run


BILINEAR = (("resize_filter", "bilinear"),)  # PIL's bilinear, antialiased: the easy mistake
GRAY_LINEAR = (("resize_filter", "cv2-linear"), ("color", "grayscale"))
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
    # Intensity steps before the resize, the three of the issue: the wrong pipeline is the
    # right one without its step (what a conversion without --pre-resize would run).
    "opencv-gray-convertscaleabs": Case(
        lambda: small_cnn(64, channels=1),
        opencv(64, rescale, "gray-of-bgr", before=lambda g: cv2.convertScaleAbs(g, alpha=1.3)),
        ("--preset", "opencv-gray", "--pre-resize", "scale-abs:1.3"),
        64,
        channels=1,
        wrong=GRAY_LINEAR,
    ),
    "opencv-clahe-rgb": Case(
        lambda: small_cnn(96),
        opencv(
            96,
            rescale,
            "gray-as-rgb",
            before=lambda g: cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(g),
        ),
        ("--preset", "opencv-gray", "--pre-resize", "clahe:2.0:8x8"),
        96,
        wrong=GRAY_LINEAR,
    ),
    "opencv-equalizehist-area": Case(
        lambda: small_cnn(64, channels=1, rescaling=True),
        opencv(64, raw, "grayscale", cv2.INTER_AREA, before=cv2.equalizeHist),
        ("--preset", "opencv-gray", "--resize-filter", "cv2-area", "--pre-resize", "equalize-hist"),
        64,
        channels=1,
        wrong=(("scaling", "raw"), ("resize_filter", "cv2-area"), ("color", "grayscale")),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_default_batch_matches_the_authors_cv2_pipeline(
    name: str, folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_case(name, CASES[name], folders, tmp_path, capsys)


@NEEDS_FULLRES
def test_expected_scores_catch_a_step_the_conversion_was_not_told(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's author: cv2.imread, BGR2GRAY, convertScaleAbs(alpha=1.3), resize. Converted
    without the step, every graph check passes; the scores of the author's own code, as a CSV,
    fail it (`pneumo validate` and the `pneumo convert` gate); converted with the step, pass."""
    probes, scored = folders
    case = CASES["opencv-gray-convertscaleabs"]
    model = case.model()
    matrix.calibrate(model, case.user(sorted(probes.iterdir())), 0)
    source = tmp_path / "author.keras"
    model.save(source)
    images = sorted(scored.iterdir())
    scores = matrix.keras_outputs(model, case.user(images))[:, 0]
    table = tmp_path / "expected.csv"
    table.write_text(
        "image,score\n"
        + "".join(f"{p.name},{float(s)!r}\n" for p, s in zip(images, scores, strict=True))
    )
    repo = tmp_path / "repo"
    convert = ["convert", str(source), "-o", str(repo), "--variants", "none"]
    convert += ["--images", str(probes), "--preset", "opencv-gray"]
    validate = ["--images", str(scored), "--expected-scores", str(table)]

    assert main([*convert, "--expected-scores", str(table), "--images", str(scored)]) == 1
    assert "expected_scores: " in capsys.readouterr().err
    assert not (repo / "pneumonia" / "1").exists()

    assert main(convert) == 0  # without the gate: nothing in the graph is wrong
    capsys.readouterr()
    assert main(["validate", str(repo / "pneumonia" / "1" / "model.onnx"), *validate]) == 1
    out = capsys.readouterr().out
    assert "FAIL  expected_scores: " in out and "any step before the resize" in out

    assert main([*convert, "--pre-resize", "scale-abs:1.3"]) == 0
    capsys.readouterr()
    assert main(["validate", str(repo / "pneumonia" / "2" / "model.onnx"), *validate]) == 0
    out = capsys.readouterr().out
    assert "PASS  expected_scores: " in out and "max score diff 0.0000" in out
