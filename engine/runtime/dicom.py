"""DICOM chest X-rays (the `dicom` extra, pydicom) to an 8-bit grayscale image.

The order matters and follows the standard's display pipeline: modality LUT (rescale slope and
intercept), then the VOI LUT or window centre/width, else the image's own min..max; then
MONOCHROME1 (white = low values) is inverted so that bone is always bright, as in training.

Bounded by design: the transfer syntax is read from the file meta before the dataset (the
Deflated syntax, which pydicom would inflate whole and without limit, is refused); frames x
rows x columns x samples are checked against the pixel budget from the header, before any
pixel is decoded; only the first frame is decoded; and the display pipeline runs on blocks of
rows, so its float temporaries stay small whatever the image size.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pneumo_onnx.engine.errors import ImageError, MissingExtraError, first_line
from pneumo_onnx.engine.runtime.limits import MAX_PIXELS, check_size
from pneumo_onnx.engine.runtime.structure import check_dicom, frame_size

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
IMPLICIT = "1.2.840.10008.1.2"  # Implicit VR Little Endian
BIG_ENDIAN = "1.2.840.10008.1.2.2"  # Explicit VR Big Endian (retired)
RLE = "1.2.840.10008.1.2.5"  # RLE Lossless: pydicom's own decoder, no codec library
BLOCK_ROWS = 256  # rows per block of the display pipeline (float64 temporaries)


@dataclass(frozen=True)
class DicomHeader:
    rows: int
    columns: int
    frames: int
    samples: int
    bytes_per_sample: int
    codec: bool = False  # a compressed transfer syntax a codec library decodes (not RLE)

    @property
    def values(self) -> int:
        """What the pixel budget counts: frames x rows x columns x samples."""
        return self.frames * self.rows * self.columns * self.samples


def dicom_header(data: bytes, name: str) -> DicomHeader:
    """The pixel geometry of a DICOM file, read without its pixel data; refuses what is over
    the budget."""
    return _checked(_read(data, name, stop_before_pixels=True), name)


def dicom_dataset(data: bytes, name: str) -> Any:
    """The pydicom dataset of a DICOM file without its pixel data, read with the same checks
    as the image (what a report about the image copies its patient and study from)."""
    return _read(data, name, stop_before_pixels=True)


def dicom_image(data: bytes, name: str) -> Image.Image:
    ds = _read(data, name, stop_before_pixels=False)
    header = _checked(ds, name)
    _check_frame(ds, header, name)
    with _decoder_failures() as failures:
        try:
            from pydicom.pixels import pixel_array

            pixels = pixel_array(ds, index=0)  # the first frame only: the radiograph
        except MemoryError:
            raise
        except Exception as e:  # pydicom raises many kinds: missing tags, unsupported codecs
            if failures.memory:  # a codec ran out of memory: say so, not "unreadable"
                raise MemoryError(f"decoding {name}") from e
            raise ImageError(f"{name} is not a readable DICOM image: {first_line(e)}") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or pixels.ndim == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        return Image.fromarray(_blockwise(pixels, lambda block: block, stretch=True), "RGB")
    gray = _display(pixels, ds)
    if photometric == "MONOCHROME1":
        np.subtract(255, gray, out=gray)
    return Image.fromarray(gray, "L")


class _Failures(logging.Handler):
    """Whether a pydicom decoder ran out of memory: pydicom tries each decoder in turn and
    raises one RuntimeError that names none of their exceptions (a MemoryError's text is
    empty), but it logs each of them, with its exception, first."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.memory = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], MemoryError):
            self.memory = True


@contextmanager
def _decoder_failures() -> Iterator[_Failures]:
    handler = _Failures()
    logger = logging.getLogger("pydicom")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _read(data: bytes, name: str, stop_before_pixels: bool) -> Any:
    try:
        import pydicom
        from pydicom.filereader import _read_file_meta_info, read_preamble
    except ImportError as e:
        raise MissingExtraError("dicom", f"reading DICOM file {name}", "pydicom") from e
    try:
        fp = io.BytesIO(data)
        read_preamble(fp, True)
        syntax = str(_read_file_meta_info(fp).get("TransferSyntaxUID", ""))
        start = fp.tell()
    except MemoryError:
        raise
    except Exception as e:
        raise ImageError(f"{name} is not a readable DICOM image: {first_line(e)}") from e
    if syntax == DEFLATED:
        raise ImageError(
            f"{name} uses the Deflated Explicit VR Little Endian transfer syntax, which is not "
            "accepted (it inflates without a bound before its size can be checked): save it "
            "uncompressed, RLE or JPEG"
        )
    if syntax:  # without a file meta, pydicom guesses the encoding: so would a check
        check_dicom(data, start, syntax != BIG_ENDIAN, syntax != IMPLICIT, name)
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
    except MemoryError:
        raise
    except Exception as e:
        raise ImageError(f"{name} is not a readable DICOM image: {first_line(e)}") from e


def _checked(ds: Any, name: str) -> DicomHeader:
    try:
        header = DicomHeader(
            rows=int(ds.get("Rows", 0)),
            columns=int(ds.get("Columns", 0)),
            frames=max(1, int(ds.get("NumberOfFrames", 1) or 1)),
            samples=max(1, int(ds.get("SamplesPerPixel", 1) or 1)),
            bytes_per_sample=max(1, (int(ds.get("BitsAllocated", 8) or 8) + 7) // 8),
            codec=_codec(ds),
        )
    except (TypeError, ValueError) as e:
        raise ImageError(f"{name} is not a readable DICOM image: {first_line(e)}") from e
    if header.rows <= 0 or header.columns <= 0:
        raise ImageError(f"{name} is not a readable DICOM image: no Rows/Columns in its header")
    if header.values > MAX_PIXELS:  # checked on the header, before decoding the pixels
        raise ImageError(
            f"{name} is {header.frames} frame(s) of {header.columns}x{header.rows} px x "
            f"{header.samples} sample(s) ({header.values / 1e6:.0f} M values), over the "
            f"{MAX_PIXELS // 1_000_000} Mpx limit: refusing to decode (decompression bomb guard)"
        )
    check_size((header.columns, header.rows), name)
    return header


def _codec(ds: Any) -> bool:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return bool(getattr(syntax, "is_encapsulated", False)) and str(syntax) != RLE


def _check_frame(ds: Any, header: DicomHeader, name: str) -> None:
    """Refuse a compressed first frame whose own codec header is another size than Rows x
    Columns: pydicom hands it to a codec that allocates what the frame says."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not getattr(syntax, "is_encapsulated", False) or "PixelData" not in ds:
        return
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=header.frames))
    except Exception:  # malformed encapsulation: pydicom's decoding says what is wrong
        return
    size = frame_size(frame)
    if size is not None and size != (header.columns, header.rows):
        raise ImageError(
            f"{name}: its compressed frame is {size[0]}x{size[1]} px, its header says "
            f"{header.columns}x{header.rows}: refused"
        )


def _display(pixels: np.ndarray, ds: Any) -> np.ndarray:
    """Modality LUT, then the window, VOI LUT or min..max stretch, onto uint8."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    def modality(block: np.ndarray) -> np.ndarray:
        return np.asarray(apply_modality_lut(block, ds), dtype=np.float64)

    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        return _blockwise(pixels, lambda b: _window(modality(b), centre, width), stretch=False)
    if "VOILUTSequence" in ds:
        return _blockwise(
            pixels, lambda b: np.asarray(apply_voi_lut(modality(b), ds), np.float64), stretch=True
        )
    return _blockwise(pixels, modality, stretch=True)


def _blockwise(pixels: np.ndarray, transform: Any, stretch: bool) -> np.ndarray:
    """`transform` applied block by block of rows into a uint8 image; with `stretch`, the
    values present are then mapped onto 0..255 (a flat image becomes black)."""
    out = np.empty(pixels.shape, np.uint8)
    if not stretch:
        for start in range(0, len(pixels), BLOCK_ROWS):
            out[start : start + BLOCK_ROWS] = transform(pixels[start : start + BLOCK_ROWS])
        return out
    low, high = np.inf, -np.inf
    for start in range(0, len(pixels), BLOCK_ROWS):
        values = transform(pixels[start : start + BLOCK_ROWS])
        low, high = min(low, float(np.min(values))), max(high, float(np.max(values)))
    if high <= low:
        out.fill(0)
        return out
    scale = 255.0 / (high - low)
    for start in range(0, len(pixels), BLOCK_ROWS):
        values = np.asarray(transform(pixels[start : start + BLOCK_ROWS]), np.float64)
        out[start : start + BLOCK_ROWS] = np.rint((values - low) * scale)
    return out


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
