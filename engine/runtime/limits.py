"""The pixel budget every decoder checks before it allocates (a decompression-bomb guard), and
the memory a decode is expected to take (what a server budgets before it decodes)."""

from __future__ import annotations

from pneumo_onnx.engine.errors import ImageError

MAX_PIXELS = 80_000_000  # the largest real X-rays are ~ 4k x 5k; 80 Mpx of RGB is 240 MB
MIN_SIDE = 32  # smaller than this is not a radiograph
# Memory that decoding and preprocessing one image takes, per pixel, by the Pillow mode its
# header announces: the smallest RLIMIT_DATA allowance above a decode worker's resting size
# under which a 16 Mpx image of that mode decodes, on the worse of the fast and reference
# paths (`python -m benchmarks.decode_memory`): L 5.2 (to RGB for an RGB model), P 5.2, RGB
# 4.2, CMYK 8.2, RGBA and LA 20.0 (composited on black at full size), I;16 7.0, I and F 9.1.
# Modes not listed are budgeted as the most expensive ones.
BYTES_PER_PIXEL = {
    "1": 5.2,
    "L": 5.2,
    "P": 5.2,
    "RGB": 4.2,
    "YCbCr": 4.2,
    "CMYK": 8.2,
    "I;16": 7.0,
    "I;16B": 7.0,
    "I;16L": 7.0,
    "I;16N": 7.0,
    "I": 9.1,
    "F": 9.1,
}
ALPHA_BYTES = 20.1  # any mode with transparency
# DICOM, per sample and byte stored: 16-bit mono measured 4.1 uncompressed, 6.4 RLE (pydicom's
# decoders hold the frame as it comes and as an array); a codec library (JPEG 2000, JPEG-LS,
# JPEG) adds its own buffer: 8-bit mono JPEG 2000 7.4, JPEG 5.1.
DICOM_BYTES_PER_STORED_BYTE = 3.0
DICOM_BYTES = 1.0
DICOM_CODEC_BYTES = 3.5
MARGIN = 1.2  # between a measured 16 Mpx decode and any other
# Pre-resize intensity steps, per pixel and channel: a step's peak is 1.0 (invert) to 1.9
# (CLAHE) bytes (tracemalloc, 16 Mpx), the image's array and the Pillow image made back 2 more.
PRE_RESIZE_BYTES = 4.0
# One image may never need more than this, whatever its kind: the default memory budget of
# the decode workers (engine.runtime.sandbox.Limits.memory), within which they all decode.
# In pixels: 8-bit gray and RGB up to the 80 Mpx limit, 16-bit gray ~60 Mpx, a 16-bit DICOM
# ~60 Mpx (~40 Mpx through a codec library), images with transparency ~21 Mpx.
MAX_DECODE_BYTES = 512 * 2**20


def check_size(size: tuple[int, int], name: str) -> None:
    """Refuse an image of `size` (width, height) over the budget or too small to be an X-ray."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"{name} is {w}x{h} px ({w * h / 1e6:.0f} Mpx), over the {MAX_PIXELS // 1_000_000} "
            "Mpx limit: refusing to decode (decompression bomb guard)"
        )
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"{name} is {w}x{h} px: expected at least {MIN_SIDE} px on each side")


def decode_bytes(pixels: int, mode: str, *, alpha: bool = False) -> int:
    """The memory decoding and preprocessing an image of `pixels` pixels in Pillow mode
    `mode` takes (with transparency: composited first), with a margin."""
    per_pixel = ALPHA_BYTES if alpha else BYTES_PER_PIXEL.get(mode, ALPHA_BYTES)
    return int(pixels * per_pixel * MARGIN)


def pre_resize_bytes(pixels: int, channels: int, steps: int) -> int:
    """What a contract's intensity steps add to a decode (each step's output and working
    arrays, the numpy round trip of the Pillow image): PRE_RESIZE_BYTES per pixel and channel
    of the 8-bit image they run on, with a margin; nothing without steps."""
    return int(pixels * channels * PRE_RESIZE_BYTES * MARGIN) if steps else 0


def dicom_decode_bytes(pixels: int, samples: int, stored_bytes: int, codec: bool) -> int:
    """The memory a DICOM image of `pixels` pixels of `samples` samples of `stored_bytes`
    bytes takes to decode as stored (through a `codec` library or not) and window into 8
    bits, with a margin."""
    per_sample = DICOM_BYTES_PER_STORED_BYTE * stored_bytes + DICOM_BYTES
    per_sample += DICOM_CODEC_BYTES if codec else 0.0
    return int(pixels * samples * per_sample * MARGIN)


def check_decode_bytes(needed: int, what: str, name: str) -> None:
    """Refuse an image whose decode would take more than MAX_DECODE_BYTES."""
    if needed > MAX_DECODE_BYTES:
        raise ImageError(
            f"{name} ({what}) would take about {needed / 2**20:.0f} MB to decode, over the "
            f"{MAX_DECODE_BYTES // 2**20} MB limit: send it as 8-bit grayscale or smaller"
        )
