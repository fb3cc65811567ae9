"""Class activation maps computed by the engine (numpy + onnxruntime) equal the CAMs computed in
Keras for the same model and image: the shipped model, a 2-unit softmax model, and no CAM
output at all for a model without global average pooling."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from pneumo_onnx.convert.pipeline import ConvertOptions, convert_loaded
from pneumo_onnx.convert.source import from_keras_model
from pneumo_onnx.engine.explain.heatmap import cam_spec, class_activation_map
from pneumo_onnx.engine.repository.cam import CAM_KEY, FEATURE_OUTPUT, measure_scale
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.repository.variants import OPTIONAL_VARIANTS
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.samples import sample_images

MODELS = Path(__file__).resolve().parents[1] / "models"
CAM_TOLERANCE = 1e-4


def keras_cam(
    model: keras.Model, feature_layer: str, x: np.ndarray, column: np.ndarray
) -> np.ndarray:
    """CAM the textbook way, in Keras: the feature map of `feature_layer` times `column`."""
    features = keras.Model(model.inputs, model.get_layer(feature_layer).output)(x, training=False)
    return np.asarray(features, dtype=np.float64) @ column


@pytest.mark.parametrize("preprocessing", ["reference", "fast"])
@pytest.mark.parametrize(
    ("version", "keras_file"), [(2, "pneumonia_cnn_v2.keras"), (1, "pneumonia_cnn.keras")]
)
def test_shipped_model_cam_equals_keras(
    real_images: list[Path], preprocessing: str, version: int, keras_file: str
) -> None:
    model = keras.saving.load_model(MODELS / keras_file, compile=False)
    kernel, bias = model.get_layer("pneumonia").get_weights()
    engine = Engine.load(default_model_dir() / str(version), preprocessing=preprocessing)
    spec = cam_spec(engine)
    assert spec is not None and spec.layer == "last_conv"
    worst = 0.0
    for path in real_images[:: max(1, len(real_images) // 12)]:
        x = engine.preprocess(path)
        expected = keras_cam(model, "last_conv", x[None], kernel[:, 0].astype(np.float64))[0]
        got = class_activation_map(engine, spec, x)
        assert got.values.shape == expected.shape == (16, 16)
        worst = max(worst, float(np.max(np.abs(got.values - expected))))
        # The same run's score is the engine's score, and the Keras score.
        assert got.score == pytest.approx(engine.predict(path)["raw_score"], abs=1e-6)
        keras_score = float(model(x[None], training=False)[0, 0])
        assert got.score == pytest.approx(keras_score, abs=1e-5)
        assert spec.bias == pytest.approx(float(bias[0]))
    print(f"numpy CAM vs Keras CAM ({preprocessing}): max abs diff {worst:.2e}")
    assert worst <= CAM_TOLERANCE, f"numpy CAM vs Keras CAM: max abs diff {worst:.2e}"


def _softmax_gap_model() -> keras.Model:
    inputs = keras.Input((64, 64, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


def test_softmax_model_cam_is_the_logit_difference(tmp_path: Path, real_images: list[Path]) -> None:
    model = _softmax_gap_model()
    from pneumo_onnx.convert.detect import Overrides

    opts = ConvertOptions(variants=["int8"], overrides=Overrides(labels=("NORMAL", "PNEUMONIA")))
    result = convert_loaded(from_keras_model(model, "softmax.keras"), tmp_path, 1, opts)
    cam = result.manifest.class_activation_map
    assert cam is not None and cam.available is True
    kernel, bias = model.get_layer("head").get_weights()
    column = (kernel[:, 1] - kernel[:, 0]).astype(np.float64)
    for filename, tolerance in (("model.onnx", CAM_TOLERANCE), ("model.int8.onnx", None)):
        engine = Engine.load(result.version_dir / filename, preprocessing="reference")
        spec = cam_spec(engine)
        assert spec is not None and spec.bias == pytest.approx(float(bias[1] - bias[0]))
        x = engine.preprocess(real_images[0])
        got = class_activation_map(engine, spec, x)
        if tolerance is not None:
            expected = keras_cam(model, "features", x[None], column)[0]
            assert np.max(np.abs(got.values - expected)) <= tolerance
            p = float(model(x[None], training=False)[0, 1])
            assert float(spec.scores(got.values[None])[0]) == pytest.approx(p, abs=1e-5)
        else:  # the int8 variant keeps the output and the metadata
            assert got.values.shape == (32, 32)
    checks = {c.name: c for c in result.manifest.checks or ()}
    assert checks["class_activation_map"].passed
    # The colour scale was measured on the real probe X-rays (here the 6 shipped samples) and
    # stored in both files: the engine's own maps of those X-rays give it again.
    engine = Engine.load(result.version_dir / "model.onnx", preprocessing="reference")
    spec = cam_spec(engine)
    assert spec is not None and spec.scale is not None and spec.scale.images == 6
    maps = [class_activation_map(engine, spec, engine.preprocess(p)) for p in sample_images()]
    again = measure_scale(
        np.stack([m.values for m in maps]), np.array([m.score for m in maps]), 0.5
    )
    assert (again.floor, again.full) == pytest.approx((spec.scale.floor, spec.scale.full), abs=1e-3)
    assert cam.scale == spec.scale
    assert cam_spec(Engine.load(result.version_dir / "model.int8.onnx")).scale == spec.scale


def test_model_without_gap_gets_no_cam_output(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    opts = ConvertOptions(variants=[])
    result = convert_loaded(from_keras_model(model, "flat.keras"), tmp_path, 1, opts)
    onnx_model = onnx.load(result.version_dir / "model.onnx")
    assert [o.name for o in onnx_model.graph.output] == ["score"]
    assert CAM_KEY not in {p.key for p in onnx_model.metadata_props}
    cam = result.manifest.class_activation_map
    assert cam is not None and cam.available is False and "Flatten -> Dense" in cam.detail


def test_shipped_variants_carry_the_feature_map() -> None:
    for key in ("int8", "int8-full", "fp16"):
        engine = Engine.load(variant=key)
        spec = cam_spec(engine)
        assert spec is not None, key
        assert [o.name for o in engine.session.get_outputs()] == ["score", FEATURE_OUTPUT]
        assert OPTIONAL_VARIANTS[key].filename == engine.model.path.name
