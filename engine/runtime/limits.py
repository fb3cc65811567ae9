"""The pixel budget every decoder checks before it allocates (a decompression-bomb guard), and
the memory a decode is expected to take (what a server budgets before it decodes)."""

from __future__ import annotations

from engine.errors import ImageError

MAX_PIXELS = 80_000_000  # the largest real X-rays are ~ 4k x 5k; 80 Mpx of RGB is 240 MB
MIN_SIDE = 32  # smaller than this is not a radiograph
# Peak memory of decoding and preprocessing one image, in copies of its decoded bytes
# (measured with VmHWM on 80 Mpx PNGs through the fast path: L 1.7, RGB 2.5, RGBA 4.7 copies;
# the alpha path composites on a black background at full size).
DECODE_COPIES = 2.5
ALPHA_DECODE_COPIES = 5.0
# One image that would need more than this to decode is refused, whatever its pixel count:
# with the server's base (~250 MB) it keeps any single request under 1 GB.
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


def decode_bytes(pixels: int, bands: int, bytes_per_band: int, alpha: bool = False) -> int:
    """The expected peak memory of decoding and preprocessing an image of `pixels` pixels."""
    copies = ALPHA_DECODE_COPIES if alpha else DECODE_COPIES
    return int(pixels * bands * bytes_per_band * copies)


def check_decode_bytes(needed: int, what: str, name: str) -> None:
    """Refuse an image whose decode would take more than MAX_DECODE_BYTES."""
    if needed > MAX_DECODE_BYTES:
        raise ImageError(
            f"{name} ({what}) would take about {needed / 2**20:.0f} MB to decode, over the "
            f"{MAX_DECODE_BYTES // 2**20} MB limit: send it as 8-bit grayscale or smaller"
        )
