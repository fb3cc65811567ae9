"""Image decoding and the two preprocessing paths, `reference` and `fast`.

`reference` is exactly what the Keras model was trained with: full decode, EXIF orientation,
8-bit grayscale or RGB, resize to the contract's size with the contract's filter, scale. It is
the ground truth for parity; the training script, the parity tests and the conversion stage's
probes all call it, so there is one implementation of decode/resize/scale.

`fast` (the engine's default) produces the same layout from a JPEG decoded at reduced scale;
its distance from `reference` is measured on real X-rays and guarded by a parity test.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.contract import SCALINGS, Contract
from engine.errors import ImageError

ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image | np.ndarray

MAX_PIXELS = 80_000_000  # decompression-bomb cap: the largest real X-rays are ~ 4k x 5k
MIN_SIDE = 32  # smaller than this is not a radiograph
# The fast path lets libjpeg decode at 1/4 or 1/8 scale while staying at least DRAFT_FACTOR x
# the model's size, at 1/2 scale only while staying HALF_DRAFT_FACTOR x; its final resize
# first box-reduces by whole factors down to REDUCING_GAP x the model size (Pillow's
# reducing_gap). Trained model, 200 full-resolution X-rays, max score diff vs reference /
# decode+resize ms per image, one thread, same run: 3 / 5 / 4 (shipped): 0.012 / 5.7;
# 3 / none / none: 0.005 / 6.9; 3 / 3 / none: 0.024; 3 / 4 / 5: 0.024; 3 / 5 / 5: 0.009 / 6.1.
DRAFT_FACTOR = 3
HALF_DRAFT_FACTOR = 5
REDUCING_GAP = 4.0
_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


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


def open_image(
    source: ImageSource, draft: tuple[int, int] | None = None, gray: bool = False
) -> Image.Image:
    """Decode any supported source to a fully loaded, upright PIL image (any mode).

    `draft`: for JPEGs, let libjpeg decode at 1/2, 1/4 or 1/8 scale in the DCT domain, staying
    at least this large (the fast path); `gray` also skips colour decoding. Raises ImageError
    with a specific message for every kind of bad input.
    """
    if isinstance(source, Image.Image):
        return _checked(ImageOps.exif_transpose(source), describe(source))
    if isinstance(source, np.ndarray):
        return _from_array(source)
    name = describe(source)
    data = _read_bytes(source, name)
    if not data:
        raise ImageError(f"expected an image file, got 0 bytes from {name}")
    if data[128:132] == b"DICM" or name.lower().endswith(".dcm"):
        from engine.dicom import dicom_image

        return _checked(dicom_image(data, name), name)
    try:
        img = Image.open(io.BytesIO(data))
        _check_size(img.size, name)
        scale = _draft_scale(img.size, draft) if draft and img.format == "JPEG" else 1
        if scale > 1:
            target = (img.size[0] // scale, img.size[1] // scale)  # Pillow then picks `scale`
            img.draft("L" if gray or img.mode == "L" else "RGB", target)
        img.load()
        img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name} is too large to decode safely: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError(
            f"{name} is not a supported image (expected JPEG, PNG, BMP, TIFF or DICOM; "
            f"{len(data)} bytes starting {data[:8]!r})"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name} is truncated or corrupt: {e}") from e
    return _checked(img, name)


def to_mode(img: Image.Image, channels: int, keep_gray: bool = False) -> Image.Image:
    """8-bit 'L' or 'RGB': 16-bit scaled down, alpha composited on black.

    With `keep_gray`, a grayscale image stays 'L' even for a 3-channel model (the fast path
    resizes one channel and repeats it at the end; the result is the same as resizing RGB).
    """
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        img = _to_8bit_gray(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if channels == 1 or (keep_gray and img.mode in ("L", "1")):
        return img.convert("L")
    return img.convert("RGB")


def reference_pixels(source: ImageSource, contract: Contract) -> np.ndarray:
    """One image as the model's input tensor (no batch dimension), reference path: the full
    decode, RGB, the declared resize filter, then scaling. The ground truth for parity."""
    spec = contract.input
    img = to_mode(open_image(source), spec.channels)
    img = img.resize((spec.width, spec.height), _FILTERS[spec.resize_filter])
    return finish(np.asarray(img, dtype=np.uint8), contract)


def fast_pixels(source: ImageSource, contract: Contract) -> np.ndarray:
    """The default path, same output layout as `reference_pixels`: JPEGs decoded at reduced
    scale in the DCT domain (never below DRAFT_FACTOR x the model size, so the final resize
    still low-pass filters), grayscale kept single-channel, a box pre-reduction before the
    declared filter, uint8 until the final scaling."""
    spec = contract.input
    side = DRAFT_FACTOR * max(spec.width, spec.height)
    img = open_image(source, draft=(side, side), gray=spec.channels == 1)
    img = to_mode(img, spec.channels, keep_gray=True)
    filt = _FILTERS[spec.resize_filter]
    img = img.resize((spec.width, spec.height), filt, reducing_gap=REDUCING_GAP)
    return finish(np.asarray(img, dtype=np.uint8), contract)


PREPROCESSORS = {"fast": fast_pixels, "reference": reference_pixels}


def reference_batch(sources: Sequence[ImageSource], contract: Contract) -> np.ndarray:
    """A batch through the reference path; any bad image raises (use per-item calls to skip)."""
    return np.stack([reference_pixels(s, contract) for s in sources])


def finish(pixels: np.ndarray, contract: Contract) -> np.ndarray:
    """uint8 HxW or HxWxC at model size -> float32 in the contract's scaling and layout."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] != contract.input.channels:
        pixels = np.repeat(pixels, contract.input.channels, axis=2)
    mul, add = SCALINGS[contract.input.scaling]
    x = pixels.astype(np.float32) * np.float32(mul / 255.0)
    if add:
        x += np.float32(add)
    if contract.input.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
    return x


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under a folder, sorted, by extension."""
    root = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def read_once(source: ImageSource) -> bytes | Image.Image | np.ndarray:
    """A path or file object read into bytes, so it can be decoded twice (a heatmap needs the
    model tensor and a display image); images and arrays are returned as they are."""
    if isinstance(source, Image.Image | np.ndarray):
        return source
    return _read_bytes(source, describe(source))


def _read_bytes(source: ImageSource, name: str) -> bytes:
    if isinstance(source, bytes | bytearray):
        return bytes(source)
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


def _draft_scale(size: tuple[int, int], draft: tuple[int, int]) -> int:
    """The DCT-domain reduction the fast path lets libjpeg use (1, 2, 4 or 8): 1/4 and 1/8
    while the image stays at least `draft`; 1/2 only while it stays HALF_DRAFT_FACTOR /
    DRAFT_FACTOR times larger (1/2-scale decoding of mid-size X-rays was where the fast path
    strayed most from the reference)."""
    fits = min(size[0] // draft[0], size[1] // draft[1])
    scale = next((s for s in (8, 4) if fits >= s), 1)
    half_margin = HALF_DRAFT_FACTOR / DRAFT_FACTOR
    if scale == 1 and min(size[0] / draft[0], size[1] / draft[1]) >= 2 * half_margin:
        scale = 2
    return scale


def _check_size(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"{name} is {w}x{h} px ({w * h / 1e6:.0f} Mpx), over the {MAX_PIXELS // 1_000_000} "
            "Mpx limit: refusing to decode (decompression bomb guard)"
        )
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"{name} is {w}x{h} px: expected at least {MIN_SIDE} px on each side")


def _checked(img: Image.Image, name: str) -> Image.Image:
    _check_size(img.size, name)
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
    _check_size((pixels.shape[1], pixels.shape[0]), name)
    return Image.fromarray(np.ascontiguousarray(pixels))


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """16-bit and float grayscale: map the type's full range onto 0-255 (Pillow would clip)."""
    a = np.asarray(img)
    if img.mode == "F":
        a = np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, None)
        top = 1.0 if a.max() <= 1.0 else 255.0 if a.max() <= 255.0 else 65535.0
    else:
        a = a.astype(np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
