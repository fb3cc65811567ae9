"""OpenCV's pipeline, reimplemented without OpenCV: `cv2-*` resize filters against cv2.resize
itself (opencv-python-headless, a dev-only dependency: the engine never imports cv2), and the
engine's reference path against cv2.imread + cv2.resize on real X-rays and crafted files.

Every comparison is bit-exact; the only residual differences, for inputs X-rays rarely are,
are stated in `test_residual_differences_from_cv2_imread`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.errors import ContractError
from pneumo_onnx.engine.runtime.preprocess import fast_pixels, reference_pixels
from pneumo_onnx.engine.runtime.resize import cv2_resize

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the 'dev' extra) is missing")

INTERPOLATION = {
    "cv2-linear": cv2.INTER_LINEAR,
    "cv2-area": cv2.INTER_AREA,
    "cv2-nearest": cv2.INTER_NEAREST,
}
# (source h, w) -> (output h, w): down and up, whole factors (2x is INTER_AREA's block mean
# even for INTER_LINEAR), fractional ones, one axis each way, thin images, the same size.
SIZES = [
    ((100, 120), (37, 53)),
    ((999, 777), (224, 224)),
    ((2048, 1536), (128, 128)),
    ((256, 256), (128, 128)),
    ((240, 300), (80, 100)),
    ((243, 250), (81, 125)),
    ((50, 60), (128, 128)),
    ((64, 64), (24, 200)),
    ((7, 300), (32, 32)),
    ((1, 1), (8, 8)),
    ((3, 5), (3, 5)),
    ((301, 199), (150, 99)),
]


@pytest.mark.parametrize("method", INTERPOLATION)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("source", "out"), SIZES, ids=[f"{s}->{o}" for s, o in SIZES])
def test_cv2_filters_equal_cv2_resize(
    method: str, channels: int, source: tuple[int, int], out: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(source) + sum(out) + channels)
    shape = source if channels == 1 else (*source, 3)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    theirs = cv2.resize(a, (out[1], out[0]), interpolation=INTERPOLATION[method])
    np.testing.assert_array_equal(cv2_resize(a, out[0], out[1], method), theirs)


@pytest.mark.parametrize("method", INTERPOLATION)
def test_cv2_filters_equal_cv2_resize_on_random_sizes(method: str) -> None:
    """Random sizes, up, down and mixed, 1 and 3 channels: not one pixel differs."""
    rng = np.random.default_rng(7)
    for _ in range(60):
        h, w, out_h, out_w = (int(v) for v in rng.integers(1, 400, 4))
        shape = (h, w) if rng.random() < 0.5 else (h, w, 3)
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        theirs = cv2.resize(a, (out_w, out_h), interpolation=INTERPOLATION[method])
        ours = cv2_resize(a, out_h, out_w, method)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{shape} -> {(out_h, out_w)}")


def _theirs(path: str | Path, color: str, method: str, size: tuple[int, int]) -> np.ndarray:
    """The author's own OpenCV code, then x / 255."""
    flag = cv2.IMREAD_GRAYSCALE if color == "grayscale" else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag)
    if color == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (size[1], size[0]), interpolation=INTERPOLATION[method])
    x = img.astype(np.float32) / np.float32(255)
    return x[:, :, None] if x.ndim == 2 else x


@pytest.mark.parametrize("method", INTERPOLATION)
@pytest.mark.parametrize("color", ["bgr", "rgb", "grayscale"])
def test_reference_path_equals_cv2_imread_and_resize(
    samples: list[Path], color: str, method: str
) -> None:
    """Real X-rays (grayscale JPEGs; one sample is a colour JPEG), decoded as cv2.imread does:
    libjpeg's accurate IDCT, its own grayscale for IMREAD_GRAYSCALE. The fast path is the same
    pipeline, pixel for pixel."""
    channels = 1 if color == "grayscale" else 3
    spec = InputSpec(height=96, width=112, channels=channels, color=color, resize_filter=method)
    c = Contract(input=spec)
    for path in samples:
        ours = reference_pixels(path, c)
        np.testing.assert_allclose(ours, _theirs(path, color, method, (96, 112)), atol=1e-7)
        np.testing.assert_array_equal(fast_pixels(path, c), ours)


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _colour(h: int = 150, w: int = 200) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 1.3) % 256, (yy * 1.7) % 256, ((xx + yy) * 0.9) % 256], -1)
    noise = np.random.default_rng(3).integers(-25, 25, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def _rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees: cv2.imread turns it, as the engine does
    return exif.tobytes()


CRAFTED = {
    "jpeg-4:2:0": lambda: _encode(Image.fromarray(_colour()), "JPEG", quality=90),
    "jpeg-4:4:4": lambda: _encode(Image.fromarray(_colour()), "JPEG", subsampling=0),
    "jpeg-progressive": lambda: _encode(Image.fromarray(_colour()), "JPEG", progressive=True),
    "jpeg-exif-rotated": lambda: _encode(Image.fromarray(_colour()), "JPEG", exif=_rotated()),
    "gray-jpeg-exif-rotated": lambda: _encode(
        Image.fromarray(_colour()[:, :, 1]), "JPEG", exif=_rotated()
    ),
    "png-rgb": lambda: _encode(Image.fromarray(_colour()), "PNG"),
    "png-gray": lambda: _encode(Image.fromarray(_colour()[:, :, 0]), "PNG"),
}


# Every crafted file in both colours but a colour PNG read as grayscale, a residual
# difference that test_residual_differences_from_cv2_imread bounds.
DECODING_CASES = [
    (name, color)
    for name in CRAFTED
    for color in ("bgr", "grayscale")
    if (name, color) != ("png-rgb", "grayscale")
]


@pytest.mark.parametrize(("name", "color"), DECODING_CASES)
def test_decoding_equals_cv2_imread(tmp_path: Path, name: str, color: str) -> None:
    """Colour JPEGs (subsampled or not, progressive), EXIF orientation (applied by
    cv2.imread for IMREAD_COLOR and IMREAD_GRAYSCALE), PNGs: the same pixels as OpenCV's."""
    path = tmp_path / f"{name}.img"
    path.write_bytes(CRAFTED[name]())
    channels = 1 if color == "grayscale" else 3
    spec = InputSpec(height=60, width=70, channels=channels, color=color, resize_filter="cv2-area")
    ours = reference_pixels(path, Contract(input=spec))
    np.testing.assert_allclose(ours, _theirs(path, color, "cv2-area", (60, 70)), atol=1e-7)


def test_residual_differences_from_cv2_imread(tmp_path: Path) -> None:
    """What the engine does not reproduce of cv2.imread, all off the X-ray path: a colour PNG
    read as grayscale (OpenCV's BGR->gray coefficients, not Pillow's luma: within 2 levels), a
    16-bit PNG (OpenCV keeps the high byte, the engine maps the full range: within 2 levels),
    and alpha (cv2.imread drops it, the engine composites on black: any difference)."""
    cases = {
        "png-rgb": (Image.fromarray(_colour()), "grayscale", 2),
        "png-16-bit": (
            Image.fromarray((np.mgrid[0:150, 0:200][1] * 300).astype(np.uint16)),
            "bgr",
            2,
        ),
    }
    for name, (img, color, bound) in cases.items():
        path = tmp_path / f"{name}.png"
        img.save(path)
        channels = 1 if color == "grayscale" else 3
        spec = InputSpec(channels=channels, color=color, resize_filter="cv2-linear")
        ours = reference_pixels(path, Contract(input=spec))
        diff = np.abs(ours - _theirs(path, color, "cv2-linear", (128, 128))) * 255
        assert 0 < diff.max() <= bound + 1e-3, (name, diff.max())


@pytest.mark.parametrize("mode", ["center-crop", "fit", "pad"])
def test_cv2_filters_only_stretch(mode: str) -> None:
    with pytest.raises(ContractError) as e:
        Contract(input=InputSpec(resize_filter="cv2-area", resize_mode=mode))
    assert (
        f"resize filter 'cv2-area' is cv2.resize(img, (width, height)), which stretches: it "
        f"takes resize mode 'stretch', not {mode!r}"
    ) in str(e.value)
