"""Bytes to pixels: read any image source, recognise its format by its magic bytes, decode it.

One table (`FORMATS`) says what we decode: JPEG, PNG, BMP, TIFF (Pillow, restricted to that
format, so no other Pillow plugin ever parses untrusted bytes) and DICOM (pydicom, the `dicom`
extra). Anything else is refused before any decoder sees it. Every decoded image passes the
pixel budget of `limits`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pneumo_onnx.engine.errors import ImageError
from pneumo_onnx.engine.runtime.dicom import dicom_header, dicom_image
from pneumo_onnx.engine.runtime.limits import (
    check_decode_bytes,
    check_size,
    decode_bytes,
    dicom_decode_bytes,
)
from pneumo_onnx.engine.runtime.structure import check_tiff

# For JPEGs: the DCT-domain reduction (1, 2, 4 or 8) libjpeg may use for an image of this size.
Reduction = Callable[[tuple[int, int]], int]


@dataclass(frozen=True)
class Format:
    name: str  # Pillow's format name, or DICOM
    magics: tuple[bytes, ...]
    offset: int = 0  # where the magic bytes sit

    def matches(self, data: bytes) -> bool:
        head = data[self.offset : self.offset + max(len(m) for m in self.magics)]
        return any(head.startswith(m) for m in self.magics)


FORMATS = (
    Format("JPEG", (b"\xff\xd8\xff",)),
    Format("PNG", (b"\x89PNG\r\n\x1a\n",)),
    Format("BMP", (b"BM",)),
    Format("TIFF", (b"II*\x00", b"MM\x00*")),
    Format("DICOM", (b"DICM",), offset=128),
)
EXPECTED = "JPEG, PNG, BMP, TIFF or DICOM"


def describe(source: object) -> str:
    """A short name for a source in error messages: a path's name, never a full internal path."""
    if isinstance(source, str | os.PathLike):
        return Path(source).name
    if isinstance(source, bytes | bytearray):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.size[0]}x{source.size[1]} {source.mode}>"
    name = getattr(source, "name", None)  # open files, and BytesIO given a name by the caller
    if isinstance(name, str) and name:
        return Path(name).name
    return f"<{type(source).__name__}>"


def client_name(name: str) -> str:
    """What error messages call a file a client named `name`: its last part, shortened."""
    return name.replace("\\", "/").rsplit("/", 1)[-1][:80] or "upload"


def named_bytes(data: bytes, name: str) -> io.BytesIO:
    """`data` as a file object that error messages call `client_name(name)`."""
    stream = io.BytesIO(data)
    stream.name = client_name(name)
    return stream


def format_of(data: bytes, name: str) -> Format | None:
    """The format whose magic bytes `data` starts with (a `.dcm` file without the DICOM
    preamble counts as DICOM), or None."""
    found = next((f for f in FORMATS if f.matches(data)), None)
    if found is None and name.lower().endswith(".dcm"):
        return FORMATS[-1]
    return found


@dataclass(frozen=True)
class Header:
    """What a server budgets before decoding an image, read from its header alone."""

    format: str
    pixels: int  # decoded pixels (DICOM: frames x rows x columns x samples)
    decode_bytes: int  # expected peak memory of decoding and preprocessing it


def read_header(data: bytes, name: str) -> Header:
    """The format, pixel count and decode memory of an encoded image, from its header only
    (Pillow's `open` and pydicom without pixel data read no pixels). Raises ImageError, with
    the same messages as `open_image`, for anything `open_image` would refuse up front: an
    unknown format, too many pixels, or a decode needing more than the memory limit."""
    return inspect(data, name).header


class Opened:
    """An image whose header is parsed (`inspect`) and whose pixels are not read yet: decoding
    it (`open_image`) does not parse the header again. Decode it once."""

    def __init__(self, data: bytes, name: str, header: Header, image: Image.Image | None):
        self.data = data
        self.name = name
        self.header = header
        self.image = image  # Pillow's, opened lazily; None for DICOM (pydicom reads it again)


ImageSource = (
    str | os.PathLike[str] | bytes | bytearray | BinaryIO | Image.Image | np.ndarray | Opened
)


def inspect(data: bytes, name: str) -> Opened:
    """`data` opened as far as its header: the Header a server budgets, and the image ready to
    decode. Raises ImageError as `read_header` does."""
    fmt = _recognised(data, name)
    if fmt.name == "DICOM":
        h = dicom_header(data, name)
        needed = dicom_decode_bytes(h.rows * h.columns, h.samples, h.bytes_per_sample, h.codec)
        what = f"{h.columns}x{h.rows} px, {h.samples} x {8 * h.bytes_per_sample} bit"
        check_decode_bytes(needed, what, name)
        return Opened(data, name, Header(fmt.name, h.values, needed), None)
    if fmt.name == "TIFF":
        check_tiff(data, name)
    with _pillow_errors(name, fmt.name):
        img = Image.open(io.BytesIO(data), formats=[fmt.name])
        check_size(img.size, name)
        size, mode = img.size, img.mode
        alpha = "A" in mode or (mode in ("P", "L", "RGB") and "transparency" in img.info)
    pixels = size[0] * size[1]
    needed = decode_bytes(pixels, mode, alpha=alpha)
    check_decode_bytes(needed, f"{size[0]}x{size[1]} px {mode}", name)
    return Opened(data, name, Header(fmt.name, pixels, needed), img)


def _recognised(data: bytes, name: str) -> Format:
    """The format of `data`, or the ImageError that says why it is none we decode."""
    if not data:
        raise ImageError(f"expected an image file, got 0 bytes from {name}")
    fmt = format_of(data, name)
    if fmt is None:
        raise ImageError(
            f"{name} is not a supported image (expected {EXPECTED}; "
            f"{len(data)} bytes starting {data[:8]!r})"
        )
    return fmt


def open_image(
    source: ImageSource,
    reduce: Reduction | None = None,
    gray: bool = False,
    tf_decoding: bool = False,
) -> Image.Image:
    """Decode any supported source to a fully loaded, upright PIL image (any mode).

    `reduce`: for JPEGs, the DCT-domain scale libjpeg may decode at (the fast path and
    thumbnails); `gray` also skips colour decoding: libjpeg's own grayscale (its luma channel,
    as cv2.imread(path, IMREAD_GRAYSCALE) and decode_image(channels=1) give it) for a JPEG
    decoded without `reduce`. `tf_decoding`: JPEGs decoded as
    `tf.io.decode_image` does (libjpeg's fast integer IDCT, not Pillow's accurate one), for
    models trained on TensorFlow's input pipeline. Raises ImageError with a specific message
    for every kind of bad input.
    """
    if isinstance(source, Image.Image):
        return _checked(ImageOps.exif_transpose(source), describe(source))
    if isinstance(source, np.ndarray):
        return _from_array(source)
    name = describe(source)
    if isinstance(source, Opened):
        if source.image is None:
            return _checked(dicom_image(source.data, name), name)
        fmt, opened = source.header.format, source.image
        source.image = None  # a Pillow image loads once
        with _pillow_errors(name, fmt):
            return _loaded(opened, name, reduce, gray, tf_decoding)
    data = read_bytes(source, name)
    fmt = _recognised(data, name).name
    if fmt == "DICOM":
        return _checked(dicom_image(data, name), name)
    with _pillow_errors(name, fmt):
        return _loaded(Image.open(io.BytesIO(data), formats=[fmt]), name, reduce, gray, tf_decoding)


@contextmanager
def _pillow_errors(name: str, fmt: str) -> Iterator[None]:
    """Pillow's exceptions, as the ImageError a user reads."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name} is too large to decode safely: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name} starts like a {fmt} file but is not a readable one") from e
    except OSError as e:
        if "out of memory" in str(e):  # a codec's failed allocation, as Pillow reports it
            raise MemoryError(f"decoding {name}") from e
        raise ImageError(f"{name} is truncated or corrupt: {e}") from e
    except (SyntaxError, ValueError) as e:
        raise ImageError(f"{name} is truncated or corrupt: {e}") from e


def _loaded(
    img: Image.Image, name: str, reduce: Reduction | None, gray: bool, tf_decoding: bool
) -> Image.Image:
    """An opened Pillow image decoded (within `_pillow_errors`), upright."""
    check_size(img.size, name)
    scale = reduce(img.size) if reduce is not None and img.format == "JPEG" else 1
    if gray and reduce is None and img.format == "JPEG":
        img.draft("L", None)  # libjpeg's own grayscale output, its accurate IDCT
    if tf_decoding and img.format == "JPEG":
        # Pillow's JPEG decoder config is (scale, draft); its draft flag selects libjpeg's
        # fast integer IDCT (JDCT_IFAST), the IDCT tf.io.decode_image uses by default. The
        # pixels equal TensorFlow's on every X-ray tested (parity_tests/test_pipelines.py).
        if isinstance(img, ImageFile.ImageFile):
            img.decoderconfig = (1, 1)
    elif scale > 1:
        target = (img.size[0] // scale, img.size[1] // scale)  # Pillow then picks `scale`
        img.draft("L" if gray or img.mode == "L" else "RGB", target)
    img.load()
    ImageOps.exif_transpose(img, in_place=True)  # not in place, it copies even upright images
    return _checked(img, name)


def read_once(source: ImageSource) -> bytes | Image.Image | np.ndarray:
    """A path or file object read into bytes, so it can be decoded twice (a heatmap needs the
    model tensor and a display image); images and arrays are returned as they are."""
    if isinstance(source, Image.Image | np.ndarray):
        return source
    return read_bytes(source, describe(source))


def read_bytes(source: ImageSource, name: str) -> bytes:
    """The bytes of a path, bytes-like or file object (ImageError naming `name` otherwise)."""
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if isinstance(source, Opened):
        return source.data
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            return path.read_bytes()
        except IsADirectoryError as e:
            raise ImageError(f"{name} is a directory, not an image file") from e
        except FileNotFoundError as e:
            raise ImageError(f"{name}: no such file") from e
        except OSError as e:
            raise ImageError(f"cannot read {name}: {e.strerror or e}") from e
    read = getattr(source, "read", None)
    if read is None:
        raise ImageError(
            f"expected a path, bytes, a file object, a PIL image or a numpy array, got {name}"
        )
    try:
        data = read()
    except OSError as e:
        raise ImageError(f"cannot read {name}: {e}") from e
    if not isinstance(data, bytes | bytearray):
        raise ImageError(f"file object {name} returned {type(data).__name__}, expected bytes")
    return bytes(data)


def _checked(img: Image.Image, name: str) -> Image.Image:
    check_size(img.size, name)
    return img


def _from_array(arr: np.ndarray) -> Image.Image:
    name = describe(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 array, got {name}")
    if arr.dtype == np.uint8:
        pixels = arr
    elif arr.dtype == np.uint16:
        pixels = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif arr.dtype in (np.float32, np.float64):
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageError(f"float image arrays must hold finite values in [0, 1], got {name}")
        pixels = np.rint(arr * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"image arrays must be uint8, uint16 or float in [0, 1], got {name}")
    check_size((pixels.shape[1], pixels.shape[0]), name)
    return Image.fromarray(np.ascontiguousarray(pixels))
