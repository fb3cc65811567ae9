"""The reference preprocessing gives the tensors the user's own code gives, on real X-rays:
keras.utils.load_img, keras.applications' preprocess_input, Teachable Machine's snippet and
keras.utils.image_dataset_from_directory, each run here as users run it (TensorFlow, Keras and
PIL in the test; none of them in the engine)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image, ImageOps

from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.presets import PRESETS, pipeline_fields
from pneumo_onnx.engine.runtime.preprocess import fast_pixels, reference_pixels
from pneumo_onnx.engine.runtime.samples import sample_images


@pytest.fixture(scope="module")
def xrays(real_images: list[Path]) -> list[Path]:
    """A spread of real X-rays (portrait and landscape, 400-2900 px) and the samples (two are
    RGB JPEGs)."""
    spread = real_images[:: max(1, len(real_images) // 10)]
    return sorted(set(spread) | set(sample_images()))


def ours(path: Path, h: int, w: int, **fields: Any) -> np.ndarray:
    return reference_pixels(path, Contract(input=InputSpec(height=h, width=w, **fields)))


@pytest.mark.parametrize(
    ("size", "interpolation", "keep_aspect_ratio"),
    [
        ((96, 96), "nearest", False),  # load_img's default, ImageDataGenerator's too
        ((64, 80), "bicubic", False),
        ((64, 64), "bilinear", False),
        ((96, 96), "nearest", True),
        ((72, 64), "lanczos", True),
        ((64, 64), "box", False),
        ((64, 64), "hamming", True),
    ],
)
def test_keras_load_img(
    xrays: list[Path], size: tuple[int, int], interpolation: str, keep_aspect_ratio: bool
) -> None:
    mode = "center-crop" if keep_aspect_ratio else "stretch"
    for path in xrays:
        img = keras.utils.load_img(
            path, target_size=size, interpolation=interpolation, keep_aspect_ratio=keep_aspect_ratio
        )
        theirs = keras.utils.img_to_array(img)
        mine = ours(path, *size, resize_filter=interpolation, resize_mode=mode, scaling="raw")
        np.testing.assert_array_equal(mine, theirs, err_msg=path.name)


def test_keras_load_img_grayscale(xrays: list[Path]) -> None:
    for path in xrays:
        img = keras.utils.load_img(path, color_mode="grayscale", target_size=(64, 64))
        mine = ours(path, 64, 64, channels=1, resize_filter="nearest", scaling="raw")
        np.testing.assert_array_equal(mine, keras.utils.img_to_array(img), err_msg=path.name)


@pytest.mark.parametrize(
    ("preset", "module"),
    [
        ("vgg16", keras.applications.vgg16),
        ("resnet50", keras.applications.resnet50),
        ("densenet", keras.applications.densenet),
        ("mobilenet-v2", keras.applications.mobilenet_v2),
        ("inception-v3", keras.applications.inception_v3),
        ("efficientnet", keras.applications.efficientnet),
    ],
)
def test_preprocess_input(xrays: list[Path], preset: str, module: Any) -> None:
    """load_img (nearest) then the module's preprocess_input, as the keras.applications docs
    show it, against the preset."""
    fields = pipeline_fields([preset], {"resize_filter": "nearest"})
    worst = 0.0
    for path in xrays:
        x = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(64, 64)))
        theirs = module.preprocess_input(x[None])[0]
        worst = max(worst, float(np.max(np.abs(ours(path, 64, 64, **fields) - theirs))))
    print(f"{preset}: max abs diff {worst:.2e}")
    assert worst <= 2e-5  # float32 rounding: caffe values reach 150, torch divides twice


@pytest.mark.parametrize(("loader", "to_rgb"), [("opencv", False), ("opencv-rgb", True)])
def test_opencv_then_caffe_preprocess_input(
    tmp_path: Path, xrays: list[Path], loader: str, to_rgb: bool
) -> None:
    """cv2.imread (BGR), optionally cvtColor to RGB, cv2.resize, then vgg16's preprocess_input,
    which flips whatever order it is handed: --preset LOADER --preset vgg16 gives the same
    tensor. Tinted colour JPEGs, so that a wrong channel order shows."""
    cv2 = pytest.importorskip("cv2")
    worst = 0.0
    for i, path in enumerate(xrays[:6]):
        grey = Image.open(path).convert("L")
        tinted = Image.merge(
            "RGB", (grey, grey.point(lambda v: v * 3 // 4), grey.point(lambda v: v // 2))
        )
        colour = tmp_path / f"tinted{i}.jpeg"
        tinted.save(colour, quality=95)
        img = cv2.imread(str(colour))
        if to_rgb:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        img = cv2.resize(img, (64, 64))
        theirs = keras.applications.vgg16.preprocess_input(img.astype(np.float32)[None])[0]
        mine = ours(colour, 64, 64, **pipeline_fields([loader, "vgg16"], {}))
        worst = max(worst, float(np.max(np.abs(mine - theirs))))
    assert worst <= 2e-5, worst


def test_teachable_machine_snippet(xrays: list[Path]) -> None:
    """The code Teachable Machine gives with its Keras export, verbatim but for the path."""
    worst = 0.0
    for path in xrays:
        image = Image.open(path).convert("RGB")
        image = ImageOps.fit(image, (224, 224), Image.Resampling.LANCZOS)
        normalized = (np.asarray(image).astype(np.float32) / 127.5) - 1
        mine = ours(path, 224, 224, **PRESETS["teachable-machine"].fields)
        worst = max(worst, float(np.max(np.abs(mine - normalized))))
    assert worst <= 1e-6, worst


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        ({}, {"resize_filter": "tf-bilinear"}),
        ({"interpolation": "nearest"}, {"resize_filter": "tf-nearest"}),
        (
            {"crop_to_aspect_ratio": True},
            {"resize_filter": "tf-bilinear", "resize_mode": "center-crop"},
        ),
        ({"pad_to_aspect_ratio": True}, {"resize_filter": "tf-bilinear", "resize_mode": "pad"}),
        ({"color_mode": "grayscale"}, {"resize_filter": "tf-bilinear", "channels": 1}),
    ],
    ids=["bilinear", "nearest", "crop", "pad", "grayscale"],
)
def test_image_dataset_from_directory(
    xrays: list[Path], tmp_path: Path, options: dict[str, Any], fields: dict[str, Any]
) -> None:
    """TensorFlow's decoding (its JPEG IDCT) and tf.image.resize without antialiasing, both
    reproduced in numpy: the same tensors, and the fast path gives them too."""
    for path in xrays:
        shutil.copy(path, tmp_path / f"{path.parent.name}-{path.name}")
    ds = keras.utils.image_dataset_from_directory(
        tmp_path, labels=None, image_size=(72, 88), shuffle=False, batch_size=64, **options
    )
    theirs = np.concatenate([batch.numpy() for batch in ds])
    worst = 0.0
    for x, name in zip(theirs, ds.file_paths, strict=True):
        c = Contract(input=InputSpec(height=72, width=88, scaling="raw", **fields))
        mine = reference_pixels(name, c)
        np.testing.assert_array_equal(fast_pixels(name, c), mine)
        worst = max(worst, float(np.max(np.abs(mine - x))))
    print(f"image_dataset_from_directory {options}: max abs diff {worst:.2e}")
    assert worst <= 1e-4
