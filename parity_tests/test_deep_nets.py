"""Deep keras.applications nets convert with default flags: no false refusal from fp32 noise.

The parity gate is 4x the model's own fp32 noise (Keras one image at a time against the
batch, onnxruntime with and without its fusions), within [1e-5, 5e-4] (convert.noise): a fixed
1e-5 refused a third-party MobileNetV2 at 5.4e-5 whose scores were within 2.7e-5 of its
author's. Each base here is built with weights=None, its BatchNormalization statistics taken
from real X-rays and a head of a random direction over its features (a realistic gain, where
the fidelity matrix picks the least amplifying one), then converted with only its preset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers as L

from parity_tests.conftest import NEEDS_FULLRES
from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.repository.manifest import read_manifest
from pneumo_onnx.engine.runtime.samples import sample_images

apps = keras.applications
SHARED_FULLRES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fullres"
# (base, side, preset, keyword arguments): the smallest input each base takes
BASES: list[tuple[Callable[..., keras.Model], int, str, dict[str, Any]]] = [
    (apps.MobileNet, 32, "mobilenet", {"alpha": 0.25}),
    (apps.MobileNetV2, 96, "mobilenet-v2", {"alpha": 0.35}),
    (apps.MobileNetV3Small, 32, "mobilenet-v3", {}),
    (apps.EfficientNetB0, 32, "efficientnet", {}),
    (apps.DenseNet121, 32, "densenet", {}),
    (apps.ResNet50, 32, "resnet50", {}),
    (apps.VGG16, 32, "vgg16", {}),
    (apps.InceptionV3, 75, "inception-v3", {}),
    (apps.Xception, 71, "xception", {}),
]


FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    """The parity figures of every base, printed (pytest -s) for the record."""
    yield
    lines = [f"{'base':14} {'parity':>9} {'noise':>9} {'tolerance':>9}"]
    for name, p in FIGURES.items():
        noise = max(p["fp32_noise"].values())
        lines.append(f"{name:14} {p['max_abs_diff']:9.2e} {noise:9.2e} {p['tolerance']:9.2e}")
    print("\n" + "\n".join(lines))


def xrays(side: int, count: int = 16) -> np.ndarray:
    """Real X-rays, resized, 0-255 RGB: what the bases' statistics are taken on."""
    from PIL import Image

    paths = sorted(SHARED_FULLRES.rglob("*.jpeg"))[::12] if SHARED_FULLRES.is_dir() else []
    paths = (paths or sample_images())[:count]
    images = [Image.open(p).convert("RGB").resize((side, side)) for p in paths]
    return np.stack([np.asarray(i, np.float32) for i in images])


def deep_model(base: Callable[..., keras.Model], side: int, preset: str, **kw: Any) -> Any:
    inputs = keras.Input((side, side, 3))
    features = base(include_top=False, weights=None, input_shape=(side, side, 3), **kw)(inputs)
    x = L.GlobalAveragePooling2D()(features)
    model = keras.Model(inputs, L.Dense(1, activation="sigmoid", name="head")(x))
    x = _preprocessed(xrays(side), preset)
    norms = [layer for layer in _layers(model) if isinstance(layer, L.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)  # BatchNormalization statistics of real X-rays
    for layer in norms:
        layer.momentum = 0.99
    head = model.get_layer("head")
    feats = keras.Model(model.inputs, head.input)(x, training=False).numpy().astype(np.float64)
    direction = np.random.default_rng(7).normal(size=feats.shape[1])
    projection = feats @ direction
    k = 1.5 / max(float(projection.std()), 1e-12)
    head.set_weights(
        [
            (k * direction)[:, None].astype(np.float32),
            np.array([-k * projection.mean()], np.float32),
        ]
    )
    return model


def _preprocessed(x: np.ndarray, preset: str) -> np.ndarray:
    inside = {"efficientnet", "mobilenet-v3"}
    if preset in inside:
        return x
    if preset in {"vgg16", "resnet50"}:
        return apps.vgg16.preprocess_input(x.copy())
    if preset == "densenet":
        return apps.densenet.preprocess_input(x.copy())
    return x / 127.5 - 1.0


def _layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        out.extend(_layers(layer) if hasattr(layer, "layers") else [layer])
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("base", "side", "preset", "kw"), BASES, ids=[b[2] for b in BASES])
@NEEDS_FULLRES
def test_deep_bases_convert_with_default_flags(
    base: Callable[..., keras.Model], side: int, preset: str, kw: dict[str, Any], tmp_path: Path
) -> None:
    source = tmp_path / f"{preset}.keras"
    deep_model(base, side, preset, **kw).save(source)
    repo = tmp_path / "repo"
    code = main(["convert", str(source), "-o", str(repo), "--preset", preset, "--variants", "none"])
    assert code == 0
    parity = read_manifest(repo / "pneumonia" / "1").parity
    assert parity is not None and parity.fp32_noise is not None
    FIGURES[preset] = parity.to_dict()
    assert parity.max_abs_diff <= parity.tolerance <= 5e-4
    assert set(parity.fp32_noise) == {"onnxruntime_fusions", "keras_batch_1_vs_batch"}
