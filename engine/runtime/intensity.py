"""Intensity steps X-ray code applies to the 8-bit image before resizing (histogram equalisation,
CLAHE, contrast stretching, gamma, inversion), in numpy, bit-exact with the library each names.

The engine never imports OpenCV: each cv2 function is recomputed in its own arithmetic (float32
where it computes in float32, its round-half-to-even `cvRound`, its saturation). Shapes: every
step takes HxW uint8; `scale_abs`, `invert` and `gamma` also HxWxC (any C, as cv2 and Pillow
apply them per value); the PIL steps also HxWx3 (per channel, as Pillow does for mode RGB);
`equalize_hist_cv2` and `clahe` only HxW (cv2 takes 8-bit single-channel images only).
The declarative form (`Step`, its dict form) is in `engine.intensity_steps`, the
command-line spelling (`clahe:2.0:8x8`) in `engine.intensity_spelling`; `apply_steps`
applies a list of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Literal

import numpy as np

from pneumo_onnx.engine.errors import ImageError
from pneumo_onnx.engine.intensity_steps import (
    Autocontrast,
    Clahe,
    EqualizeHist,
    EqualizePil,
    Gamma,
    Invert,
    ScaleAbs,
    Step,
)

_INT_MIN = -(2**31)
BLOCK_PIXELS = 1 << 20  # lookups and histograms a block at a time: 8 MB of indices


def _pixels(pixels: np.ndarray, what: str, color: bool | int) -> np.ndarray:
    """`pixels` as uint8 HxW, or HxWxC when `color` allows it (True: any C, 3: RGB only)."""
    shapes = "HxW" if color is False else "HxW or HxWx3" if color == 3 else "HxW or HxWxC"
    ok = pixels.ndim == 2 or (
        pixels.ndim == 3 and color is not False and (color is True or pixels.shape[2] == color)
    )
    if pixels.dtype != np.uint8 or not ok or pixels.size == 0:
        raise ImageError(
            f"{what} takes a non-empty uint8 image {shapes}, got {pixels.dtype} {pixels.shape}"
        )
    return pixels


def _f32(q: Fraction) -> float:
    """`q` rounded once to the nearest float32, ties to even (what one IEEE operation does)."""
    if q == 0:
        return 0.0
    e = abs(q).numerator.bit_length() - abs(q).denominator.bit_length() - 24
    while abs(q) >= Fraction(2) ** (e + 24):
        e += 1
    while abs(q) < Fraction(2) ** (e + 23):
        e -= 1
    e = max(e, -149)  # subnormals: a fixed quantum
    value = round(q / Fraction(2) ** e) * 2.0**e
    return value if abs(value) < 2.0**128 else float("inf")


def scale_abs(
    pixels: np.ndarray, alpha: float = 1.0, beta: float = 0.0, fma: bool = True
) -> np.ndarray:
    """cv2.convertScaleAbs(src, alpha=alpha, beta=beta): saturate(cvRound(|src * a + b|)) with a,
    b cast to float32. With `fma` (OpenCV on any x86-64 CPU with AVX2, and ARM64) src * a + b is
    one fused multiply-add; without it (an older CPU, or cv2.setUseOptimized(False)) the product
    is rounded to float32 first: for some alpha, beta (nonzero beta) a few values differ by 1."""
    pixels = _pixels(pixels, "cv2.convertScaleAbs", True)
    a, b = float(np.float32(alpha)), float(np.float32(beta))
    product = np.arange(256) * a  # exact in float64: 8 bits times 24
    with np.errstate(all="ignore"):  # float32 overflow is inf, which saturates to 255
        if not fma:
            product = product.astype(np.float32).astype(np.float64)
        value = _sum_f32(product, b)
        lut = np.clip(np.rint(np.abs(value)), 0, 255).astype(np.uint8)
    return _lookup(lut, pixels)


def _sum_f32(p: np.ndarray, b: float) -> np.ndarray:
    """p + b rounded once to float32, as one float32 operation (a fused multiply-add when `p`
    is the exact product). The float64 sum is exact unless the exponents are far apart; then
    (TwoSum finds those) it is redone in exact rational arithmetic."""
    s = p + b
    bb = s - p
    error = (p - (s - bb)) + (b - bb)
    out = s.astype(np.float32)
    for i in np.flatnonzero(np.isfinite(s) & (error != 0)):
        out[i] = _f32(Fraction(float(p[i])) + Fraction(b))
    return out


def equalize_hist_cv2(pixels: np.ndarray) -> np.ndarray:
    """cv2.equalizeHist: the cumulative histogram from the first occupied level (which maps to
    0), times 255 / (pixels - that level's count) in float32, rounded half to even. An image of
    one value is returned as it is."""
    pixels = _pixels(pixels, "cv2.equalizeHist", False)
    hist = _histogram(pixels)
    first = int(np.flatnonzero(hist)[0])
    if hist[first] == pixels.size:
        return pixels.copy()
    scale = np.float32(255.0) / np.float32(pixels.size - hist[first])
    lut = np.zeros(256, np.float32)
    lut[first + 1 :] = np.cumsum(hist[first + 1 :]).astype(np.float32) * scale
    return _lookup(np.clip(np.rint(lut), 0, 255).astype(np.uint8), pixels)


def clahe(
    pixels: np.ndarray, clip_limit: float = 40.0, tile_grid: tuple[int, int] = (8, 8)
) -> np.ndarray:
    """cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tile_grid).apply(pixels); `tile_grid`
    is cv2's (columns, rows). As OpenCV: an image whose sides are not multiples of the grid is
    extended right and down (BORDER_REFLECT_101; by a whole tile on a side that already divides)
    for the tile histograms only; each histogram is clipped at max(int(clip_limit * tile area /
    256), 1) (no clipping for clip_limit 0) with the excess spread evenly and its remainder at a
    stride; the tile LUTs are interpolated bilinearly in float32 and rounded half to even."""
    pixels = _pixels(pixels, "CLAHE (cv2)", False)
    cols, rows = tile_grid
    h, w = pixels.shape
    ext = pixels
    if w % cols or h % rows:
        down, across = _reflect101(h + rows - h % rows, h), _reflect101(w + cols - w % cols, w)
        ext = pixels[np.ix_(down, across)]
    th, tw = ext.shape[0] // rows, ext.shape[1] // cols
    lut = _tile_luts(ext, clip_limit, rows, cols, th, tw).ravel()
    x1, x2, xa, xa1 = _weights(w, tw, cols)
    y1, y2, ya, ya1 = _weights(h, th, rows)
    left, right = (x1 * 256).astype(np.intp), (x2 * 256).astype(np.intp)
    out = np.empty_like(pixels)
    for y0 in range(0, h, 64):  # bands of rows that stay in cache
        ys = slice(y0, min(y0 + 64, h))
        value = pixels[ys].astype(np.intp)
        a, b = value + left, value + right
        res = []
        for plane in (y1[ys], y2[ys]):  # lutPlane1, lutPlane2: the tile rows above and below
            base = (plane * cols * 256)[:, None]
            near = lut.take(a + base)
            near *= xa1
            far = lut.take(b + base)
            far *= xa
            near += far
            res.append(near)
        res[0] *= ya1[ys, None]
        res[1] *= ya[ys, None]
        res[0] += res[1]
        out[ys] = np.clip(np.rint(res[0]), 0, 255)
    return out


def _reflect101(n: int, length: int) -> np.ndarray:
    """cv2.borderInterpolate(p, length, BORDER_REFLECT_101) for p in 0..n-1 (it reflects again
    when the border is longer than the image)."""
    if length == 1:
        return np.zeros(n, np.intp)
    p = np.arange(n)
    while (p >= length).any():
        p = np.where(p >= length, 2 * length - 2 - p, p)
        p = np.abs(p)
    return p


def _tile_luts(
    ext: np.ndarray, clip_limit: float, rows: int, cols: int, th: int, tw: int
) -> np.ndarray:
    """One float32 LUT per tile (row-major), as CLAHE_CalcLut_Body computes them."""
    key = np.arange(cols * tw, dtype=np.intp) // tw * 256
    hist = np.empty((rows, cols * 256), np.int64)
    for ty in range(rows):
        band = ext[ty * th : (ty + 1) * th, : cols * tw]
        hist[ty] = np.bincount((band + key).ravel(), minlength=cols * 256)
    hist = hist.reshape(rows * cols, 256)
    area = th * tw
    if clip_limit > 0:
        limit = clip_limit * area / 256
        # static_cast<int>: truncation; out of int range it is x86's "integer indefinite"
        clip = max(int(limit) if _INT_MIN < limit < 2**31 else _INT_MIN, 1)
        clipped = np.maximum(hist - clip, 0).sum(axis=1)
        np.minimum(hist, clip, out=hist)
        batch, residual = np.divmod(clipped, 256)
        hist += batch[:, None]
        step = np.maximum(256 // np.maximum(residual, 1), 1)[:, None]
        i = np.arange(256)
        hist += (i % step == 0) & (i // step < residual[:, None])  # residual bins at a stride
    scale = np.float32(255.0) / np.float32(area)
    cum = np.cumsum(hist, axis=1).astype(np.float32) * scale
    return np.clip(np.rint(cum), 0, 255)


def _weights(n: int, tile: int, tiles: int) -> tuple[np.ndarray, ...]:
    """Per pixel along one axis: the two tiles whose LUTs are blended and their float32 weights,
    as OpenCV computes them (x * (1.0f / tile) - 0.5f, floored)."""
    f = np.arange(n, dtype=np.float32) * (np.float32(1.0) / np.float32(tile)) - np.float32(0.5)
    first = np.floor(f)
    weight = f - first
    t1 = first.astype(np.intp)
    return np.maximum(t1, 0), np.minimum(t1 + 1, tiles - 1), weight, np.float32(1.0) - weight


def equalize_pil(pixels: np.ndarray) -> np.ndarray:
    """PIL.ImageOps.equalize(image) for mode L (HxW) and RGB (HxWx3, each channel alone): a LUT
    in Pillow's integer steps; a channel of one value, or too few pixels, stays as it is."""
    pixels = _pixels(pixels, "PIL ImageOps.equalize", 3)
    return _per_channel(pixels, _equalize_lut)


def _equalize_lut(hist: list[int]) -> list[int]:
    used = [count for count in hist if count]
    step = (sum(used) - used[-1]) // 255 if len(used) > 1 else 0
    if not step:
        return list(range(256))
    lut, n = [], step // 2
    for count in hist:
        lut.append(min(n // step, 255))  # Image.point clips to 0..255
        n += count
    return lut


def autocontrast_pil(
    pixels: np.ndarray,
    cutoff: float | tuple[float, float] = 0,
    ignore: int | Sequence[int] | None = None,
) -> np.ndarray:
    """PIL.ImageOps.autocontrast(image, cutoff, ignore) (preserve_tone=False, no mask) for mode
    L and RGB (each channel alone): `cutoff` percent of the pixels (a number, or (low, high))
    dropped from each end of the histogram, the `ignore` levels not counted, then the lowest
    level left maps to 0 and the highest to 255, truncated."""
    pixels = _pixels(pixels, "PIL ImageOps.autocontrast", 3)
    low, high = cutoff if isinstance(cutoff, tuple) else (cutoff, cutoff)
    skip = () if ignore is None else (ignore,) if isinstance(ignore, int) else tuple(ignore)
    return _per_channel(pixels, lambda hist: _autocontrast_lut(hist, low, high, skip))


def _autocontrast_lut(
    hist: list[int], low: float, high: float, ignore: tuple[int, ...]
) -> list[int]:
    for level in ignore:
        hist[level] = 0
    n = sum(hist)
    for cutoff, levels in ((low, range(256)), (high, range(255, -1, -1))):
        cut = int(n * cutoff // 100)
        for level in levels:  # Pillow's loop, to the letter (a negative cut included)
            if cut > hist[level]:
                cut, hist[level] = cut - hist[level], 0
            else:
                cut, hist[level] = 0, hist[level] - cut
            if cut <= 0:
                break
    used = [level for level in range(256) if hist[level]]
    if not used or used[-1] <= used[0]:
        return list(range(256))
    scale = 255.0 / (used[-1] - used[0])
    offset = -used[0] * scale
    return [min(max(int(ix * scale + offset), 0), 255) for ix in range(256)]


def _per_channel(pixels: np.ndarray, make_lut: Callable[[list[int]], list[int]]) -> np.ndarray:
    """Apply the LUT `make_lut` builds from each channel's own histogram (Pillow's RGB rule)."""
    if pixels.ndim == 2:
        lut = make_lut(_histogram(pixels).tolist())
        return _lookup(np.asarray(lut, np.uint8), pixels)
    out = np.empty_like(pixels)
    for c in range(pixels.shape[2]):
        out[..., c] = _per_channel(np.ascontiguousarray(pixels[..., c]), make_lut)
    return out


def invert(pixels: np.ndarray) -> np.ndarray:
    """255 - x: PIL.ImageOps.invert (L, RGB) and cv2.bitwise_not (any channels)."""
    return 255 - _pixels(pixels, "invert", True)


def gamma(pixels: np.ndarray, exponent: float, library: Literal["cv2", "pil"]) -> np.ndarray:
    """A gamma LUT, (x / 255) ** `exponent` (pass 1.0 / gamma for code written that way):

    - "cv2", the common OpenCV recipe, truncated to uint8:
      `table = np.array([((i / 255.0) ** exponent) * 255 for i in range(256)]).astype("uint8")`
      then `cv2.LUT(img, table)`;
    - "pil", `img.point(lambda p: 255 * (p / 255) ** exponent)`: Pillow calls the function on
      0..255 and rounds each value half to even (Python's round), then clips to 0..255.
    Both in float64 with Python's pow, as the user's code computes them."""
    pixels = _pixels(pixels, f"gamma ({library})", True)
    values = [((i / 255.0) ** exponent) * 255 for i in range(256)]
    if library == "cv2":
        lut = np.array(values).astype(np.uint8)
    else:
        lut = np.array([min(max(round(v), 0), 255) for v in values], np.uint8)
    return _lookup(lut, pixels)


def _lookup(lut: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """lut[pixels], a block of rows at a time: numpy widens the indices to intp (8 bytes a
    pixel) before a lookup, which on a 40 Mpx X-ray would be 320 MB."""
    out = np.empty(pixels.shape, lut.dtype)
    for rows in _row_blocks(pixels):
        np.take(lut, pixels[rows], out=out[rows])
    return out


def _histogram(pixels: np.ndarray) -> np.ndarray:
    """The 256-level histogram of uint8 `pixels`, a block of rows at a time (bincount widens
    to intp too)."""
    hist = np.zeros(256, np.int64)
    for rows in _row_blocks(pixels):
        hist += np.bincount(pixels[rows].ravel(), minlength=256)
    return hist


def _row_blocks(pixels: np.ndarray) -> list[slice]:
    per_row = max(1, pixels[:1].size)
    step = max(1, BLOCK_PIXELS // per_row)
    return [slice(i, i + step) for i in range(0, len(pixels), step)]


def apply_steps(pixels: np.ndarray, steps: Sequence[Step]) -> np.ndarray:
    """`pixels` (uint8) through each step in order; the input is never modified."""
    for step in steps:
        pixels = apply_step(pixels, step)
    return pixels


def apply_step(pixels: np.ndarray, step: Step) -> np.ndarray:
    if isinstance(step, ScaleAbs):
        return scale_abs(pixels, step.alpha, step.beta, step.fma)
    if isinstance(step, EqualizeHist):
        return equalize_hist_cv2(pixels)
    if isinstance(step, Clahe):
        return clahe(pixels, step.clip_limit, step.tile_grid)
    if isinstance(step, EqualizePil):
        return equalize_pil(pixels)
    if isinstance(step, Autocontrast):
        return autocontrast_pil(pixels, step.cutoff, step.ignore or None)
    if isinstance(step, Invert):
        return invert(pixels)
    if isinstance(step, Gamma):
        return gamma(pixels, step.exponent, step.library)
    raise TypeError(f"not an intensity step: {step!r}")
