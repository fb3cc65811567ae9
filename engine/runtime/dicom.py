"""DICOM chest X-rays (the `dicom` extra, pydicom) to an 8-bit grayscale image.

The order matters and follows the standard's display pipeline: modality LUT (rescale slope and
intercept), then the VOI LUT or window centre/width, else the image's own min..max; then
MONOCHROME1 (white = low values) is inverted so that bone is always bright, as in training.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from engine.errors import ImageError, MissingExtraError, first_line
from engine.runtime.limits import MAX_PIXELS


def dicom_image(data: bytes, name: str) -> Image.Image:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as e:
        raise MissingExtraError("dicom", f"reading DICOM file {name}", "pydicom") from e
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        if rows * columns > MAX_PIXELS:  # checked on the header, before decoding the pixels
            raise ImageError(
                f"{name} is {columns}x{rows} px, over the {MAX_PIXELS // 1_000_000} Mpx limit: "
                "refusing to decode (decompression bomb guard)"
            )
        pixels = ds.pixel_array
    except ImageError:
        raise
    except Exception as e:  # pydicom raises many kinds: missing tags, unsupported compression
        raise ImageError(f"{name} is not a readable DICOM image: {first_line(e)}") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]  # a multi-frame series: the first frame is the radiograph
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or pixels.ndim == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        return Image.fromarray(_to_uint8(pixels.astype(np.float64)), "RGB")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        gray = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    elif "VOILUTSequence" in ds:
        gray = _to_uint8(apply_voi_lut(values, ds).astype(np.float64))
    else:
        gray = _to_uint8(values)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, "L")


def _first(value: object) -> float:
    """Window centre/width may be multi-valued: the first pair is the default view."""
    try:
        return float(value[0])  # type: ignore[index]
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def _window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear window onto 0..255."""
    width = max(width, 1.0)
    y = (values - (centre - 0.5)) / (width - 1.0) + 0.5
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Stretch the values present onto 0..255 (a flat image becomes black)."""
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)
