"""Resize a decoded image to the model's input the way the user's own code did: the contract's
filter (Pillow's, TensorFlow's without antialiasing, or OpenCV's) and mode (stretch,
center-crop, fit, pad), each computed as its library computes it.

- Pillow: `Image.resize(size, filter, box=...)`; center-crop is keras.utils.load_img's
  `keep_aspect_ratio` box (whole pixels), fit is ImageOps.fit's box (fractional pixels), pad is
  ImageOps.pad (ImageOps.contain, then pasted centred on black).
- TensorFlow (`tf-bilinear`, `tf-nearest`): tf.image.resize with half-pixel centres and no
  antialiasing, in float32 as its CPU kernel computes it (numpy here, no TensorFlow);
  center-crop is keras' smart_resize (crop_to_aspect_ratio), pad is tf.image.resize_with_pad
  (pad_to_aspect_ratio).
- OpenCV (`cv2-linear`, `cv2-area`, `cv2-nearest`): cv2.resize(img, (width, height),
  interpolation=INTER_LINEAR | INTER_AREA | INTER_NEAREST) on uint8, stretch only, in OpenCV's
  own integer and float32 arithmetic (numpy here: the engine never imports cv2), bit-exact.

The fast path may hand over an image decoded at 1/`scale` of its size: every box is computed on
the full-size image and divided by `scale`, so the geometry stays that of the reference.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pneumo_onnx.engine.contract import CV2_FILTERS, TF_FILTERS, InputSpec

PIL_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
Box = tuple[float, float, float, float]


def resize(
    img: Image.Image,
    spec: InputSpec,
    full_size: tuple[int, int] | None = None,
    scale: int = 1,
    reducing_gap: float | None = None,
) -> np.ndarray:
    """`img` ('L' or 'RGB') -> HxW or HxWxC at the model's size: uint8 from Pillow's filters,
    float32 from TensorFlow's (tf.image.resize returns unrounded floats). `full_size` is the
    image's size before a reduced-scale decode by 1/`scale` (None: `img` is full size)."""
    size = full_size or img.size
    if spec.resize_filter in TF_FILTERS:
        if scale != 1:
            raise ValueError("TensorFlow resizing needs the full-size image")
        return _tf_resize(np.asarray(img), spec)
    if spec.resize_filter in CV2_FILTERS:
        if scale != 1:
            raise ValueError("OpenCV resizing needs the full-size image")
        return cv2_resize(np.asarray(img), spec.height, spec.width, spec.resize_filter)
    out = (spec.width, spec.height)
    filt = PIL_RESAMPLING[spec.resize_filter]
    if spec.resize_mode == "pad":
        return _pil_pad(img, size, out, filt, scale, reducing_gap)
    box = _pil_box(size, out, spec.resize_mode)
    scaled = (box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale)
    return np.asarray(img.resize(out, filt, box=scaled, reducing_gap=reducing_gap))


# --- Pillow ----------------------------------------------------------------------------------


def _pil_box(size: tuple[int, int], out: tuple[int, int], mode: str) -> Box:
    """The source box (left, top, right, bottom) of the full-size image that fills the output."""
    if mode == "center-crop":
        return _keep_aspect_ratio_box(size, out)
    if mode == "fit":
        return _fit_box(size, out)
    return (0, 0, size[0], size[1])  # stretch


def _keep_aspect_ratio_box(size: tuple[int, int], out: tuple[int, int]) -> Box:
    """keras.utils.load_img(keep_aspect_ratio=True): the centred box in whole pixels."""
    w, h = size
    crop_h = min(h, (w * out[1]) // out[0])
    crop_w = min(w, (h * out[0]) // out[1])
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return (left, top, left + crop_w, top + crop_h)


def _fit_box(size: tuple[int, int], out: tuple[int, int]) -> Box:
    """PIL.ImageOps.fit(image, size, method) (centring 0.5, no bleed): the box in fractions."""
    w, h = size
    ratio, out_ratio = w / h, out[0] / out[1]
    if ratio == out_ratio:
        crop_w, crop_h = float(w), float(h)
    elif ratio >= out_ratio:
        crop_w, crop_h = out_ratio * h, float(h)
    else:
        crop_w, crop_h = float(w), w / out_ratio
    left, top = (w - crop_w) * 0.5, (h - crop_h) * 0.5
    return (left, top, left + crop_w, top + crop_h)


def _pil_pad(
    img: Image.Image,
    size: tuple[int, int],
    out: tuple[int, int],
    filt: Image.Resampling,
    scale: int,
    reducing_gap: float | None,
) -> np.ndarray:
    """PIL.ImageOps.pad(image, size, method): ImageOps.contain's size, pasted centred on black."""
    w, h = size
    inner = out
    ratio, out_ratio = w / h, out[0] / out[1]
    if ratio > out_ratio:
        inner = (out[0], round(h / w * out[0]))
    elif ratio < out_ratio:
        inner = (round(w / h * out[1]), out[1])
    canvas = Image.new(img.mode, out, 0)
    if min(inner) == 0:  # a sliver of an image: ImageOps.contain gives an empty one
        return np.asarray(canvas)
    box = (0.0, 0.0, w / scale, h / scale)
    resized = img.resize(inner, filt, box=box, reducing_gap=reducing_gap)
    if inner == out:
        return np.asarray(resized)
    if inner[0] != out[0]:
        canvas.paste(resized, (round((out[0] - inner[0]) * 0.5), 0))
    else:
        canvas.paste(resized, (0, round((out[1] - inner[1]) * 0.5)))
    return np.asarray(canvas)


# --- TensorFlow ------------------------------------------------------------------------------


def _tf_resize(a: np.ndarray, spec: InputSpec) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    h, w = a.shape[:2]
    out_h, out_w = spec.height, spec.width
    method = spec.resize_filter
    if spec.resize_mode == "center-crop":  # keras.src.utils.image_utils.smart_resize
        crop_h = max(min(h, int(np.float32(w * out_h) / np.float32(out_w))), 1)
        crop_w = max(min(w, int(np.float32(h * out_w) / np.float32(out_h))), 1)
        top = int(np.float32(h - crop_h) / np.float32(2))
        left = int(np.float32(w - crop_w) / np.float32(2))
        return tf_image_resize(a[top : top + crop_h, left : left + crop_w], out_h, out_w, method)
    if spec.resize_mode == "pad":  # tf.image.resize_with_pad, its float32 arithmetic
        f = np.float32
        ratio = max(f(w) / f(out_w), f(h) / f(out_h))
        inner_h, inner_w = f(h) / ratio, f(w) / ratio
        top = max(0, int(np.floor((f(out_h) - inner_h) / f(2))))
        left = max(0, int(np.floor((f(out_w) - inner_w) / f(2))))
        inner = tf_image_resize(a, int(np.floor(inner_h)), int(np.floor(inner_w)), method)
        canvas = np.zeros((out_h, out_w, a.shape[2]), inner.dtype)
        canvas[top : top + inner.shape[0], left : left + inner.shape[1]] = inner
        return canvas
    return tf_image_resize(a, out_h, out_w, method)


def tf_image_resize(a: np.ndarray, out_h: int, out_w: int, method: str) -> np.ndarray:
    """tf.image.resize(a, (out_h, out_w), method, antialias=False) for HxWxC: 'tf-bilinear'
    gives float32 as TF's ResizeBilinear kernel computes it (half-pixel centres, edge pixels
    clamped), 'tf-nearest' gives the input dtype (ResizeNearestNeighbor, half-pixel centres)."""
    if method == "tf-nearest":
        rows = _nearest_index(a.shape[0], out_h)
        cols = _nearest_index(a.shape[1], out_w)
        return a[rows][:, cols]
    y0, y1, dy = _bilinear_axis(a.shape[0], out_h)
    x0, x1, dx = _bilinear_axis(a.shape[1], out_w)
    top, bottom = a[y0].astype(np.float32), a[y1].astype(np.float32)
    dx = dx[None, :, None]
    upper = top[:, x0] + (top[:, x1] - top[:, x0]) * dx
    lower = bottom[:, x0] + (bottom[:, x1] - bottom[:, x0]) * dx
    result: np.ndarray = upper + (lower - upper) * dy[:, None, None]
    return result


def _bilinear_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """compute_interpolation_weights(HalfPixelScaler) of TF's resize_bilinear_op.cc."""
    scale = np.float32(in_size) / np.float32(out_size)
    x = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(x)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(x).astype(np.int64), in_size - 1)
    return lower, upper, (x - floor).astype(np.float32)


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """ResizeNearestNeighbor with half_pixel_centers: floor((i + 0.5) * scale), clamped."""
    scale = np.float32(in_size) / np.float32(out_size)
    x = np.floor((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale)
    return np.minimum(x.astype(np.int64), in_size - 1)


# --- OpenCV ----------------------------------------------------------------------------------
# modules/imgproc/src/resize.cpp: cv::resize -> hal::resize -> resizeNN, resizeAreaFast_,
# resizeArea_ or resizeGeneric_ (linear). Checked bit for bit against cv2.resize on random 1-
# and 3-channel images of many sizes, up and down (tests/test_resize_cv2.py).

_COEF_SCALE = 1 << 11  # INTER_RESIZE_COEF_BITS: the 8-bit linear path's fixed-point weights


def cv2_resize(a: np.ndarray, out_h: int, out_w: int, method: str) -> np.ndarray:
    """cv2.resize(a, (out_w, out_h), interpolation=...) for uint8 HxW or HxWxC; same shape
    kind out. The dispatch of hal::resize: same size copies, an exact 2x linear reduction is
    INTER_AREA, INTER_AREA reducing by whole factors averages blocks, reducing otherwise
    weighs fractional coverage, and enlarging is bilinear with area weights."""
    gray = a.ndim == 2
    x = a[:, :, None] if gray else a
    h, w = x.shape[:2]
    # scale = 1 / inv_scale, inv_scale = dst / src: doubles, as OpenCV computes them
    inv_x, inv_y = out_w / w, out_h / h
    scale_x, scale_y = 1.0 / inv_x, 1.0 / inv_y
    ix, iy = round(scale_x), round(scale_y)
    whole = abs(scale_x - ix) < _DBL_EPSILON and abs(scale_y - iy) < _DBL_EPSILON
    if (h, w) == (out_h, out_w):
        out = x.copy()
    elif method == "cv2-nearest":
        out = x[_cv2_nearest_index(h, out_h, scale_y)][:, _cv2_nearest_index(w, out_w, scale_x)]
    elif (method == "cv2-area" or (whole and ix == iy == 2)) and scale_x >= 1 and scale_y >= 1:
        out = _cv2_area_whole(x, ix, iy) if whole else _cv2_area(x, out_h, out_w, scale_x, scale_y)
    else:
        area = method == "cv2-area"
        out = _cv2_linear(
            x,
            _cv2_axis(w, out_w, scale_x, inv_x, area, True),
            _cv2_axis(h, out_h, scale_y, inv_y, area, False),
        )
    return out[:, :, 0] if gray else out


_DBL_EPSILON = float(np.finfo(np.float64).eps)
_Axis = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _cv2_nearest_index(in_size: int, out_size: int, scale: float) -> np.ndarray:
    """resizeNN: floor(dst * scale), clamped to the last pixel (no half-pixel shift)."""
    x = np.floor(np.arange(out_size, dtype=np.float64) * scale).astype(np.int64)
    return np.minimum(x, in_size - 1)


def _cv2_axis(
    in_size: int, out_size: int, scale: float, inv_scale: float, area: bool, clamp: bool
) -> _Axis:
    """resizeGeneric_'s two taps per output pixel and their 11-bit weights: half-pixel
    centres, or INTER_AREA's coverage when enlarging. Columns (`clamp`) past an edge take the
    edge pixel at full weight; rows keep their weights over the clipped rows, as OpenCV does."""
    d = np.arange(out_size, dtype=np.float64)
    if area:
        lower = np.floor(d * scale)
        f = ((d + 1) - (lower + 1) * inv_scale).astype(np.float32)
        f = np.where(f <= 0, np.float32(0), f - np.floor(f)).astype(np.float32)
    else:
        f = ((d + 0.5) * scale - 0.5).astype(np.float32)  # (float)((dx+0.5)*scale_x - 0.5)
        lower = np.floor(f)
        f = (f - lower).astype(np.float32)
    first = lower.astype(np.int64)
    if clamp:
        edge = (first < 0) | (first >= in_size - 1)
        f = np.where(edge, np.float32(0), f).astype(np.float32)
        first = np.clip(first, 0, in_size - 1)
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)  # saturate_cast<short>: cvRound
    return np.clip(first, 0, in_size - 1), np.clip(first + 1, 0, in_size - 1), w0, w1


def _cv2_linear(a: np.ndarray, cols: _Axis, rows: _Axis) -> np.ndarray:
    """HResizeLinear (integer taps x 11-bit weights), then VResizeLinearVec_32s8u's rounding:
    each row >> 4, times its weight, high 16 bits, summed, then (+2) >> 2 (not the scalar
    (sum + 2^21) >> 22, which differs by 1 at times: cv2 5.0 uses the vector rounding on every
    pixel, tails included, as the tests confirm)."""
    x0, x1, a0, a1 = cols
    y0, y1, b0, b1 = rows

    def across(lines: np.ndarray) -> np.ndarray:  # the taps only, widened: never the whole image
        return (
            lines[:, x0].astype(np.int64) * a0[None, :, None]
            + lines[:, x1].astype(np.int64) * a1[None, :, None]
        )

    top = ((across(a[y0]) >> 4) * b0[:, None, None]) >> 16
    bottom = ((across(a[y1]) >> 4) * b1[:, None, None]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def _cv2_area_whole(a: np.ndarray, ix: int, iy: int) -> np.ndarray:
    """resizeAreaFast_: the mean of each ix x iy block; 2x2 rounds (sum + 2) >> 2 (its vector
    code), other factors sum * (1.f / area) rounded half to even (cvRound)."""
    h, w, cn = a.shape
    blocks = a[: h // iy * iy, : w // ix * ix].reshape(h // iy, iy, w // ix, ix, cn)
    total = blocks.sum(axis=(1, 3), dtype=np.int64)  # accumulated wide, not copied wide
    if ix == iy == 2:
        return ((total + 2) >> 2).astype(np.uint8)
    mean = total.astype(np.float32) * np.float32(1.0 / (ix * iy))
    return np.clip(np.rint(mean), 0, 255).astype(np.uint8)


def _cv2_area(a: np.ndarray, out_h: int, out_w: int, sx: float, sy: float) -> np.ndarray:
    """resizeArea_: each output pixel the coverage-weighted mean of the source pixels its cell
    overlaps, accumulated in float32 in OpenCV's order (along rows, then down), rounded."""
    h, w = a.shape[:2]
    xi, xw = _cv2_area_table(w, out_w, sx)
    yi, yw = _cv2_area_table(h, out_h, sy)
    across = np.zeros((h, out_w, a.shape[2]), np.float32)
    for k in range(xi.shape[1]):  # padding taps weigh 0: adding 0.0 changes nothing
        across += a[:, xi[:, k]].astype(np.float32) * xw[None, :, k, None]
    total = np.zeros((out_h, out_w, a.shape[2]), np.float32)
    for k in range(yi.shape[1]):
        total += yw[:, k, None, None] * across[yi[:, k]]
    return np.clip(np.rint(total), 0, 255).astype(np.uint8)


def _cv2_area_table(in_size: int, out_size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """computeResizeAreaTab: per output pixel, the source pixels its cell covers and the share
    of the cell each covers (float32), as out_size x taps arrays padded with weight 0."""
    taps: list[list[tuple[int, float]]] = []
    for d in range(out_size):
        start = d * scale
        end = start + scale
        cell = min(scale, in_size - start)
        first = min(int(np.ceil(start)), in_size - 1)
        last = min(int(np.floor(end)), in_size - 1)
        first = min(first, last)
        row = []
        if first - start > 1e-3:
            row.append((first - 1, (first - start) / cell))
        row.extend((s, 1.0 / cell) for s in range(first, last))
        if end - last > 1e-3:
            row.append((last, min(end - last, 1.0, cell) / cell))
        taps.append(row)
    width = max(len(row) for row in taps)
    index = np.zeros((out_size, width), np.int64)
    weight = np.zeros((out_size, width), np.float32)
    for d, row in enumerate(taps):
        for k, (s, share) in enumerate(row):
            index[d, k], weight[d, k] = s, share
    return index, weight
