"""The pixel budget every decoder checks before it allocates (a decompression-bomb guard), and
the memory a decode is expected to take (what a server budgets before it decodes)."""

from __future__ import annotations

from engine.errors import ImageError

MAX_PIXELS = 80_000_000  # the largest real X-rays are ~ 4k x 5k; 80 Mpx of RGB is 240 MB
MIN_SIDE = 32  # smaller than this is not a radiograph
# Peak memory of decoding and preprocessing one image, in bytes per pixel, by the kind of
# pixels its header announces (VmHWM of the fast path on 16 Mpx images of each Pillow mode:
# L 2.0, RGB 7.9, CMYK 8.0, LA 20.1, RGBA 18.8 (80 Mpx), I;16 28, I 32, F 33; alpha is
# composited on black at full size in RGBA, 16/32-bit gray is scaled in float64). Rounded up.
BYTES_PER_BAND = 2.75  # 8-bit bands: L, RGB, CMYK, YCbCr, a palette without transparency
ALPHA_BYTES = 21.0  # any mode with transparency
WIDE_BYTES = 34.0  # 16-bit, 32-bit integer and float grayscale
# One image that would need more than this to decode is refused, whatever its pixel count:
# with the server's base (~250 MB) it keeps any single request under 1 GB. In pixels: 8-bit
# gray and RGB up to the 80 Mpx limit, transparency up to 31 Mpx, 16-bit gray up to 19 Mpx.
MAX_DECODE_BYTES = 640 * 2**20


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


def decode_bytes(
    pixels: int,
    bands: int = 1,
    *,
    alpha: bool = False,
    wide: bool = False,
    stored_bytes: int | None = None,
) -> int:
    """The expected peak memory of decoding and preprocessing an image of `pixels` pixels of
    `bands` 8-bit bands (or with transparency, or wide grayscale). `stored_bytes`: a DICOM
    image, decoded as stored (that many bytes per sample) then windowed block by block into
    8 bits: (stored + 2) bytes per sample, with a 25% margin (3.9 B/px measured for 16-bit
    gray at 79 Mpx)."""
    if stored_bytes is not None:
        per_pixel = bands * (stored_bytes + 2) * 1.25
    else:
        per_pixel = ALPHA_BYTES if alpha else WIDE_BYTES if wide else bands * BYTES_PER_BAND
    return int(pixels * per_pixel)


def check_decode_bytes(needed: int, what: str, name: str) -> None:
    """Refuse an image whose decode would take more than MAX_DECODE_BYTES."""
    if needed > MAX_DECODE_BYTES:
        raise ImageError(
            f"{name} ({what}) would take about {needed / 2**20:.0f} MB to decode, over the "
            f"{MAX_DECODE_BYTES // 2**20} MB limit: send it as 8-bit grayscale or smaller"
        )
