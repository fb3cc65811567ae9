"""Resize a decoded image to the model's input the way the user's own code did: the contract's
filter (Pillow's, or TensorFlow's without antialiasing) and mode (stretch, center-crop, fit,
pad), each computed as its library computes it.

- Pillow: `Image.resize(size, filter, box=...)`; center-crop is keras.utils.load_img's
  `keep_aspect_ratio` box (whole pixels), fit is ImageOps.fit's box (fractional pixels), pad is
  ImageOps.pad (ImageOps.contain, then pasted centred on black).
- TensorFlow (`tf-bilinear`, `tf-nearest`): tf.image.resize with half-pixel centres and no
  antialiasing, in float32 as its CPU kernel computes it (numpy here, no TensorFlow);
  center-crop is keras' smart_resize (crop_to_aspect_ratio), pad is tf.image.resize_with_pad
  (pad_to_aspect_ratio).

The fast path may hand over an image decoded at 1/`scale` of its size: every box is computed on
the full-size image and divided by `scale`, so the geometry stays that of the reference.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.contract import TF_FILTERS, InputSpec

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
