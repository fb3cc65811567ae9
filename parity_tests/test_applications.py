"""keras.applications bases are recognised by their layers, nested or flattened, Keras 3 or
tf.keras 2; a base without its preprocessing stops the conversion, and a stated scaling that is
not the base's own is said out loud."""

from __future__ import annotations

import logging
from typing import Any

import keras
import pytest
import tf_keras

from pneumo_onnx.convert.applications import find_family, input_scaling, preprocessing_inside
from pneumo_onnx.engine.errors import UsageError

apps = keras.applications
BASES = [
    (apps.VGG16, 32, "VGG16"),
    (apps.VGG19, 32, "VGG19"),
    (apps.ResNet50, 32, "ResNet50/101/152"),
    (apps.ResNet50V2, 32, "ResNetV2"),
    (apps.DenseNet121, 32, "DenseNet"),
    (apps.MobileNet, 32, "MobileNet"),
    (apps.MobileNetV2, 32, "MobileNetV2"),
    (apps.MobileNetV3Small, 32, "MobileNetV3"),
    (apps.InceptionV3, 75, "InceptionV3"),
    (apps.Xception, 71, "Xception"),
    (apps.NASNetMobile, 32, "NASNet"),
    (apps.EfficientNetB0, 32, "EfficientNet"),
    (apps.EfficientNetV2B0, 32, "EfficientNet"),
]


def nested(base: keras.Model, inside: Any = None) -> keras.Model:
    inputs = keras.Input(base.input_shape[1:])
    x = base(inside(inputs) if inside else inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


@pytest.mark.parametrize(("build", "size", "family"), BASES, ids=[b[2] + str(b[1]) for b in BASES])
def test_every_base_is_recognised(build: Any, size: int, family: str) -> None:
    base = build(include_top=False, weights=None, input_shape=(size, size, 3))
    found = find_family(nested(base))
    assert found is not None and found.name == family
    flat = keras.Model(base.input, keras.layers.GlobalAveragePooling2D()(base.output))
    assert find_family(flat) == found


def test_a_small_cnn_is_no_base() -> None:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="block1_conv1")(inputs)  # one familiar name is not enough
    assert find_family(keras.Model(inputs, x)) is None


def test_preprocessing_inside_is_seen_in_keras_3_and_tf_keras() -> None:
    base = apps.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    model = nested(base, inside=apps.mobilenet_v2.preprocess_input)
    assert [n.split("_")[0] for n in preprocessing_inside(model)] == ["true", "subtract"]
    assert preprocessing_inside(nested(base)) == []
    effnet = apps.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert len(preprocessing_inside(nested(effnet))) == 2  # its Rescaling and Normalization
    tk = tf_keras.applications
    legacy_base = tk.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    inputs = tf_keras.Input((32, 32, 3))
    legacy = tf_keras.Model(inputs, legacy_base(tk.mobilenet_v2.preprocess_input(inputs)))
    assert [n.split("_")[0] for n in preprocessing_inside(legacy)] == [
        "tf.math.truediv",
        "tf.math.subtract",
    ]


def test_input_scaling_decisions(caplog: pytest.LogCaptureFixture) -> None:
    base = apps.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    bare, inside = nested(base), nested(base, inside=apps.mobilenet_v2.preprocess_input)
    with caplog.at_level(logging.INFO, logger="pneumo_onnx.convert.applications"):
        assert input_scaling("m.keras", inside, True, None, "unit") == "raw"
        assert input_scaling("m.keras", bare, True, "symmetric", "unit") == "symmetric"
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert input_scaling("m.keras", bare, True, "unit", "unit") == "unit"
    assert (
        "m.keras holds a keras.applications MobileNetV2 base whose preprocess_input gives [-1, "
        "1]: x / 127.5 - 1 (preprocess_input 'tf' mode) (--preset mobilenet-v2); converting with "
        "the scaling you gave: unit, [0, 1]: x * (1/255), as rescale=1/255 outside"
    ) in caplog.text
    with pytest.raises(UsageError, match="convert with --preset mobilenet-v2"):
        input_scaling("m.keras", bare, True, None, "unit")
    # Subclassed models list layers in attribute order: 'before the base' cannot be told.
    with pytest.raises(UsageError, match="no preprocessing layer before it"):
        input_scaling("m.keras", inside, False, None, "unit")
