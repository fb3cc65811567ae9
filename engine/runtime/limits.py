"""The pixel budget every decoder checks before it allocates: a decompression-bomb guard."""

from __future__ import annotations

from engine.errors import ImageError

MAX_PIXELS = 80_000_000  # the largest real X-rays are ~ 4k x 5k; 80 Mpx of RGB is 240 MB
MIN_SIDE = 32  # smaller than this is not a radiograph


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
