"""Engine: loading, contract, batch order, per-item errors, thresholds, threads, devices."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumo_onnx
from pneumo_onnx import Engine
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.errors import (
    ImageError,
    InferenceError,
    ModelLoadError,
    RepositoryError,
    UsageError,
)
from pneumo_onnx.engine.repository.manifest import FORMAT, MANIFEST_NAME, sha256_file
from pneumo_onnx.engine.runtime.limits import MAX_PIXELS
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.runtime.session import create_session, run
from tests.conftest import tiny_model

CONTRACT = Contract(input=InputSpec(height=32, width=32, resize_filter="bilinear"))


def gray_png(value: int, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, "PNG")
    return buf.getvalue()


def expected_score(value: int) -> float:
    """The tiny model: sigmoid(4 * (mean - 0.5)) of a flat image in [0, 1]."""
    return 1.0 / (1.0 + math.exp(-4.0 * (value / 255.0 - 0.5)))


@pytest.fixture
def tiny_engine(write_model) -> Engine:
    return Engine.load(write_model(contract=CONTRACT))


def test_default_model_loads_and_scores_samples(samples: list[Path]) -> None:
    engine = Engine.load()
    assert engine.provider == "CPUExecutionProvider"
    assert engine.model.name == "pneumonia" and engine.model.variant == "fp32"
    assert engine.contract.input.height == 128
    result = engine.predict(samples[0])
    assert set(result) == {"prediction", "confidence", "raw_score", "threshold"}
    assert result["prediction"] in ("NORMAL", "PNEUMONIA")
    assert result["threshold"] == engine.contract.threshold == 0.71  # version 2's stored one
    assert 0.5 <= result["confidence"] <= 1.0


def test_scores_are_exact_on_the_tiny_model(tiny_engine: Engine) -> None:
    for value in (0, 60, 128, 200, 255):
        result = tiny_engine.predict(gray_png(value))
        assert result["raw_score"] == pytest.approx(expected_score(value), abs=1e-5)
    dark = tiny_engine.predict(gray_png(40))
    assert dark["prediction"] == "NORMAL"
    assert dark["confidence"] == pytest.approx(1 - dark["raw_score"])


def test_plain_onnx_gets_defaults_from_its_shape(write_model) -> None:
    engine = Engine.load(write_model(height=40, width=36))
    assert (engine.contract.input.height, engine.contract.input.width) == (40, 36)
    assert engine.contract.input.scaling == "unit" and engine.model.manifest is None
    assert engine.predict(gray_png(255))["raw_score"] == pytest.approx(
        expected_score(255), abs=1e-5
    )


def test_batch_keeps_order_and_reports_each_bad_item(tiny_engine: Engine, tmp_path: Path) -> None:
    bomb = io.BytesIO()
    side = int(MAX_PIXELS**0.5) + 100
    Image.new("1", (side, side)).save(bomb, "PNG")
    jpeg = io.BytesIO()
    Image.new("L", (300, 300), 90).save(jpeg, "JPEG")
    items = [
        gray_png(10),
        b"",
        jpeg.getvalue()[:200],
        b"plain text, not an image",
        bomb.getvalue(),
        str(tmp_path),
        str(tmp_path / "missing.png"),
        np.zeros((64, 64, 2), np.uint8),
        np.full((64, 64), 7.0),
        gray_png(250),
    ]
    results = tiny_engine.predict_batch(items, batch_size=3, workers=2)
    assert len(results) == len(items)
    assert results[0]["raw_score"] == pytest.approx(expected_score(10), abs=1e-5)
    assert results[-1]["raw_score"] == pytest.approx(expected_score(250), abs=1e-5)
    errors = [r["error"] for r in results[1:-1]]
    for error, expected in zip(
        errors,
        [
            "got 0 bytes",
            "truncated or corrupt",
            "is not a supported image",
            "decompression bomb",
            "is a directory",
            "missing.png: no such file",
            "expected an HxW",
            "finite values in",
        ],
        strict=True,
    ):
        assert expected in error


def test_stream_reads_inputs_lazily(tiny_engine: Engine) -> None:
    pulled = 0

    def images() -> Iterator[bytes]:
        nonlocal pulled
        for _ in range(200):
            pulled += 1
            yield gray_png(100)

    stream = tiny_engine.stream(images(), batch_size=4, workers=1)
    first_index, _ = next(stream)
    # The first batch (4) plus a read-ahead window of 2 batches: bounded, not the whole input.
    assert first_index == 0 and pulled <= 3 * 4
    assert sum(1 for _ in stream) == 199


@pytest.mark.parametrize("threshold", [float("nan"), -0.1, 1.5, "0.5", True, float("inf")])
def test_invalid_thresholds_are_refused(tiny_engine: Engine, threshold: object) -> None:
    with pytest.raises(UsageError, match="threshold must be"):
        tiny_engine.predict(gray_png(10), threshold=threshold)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="threshold must be"):
        tiny_engine.predict_batch([gray_png(10)], threshold=threshold)  # type: ignore[arg-type]


def test_threshold_changes_the_label_not_the_score(tiny_engine: Engine) -> None:
    low = tiny_engine.predict(gray_png(100), threshold=0.1)
    high = tiny_engine.predict(gray_png(100), threshold=0.9)
    assert low["raw_score"] == high["raw_score"]
    assert (low["prediction"], high["prediction"]) == ("PNEUMONIA", "NORMAL")


def test_single_predict_raises_typed_errors(tiny_engine: Engine) -> None:
    with pytest.raises(ImageError, match="got 0 bytes"):
        tiny_engine.predict(b"")


def test_one_engine_many_threads(tiny_engine: Engine) -> None:
    images = [gray_png(v) for v in range(0, 256, 8)]
    expected = [tiny_engine.predict(i)["raw_score"] for i in images]
    got: dict[int, list[float]] = {}

    def worker(n: int) -> None:
        got[n] = [tiny_engine.predict(i)["raw_score"] for i in images]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[n] == expected for n in range(8))


def test_cuda_without_a_cuda_provider_is_a_clear_error(write_model) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert Engine.load(write_model(), device="cuda").provider == "CUDAExecutionProvider"
        return
    with pytest.raises(UsageError, match="needs onnxruntime's CUDAExecutionProvider"):
        Engine.load(write_model(), device="cuda")


def test_repository_resolution(tmp_path: Path) -> None:
    data = tiny_model(contract=CONTRACT).SerializeToString()
    version = tmp_path / "repo" / "tiny" / "3"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(data)
    (tmp_path / "repo" / "tiny" / "1").mkdir()  # an older, empty version is ignored
    manifest = {
        "format": FORMAT,
        "name": "tiny",
        "version": 3,
        "files": {
            "model.onnx": {"sha256": sha256_file(version / "model.onnx"), "bytes": len(data)}
        },
    }
    (version / MANIFEST_NAME).write_text(json.dumps(manifest))
    for target in (tmp_path / "repo", tmp_path / "repo" / "tiny", version, version / "model.onnx"):
        engine = Engine.load(target)
        assert (engine.model.name, engine.model.version) == ("tiny", 3), target
    with pytest.raises(UsageError, match="has no int8 variant"):
        Engine.load(version, variant="int8")
    with pytest.raises(UsageError, match="variant must be one of"):
        Engine.load(version, variant="int4")
    (tmp_path / "repo" / "other" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "other" / "1" / "model.onnx").write_bytes(data)
    with pytest.raises(UsageError, match="holds several models"):
        Engine.load(tmp_path / "repo")
    (version / "model.onnx").write_bytes(data + b"\x00")
    with pytest.raises(RepositoryError, match="does not match the sha256"):
        Engine.load(version)
    with pytest.raises(UsageError, match="no such model file or folder"):
        Engine.load(tmp_path / "nowhere")


def test_fast_and_reference_agree_on_real_samples(samples: list[Path]) -> None:
    fast = Engine.load(preprocessing="fast")
    reference = Engine.load(preprocessing="reference")
    a = np.stack([fast.preprocess(p) for p in samples])
    b = np.stack([reference.preprocess(p) for p in samples])
    assert a.shape == b.shape == (6, 128, 128, 3)
    assert np.abs(a - b).mean() < 2 / 255
    with pytest.raises(UsageError, match="preprocessing must be one of auto, fast, reference"):
        Engine.load(preprocessing="turbo")


def test_auto_preprocessing_follows_the_measured_verdict(write_model) -> None:
    """The shipped model's manifest holds its measured fast-path figures: auto runs the path
    they earn (fast within 0.01 of reference, else reference). A plain .onnx has none:
    reference, unless the fast path is exact for its filter."""
    shipped = Engine.load()
    figures = shipped.info()["fast_vs_reference"]
    earned = "fast" if figures["max_score_diff"] <= 0.01 else "reference"
    assert shipped.preprocessing == earned, shipped.preprocessing_reason
    assert f"on {figures['images']} probe X-rays" in shipped.preprocessing_reason
    plain = Engine.load(write_model(contract=CONTRACT))
    assert plain.preprocessing == "reference"
    assert "no measured fast-path figures (a plain ONNX file, no manifest)" in (
        plain.preprocessing_reason
    )
    nearest = Contract(input=InputSpec(height=32, width=32, resize_filter="nearest"))
    exact = Engine.load(write_model("nearest.onnx", contract=nearest))
    assert exact.preprocessing == "fast" and "exact for the nearest filter" in (
        exact.preprocessing_reason
    )
    forced = Engine.load(write_model(contract=CONTRACT), preprocessing="fast")
    assert (forced.preprocessing, forced.preprocessing_reason) == (
        "fast",
        "--preprocessing fast asked for",
    )


@pytest.mark.parametrize("iobinding", [False, True], ids=["run", "iobinding"])
def test_both_run_paths_score_alike_and_map_onnxruntime_errors(
    tiny_engine: Engine, iobinding: bool
) -> None:
    """THE one call into onnxruntime: plain `run` and IOBinding (CUDA's path, exercised here on
    the CPU) give the same scores, and both turn onnxruntime's errors into InferenceError."""
    x = np.stack([tiny_engine.preprocess(gray_png(v)) for v in (0, 128, 255)])
    (out,) = run(tiny_engine.session, x, iobinding=iobinding)
    np.testing.assert_allclose(
        out[:, 0], [expected_score(v) for v in (0, 128, 255)], rtol=0, atol=1e-5
    )
    with pytest.raises(InferenceError, match="onnxruntime cannot run the model"):
        run(tiny_engine.session, x[:, :16], iobinding=iobinding)  # wrong height


def test_load_errors_name_the_file_never_its_folders(tmp_path: Path) -> None:
    """onnxruntime's own message carries the absolute path: a server client must not see it."""
    folder = tmp_path / "internal" / "models"
    folder.mkdir(parents=True)
    broken = folder / "model.onnx"
    broken.write_bytes(b"not an onnx graph")
    with pytest.raises(ModelLoadError) as caught:
        create_session(broken)
    assert "model.onnx" in caught.value.message
    assert str(folder) not in caught.value.message and "internal" not in caught.value.message


def test_the_package_door_and_closing() -> None:
    """`from pneumo_onnx import Engine` (importing pneumo_onnx alone loads no onnxruntime), and
    `with Engine.load() as engine:` frees the model at the end."""
    probe = "import sys, pneumo_onnx\nprint('onnxruntime' in sys.modules, pneumo_onnx.__version__)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["False", pneumo_onnx.__version__], done.stderr
    sample = sample_images()[0]
    with pneumo_onnx.Engine.load() as engine:
        assert engine.predict(sample)["prediction"] == "NORMAL"
    with pytest.raises(UsageError, match=r"this engine \(model.onnx\) is closed: load it again"):
        engine.predict(sample)
    engine.close()  # twice is fine


def test_row_columns_and_scored_fields_are_the_types_keys() -> None:
    from pneumo_onnx.engine.runtime.results import ROW_COLUMNS, SCORED_FIELDS, Row, Scored

    assert tuple(Row.__annotations__) == ROW_COLUMNS
    assert SCORED_FIELDS == tuple(Scored.__annotations__) == ROW_COLUMNS[1:-1]
