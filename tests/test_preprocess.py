from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.errors import ImageError
from pneumo_onnx.engine.runtime.decoders import open_image
from pneumo_onnx.engine.runtime.limits import MAX_PIXELS
from pneumo_onnx.engine.runtime.preprocess import reference_batch, reference_pixels

CONTRACT = Contract(input=InputSpec(height=32, width=24))


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_reference_on_real_samples(samples: list[Path]) -> None:
    x = reference_batch(samples, Contract())
    assert x.shape == (6, 128, 128, 3) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0.1
    # Grayscale X-rays: the three channels are identical.
    assert np.array_equal(x[..., 0], x[..., 2])


@pytest.mark.parametrize(
    ("scaling", "low", "high"), [("unit", 0, 1), ("raw", 0, 255), ("symmetric", -1, 1)]
)
def test_scalings(gradient: np.ndarray, scaling: str, low: float, high: float) -> None:
    c = Contract(input=InputSpec(height=64, width=48, scaling=scaling, resize_filter="nearest"))
    x = reference_pixels(gradient, c)
    assert x.min() == pytest.approx(low) and x.max() == pytest.approx(high)


def test_nchw_and_grayscale_layouts(gradient: np.ndarray) -> None:
    c = Contract(input=InputSpec(height=16, width=16, channels=1, layout="NCHW"))
    assert reference_pixels(gradient, c).shape == (1, 16, 16)


def test_same_pixels_from_every_source_type(samples: list[Path]) -> None:
    path = samples[3]
    data = path.read_bytes()
    expected = reference_pixels(path, CONTRACT)
    for source in (str(path), data, io.BytesIO(data), Image.open(path)):
        assert np.array_equal(reference_pixels(source, CONTRACT), expected)


def test_sixteen_bit_png_uses_the_full_range() -> None:
    a = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    img = Image.fromarray(a)
    png = encode(img, "PNG")
    x = reference_pixels(
        png, Contract(input=InputSpec(height=64, width=64, resize_filter="nearest"))
    )
    assert x.max() == pytest.approx(1.0) and x[0, 32, 0] == pytest.approx(0.51, abs=0.01)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("L", (80, 40), 0)
    img.paste(255, (0, 0, 40, 40))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    upright = open_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert upright.size == (40, 80)
    top = np.asarray(upright)[:40].mean()
    assert top > 200  # the white half is now on top


# Every mode each format can hold (Pillow writes no CMYK PNG/BMP, no alpha or palette JPEG).
FORMAT_MODES = [
    (fmt, mode)
    for fmt, modes in {
        "PNG": ["L", "RGB", "RGBA", "P", "LA"],
        "BMP": ["L", "RGB", "RGBA", "P"],
        "TIFF": ["L", "RGB", "RGBA", "P", "CMYK", "LA"],
        "JPEG": ["L", "RGB", "CMYK"],
    }.items()
    for mode in modes
]


@pytest.mark.parametrize(("fmt", "mode"), FORMAT_MODES, ids=[f"{f}-{m}" for f, m in FORMAT_MODES])
def test_formats_and_modes(fmt: str, mode: str) -> None:
    rgb = Image.new("RGB", (64, 64), (120, 120, 120))
    img = rgb.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else rgb.convert(mode)
    x = reference_pixels(encode(img, fmt), CONTRACT)
    assert x.shape == (32, 24, 3)
    assert np.allclose(x, 120 / 255, atol=3 / 255), (fmt, mode, x.min(), x.max())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: b"", "expected an image file, got 0 bytes"),
        (lambda tmp: b"hello, this is text" * 10, "is not a supported image"),
        (lambda tmp: encode(Image.new("L", (600, 600), 90), "JPEG")[:300], "truncated or corrupt"),
        (lambda tmp: encode(Image.new("L", (20, 600)), "PNG"), "expected at least 32 px"),
        (lambda tmp: str(tmp / "missing.jpeg"), "missing.jpeg: no such file"),
        (lambda tmp: str(tmp), "is a directory"),
        (lambda tmp: np.zeros((64, 64, 2), np.uint8), "expected an HxW"),
        (lambda tmp: np.zeros((64, 64), np.int32), "must be uint8, uint16 or float"),
        (lambda tmp: np.full((64, 64), 2.0), "finite values in"),
        (lambda tmp: 12345, "expected a path, bytes"),
    ],
    ids=[
        "zero-bytes",
        "text",
        "truncated",
        "tiny",
        "missing",
        "directory",
        "two-channels",
        "int32",
        "float-range",
        "int",
    ],
)
def test_bad_inputs_raise_specific_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        reference_pixels(make(tmp_path), CONTRACT)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    side = int(MAX_PIXELS**0.5) + 100
    # A PNG header claiming side x side pixels: refused from the header alone, nothing decoded.
    bomb = encode(Image.new("1", (side, side)), "PNG")
    with pytest.raises(ImageError, match=r"decompression bomb guard|too large to decode"):
        open_image(bomb)


@pytest.mark.parametrize(
    ("size", "scale"),
    [((2992, 2000), 4), ((3500, 3300), 8), ((1400, 1300), 2), ((1306, 1047), 1), ((300, 300), 1)],
    ids=["quarter", "eighth", "half", "half too small", "smaller"],
)
def test_draft_scale_matches_pillows_choice(size: tuple[int, int], scale: int) -> None:
    from pneumo_onnx.engine.runtime.preprocess import draft_scale

    assert draft_scale(size, (384, 384)) == scale
    img = Image.new("L", size).resize(size)
    decoded = open_image(encode(img, "JPEG"), lambda s: draft_scale(s, (384, 384)))
    assert decoded.size == tuple(-(-s // scale) for s in size)  # what libjpeg really does


# --- the whole pipeline: colour, resize mode, scaling, as the user's own code computes them ---

COLOURFUL = np.stack(
    [
        np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1)),  # red: left to right
        np.full((48, 64), 50, np.uint8),  # green: flat
        np.tile(np.arange(48, dtype=np.uint8)[:, None] * 5, (1, 64)),  # blue: top to bottom
    ],
    axis=2,
)


def user_scaling(x: np.ndarray, scaling: str) -> np.ndarray:
    """The user's own arithmetic on float32 RGB pixels 0-255 (keras.applications'
    preprocess_input modes, Teachable Machine, rescale=1/255), channels last."""
    x = x.astype(np.float32)
    if scaling == "unit":
        return x * np.float32(1 / 255)
    if scaling == "symmetric":
        return x / 127.5 - 1.0
    if scaling == "caffe":
        x = x[..., ::-1].copy()
        x[..., 0] -= 103.939
        x[..., 1] -= 116.779
        x[..., 2] -= 123.68
        return x
    if scaling == "torch":
        x /= 255.0
        return (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
            [0.229, 0.224, 0.225], np.float32
        )
    return x  # raw


@pytest.mark.parametrize("scaling", ["unit", "raw", "symmetric", "caffe", "torch"])
def test_scalings_compute_as_the_users_code(scaling: str) -> None:
    spec = InputSpec(height=48, width=64, scaling=scaling, resize_filter="nearest")
    if scaling == "caffe":
        spec = InputSpec(height=48, width=64, scaling="caffe", color="bgr", resize_filter="box")
    x = reference_pixels(COLOURFUL, Contract(input=spec))
    np.testing.assert_allclose(x, user_scaling(COLOURFUL, scaling), rtol=0, atol=2e-6)


def test_custom_mean_and_std_per_channel_and_bgr_order() -> None:
    spec = InputSpec(
        height=48, width=64, scaling="custom", mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0)
    )
    x = reference_pixels(COLOURFUL, Contract(input=spec))
    expected = (COLOURFUL / 255.0 - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)
    bgr = reference_pixels(COLOURFUL, Contract(input=InputSpec(height=48, width=64, color="bgr")))
    np.testing.assert_array_equal(bgr, (COLOURFUL[..., ::-1] * np.float32(1 / 255)))


def test_grayscale_colour_is_pils_luma_repeated() -> None:
    spec = InputSpec(height=48, width=64, color="grayscale", resize_filter="nearest")
    x = reference_pixels(COLOURFUL, Contract(input=spec))
    luma = np.asarray(Image.fromarray(COLOURFUL).convert("L"), np.float32) * np.float32(1 / 255)
    assert x.shape == (48, 64, 3)
    np.testing.assert_array_equal(x, np.repeat(luma[:, :, None], 3, axis=2))


@pytest.mark.parametrize("size", [(64, 64), (40, 72)], ids=["square", "wide"])
def test_fit_and_pad_are_pils_imageops(samples: list[Path], size: tuple[int, int]) -> None:
    """Teachable Machine's ImageOps.fit(LANCZOS) and ImageOps.pad, on real X-rays of several
    aspect ratios (portrait, landscape, 2.4:1)."""
    w, h = size
    for path in samples:
        img = Image.open(path).convert("RGB")
        for mode, theirs in (
            ("fit", ImageOps.fit(img, (w, h), Image.Resampling.LANCZOS)),
            ("pad", ImageOps.pad(img, (w, h), Image.Resampling.LANCZOS)),
        ):
            spec = InputSpec(height=h, width=w, resize_filter="lanczos", resize_mode=mode)
            x = reference_pixels(path, Contract(input=spec, threshold=0.5))
            expected = np.asarray(theirs, np.float32) * np.float32(1 / 255)
            np.testing.assert_array_equal(x, expected, err_msg=f"{mode} {path.name}")


MODES = ["stretch", "center-crop", "fit", "pad"]


@pytest.mark.parametrize(
    "filt", ["nearest", "tf-bilinear", "tf-nearest", "cv2-linear", "cv2-area", "cv2-nearest"]
)
def test_fast_path_is_exact_for_single_pixel_filters(samples: list[Path], filt: str) -> None:
    """nearest, TensorFlow's and OpenCV's filters sample single pixels (or, INTER_AREA, must
    give cv2.resize's very pixels): no reduced-scale shortcut is faithful, so their fast path is
    the reference pipeline, pixel for pixel."""
    from pneumo_onnx.engine.runtime.preprocess import fast_pixels

    for mode in MODES:
        if (mode == "fit" and filt.startswith("tf-")) or (
            mode != "stretch" and filt.startswith("cv2-")
        ):
            continue
        c = Contract(input=InputSpec(height=40, width=56, resize_filter=filt, resize_mode=mode))
        for path in samples:
            np.testing.assert_array_equal(fast_pixels(path, c), reference_pixels(path, c))


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_keeps_the_geometry_of_every_mode(mode: str) -> None:
    """A large JPEG decoded at 1/8 scale, EXIF-rotated: the crop or pad box of the full-size
    image, so the fast tensor stays close to the reference one."""
    from pneumo_onnx.engine.runtime.preprocess import fast_pixels

    yy, xx = np.mgrid[0:1800, 0:3000]
    wide = ((np.sin(xx / 97.0) + np.cos(yy / 61.0)) * 60 + 128).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 1800 wide, 3000 high
    data = encode(Image.fromarray(wide), "JPEG", quality=95, exif=exif.tobytes())
    c = Contract(input=InputSpec(height=48, width=40, resize_mode=mode))
    fast, reference = fast_pixels(data, c), reference_pixels(data, c)
    assert fast.shape == reference.shape == (48, 40, 3)
    assert np.abs(fast - reference).max() < 0.05, np.abs(fast - reference).max()


def test_tensorflow_decoding_uses_the_fast_idct_on_jpegs_only(samples: list[Path]) -> None:
    """tf-* filters decode JPEGs as tf.io.decode_image does (libjpeg's fast integer IDCT:
    pixels mostly within a level or two of Pillow's accurate IDCT); other formats decode alike.
    Equality with TensorFlow itself: parity_tests/test_pipelines.py."""
    jpeg = samples[0].read_bytes()
    pillow, tf_style = open_image(jpeg), open_image(jpeg, tf_decoding=True)
    assert pillow.size == tf_style.size
    d = np.abs(np.asarray(pillow, np.int16) - np.asarray(tf_style, np.int16))
    assert d.max() > 0 and d.mean() < 1
    png = encode(pillow, "PNG")
    np.testing.assert_array_equal(np.asarray(open_image(png)), open_image(png, tf_decoding=True))
