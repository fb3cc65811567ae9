from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.contract import Contract, InputSpec
from engine.errors import ImageError
from engine.runtime.decoders import open_image
from engine.runtime.limits import MAX_PIXELS
from engine.runtime.preprocess import reference_batch, reference_pixels

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
    from engine.runtime.preprocess import draft_scale

    assert draft_scale(size, (384, 384)) == scale
    img = Image.new("L", size).resize(size)
    decoded = open_image(encode(img, "JPEG"), lambda s: draft_scale(s, (384, 384)))
    assert decoded.size == tuple(-(-s // scale) for s in size)  # what libjpeg really does
