"""Convert the architectures users really have, from every source format, and prove parity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tf_keras

from models.training.pneumonia_cnn import build_model
from parity_tests.conftest import FP32_TOLERANCE
from pneumo_onnx.convert.detect import Overrides
from pneumo_onnx.convert.pipeline import ConvertOptions, convert
from pneumo_onnx.convert.source import load_source
from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.runtime.preprocess import reference_batch
from pneumo_onnx.engine.runtime.session import create_session, run_batched

L = keras.layers


@keras.saving.register_keras_serializable(package="pneumo_tests")
class SubclassedCNN(keras.Model):
    """A subclassed model as users write them: layers as attributes, a call() method."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv1 = L.Conv2D(8, 3, strides=2, activation="relu")
        self.bn = L.BatchNormalization()
        self.conv2 = L.Conv2D(16, 3, strides=2, activation="relu")
        self.pool = L.GlobalAveragePooling2D()
        self.out = L.Dense(1, activation="sigmoid")

    def call(self, x: Any, training: bool = False) -> Any:
        return self.out(self.pool(self.conv2(self.bn(self.conv1(x), training=training))))


def _small(inputs: Any, x: Any, head: Any) -> keras.Model:
    x = L.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = L.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, head(x))


def sequential(tmp: Path) -> Path:
    model = keras.Sequential(
        [
            keras.Input((128, 128, 3)),
            L.Conv2D(8, 5, strides=2, padding="same", activation="relu"),  # strided conv
            L.AveragePooling2D(2),  # average pooling
            L.Conv2D(16, 3, strides=2, activation="relu"),
            L.Flatten(),  # flatten + dense head
            L.Dense(16, activation="relu"),
            L.Dense(1, activation="sigmoid"),
        ]
    )
    return _save(model, tmp / "sequential.keras")


def functional_h5(tmp: Path) -> Path:
    return _save(build_model(), tmp / "reference.h5")


def subclassed(tmp: Path) -> Path:
    model = SubclassedCNN()
    model(np.zeros((1, 128, 128, 3), np.float32))
    return _save(model, tmp / "subclassed.keras")


def rescaling_resizing_inside(tmp: Path) -> Path:
    inputs = keras.Input((None, None, 3))
    x = L.Rescaling(1 / 255.0)(L.Resizing(96, 96)(inputs))
    return _save(_small(inputs, x, L.Dense(1, activation="sigmoid")), tmp / "in_model_prep.keras")


def softmax2(tmp: Path) -> Path:
    inputs = keras.Input((128, 128, 3))
    return _save(_small(inputs, inputs, L.Dense(2, activation="softmax")), tmp / "softmax2.keras")


def augmentation_dropout(tmp: Path) -> Path:
    inputs = keras.Input((128, 128, 3))
    x = L.RandomFlip("horizontal")(inputs)
    x = L.RandomRotation(0.05)(x)
    x = L.RandomZoom(0.1)(x)
    x = L.RandomContrast(0.1)(x)
    head = keras.Sequential([L.Dropout(0.5), L.Dense(1, activation="sigmoid")])
    return _save(_small(inputs, x, head), tmp / "augmented.keras")


def grayscale(tmp: Path) -> Path:
    inputs = keras.Input((64, 64, 1))
    return _save(_small(inputs, inputs, L.Dense(1, activation="sigmoid")), tmp / "gray.keras")


def legacy_tf_keras_h5(tmp: Path) -> Path:
    tk = tf_keras.layers
    model = tf_keras.Sequential(
        [
            tk.InputLayer(input_shape=(128, 128, 3)),
            tk.Conv2D(8, 3, strides=2, activation="relu"),
            # tf.keras 2.x writes DepthwiseConv2D with a `groups` argument that Keras 3 refuses
            # ("Unrecognized keyword arguments"): this file needs the tf_keras fallback.
            tk.DepthwiseConv2D(3, activation="relu"),
            tk.BatchNormalization(),
            tk.MaxPooling2D(),
            tk.Conv2D(16, 3, activation="relu"),
            tk.GlobalAveragePooling2D(),
            tk.Dropout(0.2),
            tk.Dense(1, activation="sigmoid"),
        ]
    )
    path = tmp / "legacy_tf_keras.h5"
    model.save(path)  # tf.keras 2.x HDF5, as older training scripts wrote it
    return path


def keras2_dot_keras(tmp: Path) -> Path:
    """A `.keras` file written by Keras 2 (tf_keras, as Keras 2.12-2.15 wrote them) that Keras 3
    cannot rebuild (DepthwiseConv2D's `groups`): converted through tf_keras."""
    tk = tf_keras.layers
    model = tf_keras.Sequential(
        [
            tk.InputLayer(input_shape=(128, 128, 3)),
            tk.Conv2D(8, 3, strides=2, activation="relu"),
            tk.DepthwiseConv2D(3, activation="relu"),
            tk.GlobalAveragePooling2D(),
            tk.Dense(1, activation="sigmoid"),
        ]
    )
    path = tmp / "keras2.keras"
    model.save(path)
    with pytest.raises(TypeError, match="could not be deserialized properly"):
        keras.saving.load_model(path, compile=False)  # what a Keras 3 user gets
    return path


def keras_export_savedmodel(tmp: Path) -> Path:
    path = tmp / "exported"
    build_model().export(path, verbose=False)  # Keras 3 model.export(): a serving SavedModel
    return path


def mobilenet_v2(tmp: Path) -> Path:
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(128, 128, 3), classes=1, classifier_activation="sigmoid"
    )
    _calibrate_batchnorm(model)
    return _save(model, tmp / "mobilenet_v2.keras")


def densenet121(tmp: Path) -> Path:
    model = keras.applications.DenseNet121(
        weights=None, input_shape=(128, 128, 3), classes=1, classifier_activation="sigmoid"
    )
    _calibrate_batchnorm(model)
    return _save(model, tmp / "densenet121.keras")


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]
    format: str
    expect: dict[str, Any] = field(default_factory=dict)
    overrides: Overrides = field(default_factory=Overrides)
    variants: tuple[str, ...] = ()


CASES = {
    "sequential-strided-avgpool-flatten": Case(sequential, "keras"),
    "functional-keras3-h5": Case(functional_h5, "h5"),
    "subclassed": Case(subclassed, "keras"),
    "rescaling-resizing-inside": Case(
        rescaling_resizing_inside,
        "keras",
        {"scaling": "raw", "height": 96, "width": 96, "resizes_inside": True},
    ),
    "softmax2-labels": Case(
        softmax2,
        "keras",
        {"kind": "softmax2", "positive_index": 1},
        Overrides(labels=("NORMAL", "PNEUMONIA")),
    ),
    "softmax2-index": Case(
        softmax2, "keras", {"kind": "softmax2", "positive_index": 0}, Overrides(positive_index=0)
    ),
    "augmentation-dropout": Case(augmentation_dropout, "keras"),
    "grayscale": Case(grayscale, "keras", {"channels": 1, "height": 64}),
    "legacy-tf_keras-h5": Case(legacy_tf_keras_h5, "h5-tf_keras", variants=("tflite",)),
    "keras2-dot-keras": Case(keras2_dot_keras, "keras-tf_keras"),
    "keras-export-savedmodel": Case(keras_export_savedmodel, "savedmodel", variants=("tflite",)),
    "mobilenet_v2": Case(
        mobilenet_v2, "keras", {"scaling": "symmetric"}, Overrides(presets=("mobilenet-v2",))
    ),
    "densenet121": Case(
        densenet121,
        "keras",
        {"scaling": "torch", "color": "rgb"},
        Overrides(presets=("keras-load-img", "densenet")),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_convert_and_match(case: Case, tmp_path: Path, real_images: list[Path]) -> None:
    source = case.build(tmp_path)
    result = convert(
        source, tmp_path / "repo", ConvertOptions(variants=case.variants, overrides=case.overrides)
    )
    contract: Contract = result.contract
    fields = {**vars(contract.input), **vars(contract.output)}
    assert {k: fields[k] for k in case.expect} == case.expect
    assert result.manifest.source is not None and result.manifest.source.format == case.format

    # Independent re-check on real X-rays through the contract the engine will read.
    x = reference_batch(real_images[:16], contract)
    expected = load_source(source).predict(x)
    got = run_batched(create_session(result.version_dir / "model.onnx"), x, batch_size=7)
    assert np.max(np.abs(got - expected)) <= FP32_TOLERANCE
    spread = np.ptp(contract.scores(expected))
    assert spread > 1e-6, "outputs are constant: this parity check would prove nothing"
    for key in case.variants:
        figures = result.manifest.variants[key].variant
        assert figures is not None and figures.max_score_diff <= FP32_TOLERANCE, key


def _save(model: keras.Model, path: Path) -> Path:
    model.save(path)
    return path


def _calibrate_batchnorm(model: keras.Model) -> None:
    """Untrained keras.applications models shrink activations to ~0 (every score 0.5): set each
    BatchNormalization's moving statistics from one random batch, as a data-dependent init, so
    that parity is measured on scores that vary."""
    batchnorms = [layer for layer in model.layers if isinstance(layer, L.BatchNormalization)]
    for layer in batchnorms:
        layer.momentum = 0.0
    x = np.random.default_rng(0).random((8, *model.input_shape[1:]), dtype=np.float32)
    model(x, training=True)
    for layer in batchnorms:
        layer.momentum = 0.99
