"""The two preprocessing paths, `reference` and `fast`: decoded image -> the model's tensor.

`reference` is the pipeline the model's contract states, exactly as the user's own code runs
it: the decoding (Pillow's, TensorFlow's for `tf-*` filters, cv2.imread's for `cv2-*`), the
colour (RGB, grayscale, BGR), the resize filter and mode (`resize.py`), then the scaling. It is
the ground truth for parity; the training script, the parity tests and the conversion stage's
probes all call it, so there is one implementation of decode/resize/scale.

`fast` produces the same layout sooner. For Pillow's antialiasing filters it decodes JPEGs at
reduced scale in the DCT domain and box-reduces before the final filter: an approximation,
whose distance from `reference` `pneumo convert` measures per model (`fidelity.py`). For
`nearest`, TensorFlow's and OpenCV's filters, which sample single source pixels without
antialiasing (INTER_AREA is exact block arithmetic, kept exact too), no such shortcut is
faithful: there the fast path is exact (the full decode, grayscale kept single-channel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from pneumo_onnx.engine.contract import CV2_FILTERS, TF_FILTERS, Contract, InputSpec
from pneumo_onnx.engine.runtime.decoders import ImageSource, open_image
from pneumo_onnx.engine.runtime.intensity import apply_steps
from pneumo_onnx.engine.runtime.resize import resize

# The fast path lets libjpeg decode at 1/4 or 1/8 scale while staying at least DRAFT_FACTOR x
# the model's size, at 1/2 scale only while staying HALF_DRAFT_FACTOR x; its final resize
# first box-reduces by whole factors down to REDUCING_GAP x the model size (Pillow's
# reducing_gap). Trained model, 200 full-resolution X-rays, max score diff vs reference /
# decode+resize ms per image, one thread, same run: 3 / 5 / 4 (shipped): 0.012 / 5.7;
# 3 / none / none: 0.005 / 6.9; 3 / 3 / none: 0.024; 3 / 4 / 5: 0.024; 3 / 5 / 5: 0.009 / 6.1.
DRAFT_FACTOR = 3
HALF_DRAFT_FACTOR = 5
REDUCING_GAP = 4.0
# Filters that sample single source pixels (and OpenCV's, whose users expect cv2.resize's very
# pixels): a reduced-scale decode would change which pixels.
EXACT_ONLY_FILTERS = ("nearest", *TF_FILTERS, *CV2_FILTERS)
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
GRAY_BLOCK_PIXELS = 1 << 20  # 16-bit and float images are scaled to 8 bits this much at a time


def to_mode(img: Image.Image, color: str, keep_gray: bool = False) -> Image.Image:
    """8-bit 'L' (color 'grayscale') or 'RGB' (rgb, bgr: flipped later, in `finish`): 16-bit
    scaled down, alpha composited on black.

    With `keep_gray`, a grayscale image stays 'L' even for a 3-channel model (the fast path
    resizes one channel and repeats it at the end; the result is the same as resizing RGB).
    """
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        img = _to_8bit_gray(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    target = "L" if color == "grayscale" or (keep_gray and img.mode in ("L", "1")) else "RGB"
    return img if img.mode == target else img.convert(target)  # convert() would copy it


def reference_pixels(source: ImageSource, contract: Contract) -> np.ndarray:
    """One image as the model's input tensor (no batch dimension), reference path: the
    contract's whole pipeline at full resolution. The ground truth for parity."""
    return finish(reference_resized(source, contract), contract)


def fast_pixels(source: ImageSource, contract: Contract) -> np.ndarray:
    """The same output as `reference_pixels`, sooner (see `fast_resized`)."""
    return finish(fast_resized(source, contract), contract)


def reference_resized(source: ImageSource, contract: Contract) -> np.ndarray:
    """The reference path up to the model's size: pixels 0-255 that `finish` scales (uint8,
    or float32 from TensorFlow's filters), HxW or HxWxC."""
    spec = contract.input
    img = _decode_full(source, spec)
    return resize(pre_resized(to_mode(img, spec.color), spec), spec)


def fast_resized(source: ImageSource, contract: Contract) -> np.ndarray:
    """The fast path up to the model's size (what `finish` scales; grayscale stays one
    channel). Antialiasing filters: JPEGs decoded at reduced scale in the DCT domain (never
    below DRAFT_FACTOR x the model size, so the final resize still low-pass filters), a box
    pre-reduction before the declared filter, the crop or pad box of the full-size image.
    Filters that sample single pixels (`EXACT_ONLY_FILTERS`): the reference pipeline. With
    pre-resize steps, no reduced-scale decode (a histogram, a CLAHE tile, is of the full-size
    pixels): the steps run on the full decode, the box pre-reduction after them."""
    spec = contract.input
    if is_exact(spec):
        img = _decode_full(source, spec)
        return resize(pre_resized(to_mode(img, spec.color, keep_gray=True), spec), spec)
    side = DRAFT_FACTOR * max(spec.width, spec.height)
    seen: list[tuple[tuple[int, int], int]] = []

    def reduce(size: tuple[int, int]) -> int:
        seen.append((size, 1 if spec.pre_resize else draft_scale(size, (side, side))))
        return seen[-1][1]

    img = open_image(source, reduce, gray=spec.color == "grayscale")
    img = pre_resized(to_mode(img, spec.color, keep_gray=True), spec)
    full, factor = _full_size(img, seen)
    return resize(img, spec, full, factor, REDUCING_GAP)


def shortcut_side(spec: InputSpec) -> int:
    """The smallest image side (px) on which the fast path departs from the reference at all:
    where the box pre-reduction first reduces by 2 (the DCT-domain decode needs more); smaller
    images take the reference's very steps."""
    return int(2 * REDUCING_GAP * max(spec.width, spec.height))


def pre_resized(img: Image.Image, spec: InputSpec) -> Image.Image:
    """The contract's intensity steps on the 8-bit image ('L' or 'RGB'), in order. A grey
    image kept 'L' for a 3-channel model gets them once: per-channel steps on its three equal
    channels give three equal channels."""
    if not spec.pre_resize:
        return img
    return Image.fromarray(apply_steps(np.asarray(img), spec.pre_resize))


def is_exact(spec: InputSpec) -> bool:
    """True where the fast path is the reference pipeline itself (same pixels, by construction)."""
    return spec.resize_filter in EXACT_ONLY_FILTERS


PREPROCESSORS = {"fast": fast_pixels, "reference": reference_pixels}
# The same paths up to the model's size, before `finish`: what a decode worker hands back
# (an 8-bit grey 128 x 128 image is 16 KB; its float32 RGB tensor, 196 KB).
RESIZERS = {"fast": fast_resized, "reference": reference_resized}


def grey_picture(source: ImageSource, side: int) -> Image.Image:
    """An 8-bit grey image of the X-ray for people to look at (overlays, thumbnails), decoded
    at reduced scale where that keeps at least `side` px."""
    return to_mode(open_image(source, lambda size: draft_scale(size, (side, side))), "grayscale")


def display_picture(source: ImageSource, side: int) -> Image.Image:
    """`grey_picture` at the size it is shown: `fit` (Lanczos)."""
    base = grey_picture(source, side)
    return base.resize(fit(base.size, side), Image.Resampling.LANCZOS)


def fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    """An image's size when shown: its aspect ratio, long side `side`."""
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def reference_batch(sources: Sequence[ImageSource], contract: Contract) -> np.ndarray:
    """A batch through the reference path; any bad image raises (use per-item calls to skip)."""
    return np.stack([reference_pixels(s, contract) for s in sources])


def finish(pixels: np.ndarray, contract: Contract) -> np.ndarray:
    """HxW or HxWxC pixels 0-255 at model size (uint8, or float32 from TensorFlow's filters)
    -> float32 in the contract's channel order, scaling and layout."""
    spec = contract.input
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] != spec.channels:
        pixels = np.repeat(pixels, spec.channels, axis=2)
    if spec.color == "bgr":
        pixels = pixels[:, :, ::-1]
    x = scale(pixels, spec)
    if spec.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
    return x


def scale(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Pixel values 0-255, channels last -> float32 in the model's input range (the contract's
    `Scaling`, step by step in float32 as the user's code computes it)."""
    s = spec.scaler()
    x = np.array(pixels, dtype=np.float32)
    if s.multiply != 1.0:
        x *= np.float32(s.multiply)
    if s.divide != 1.0:
        x /= np.float32(s.divide)
    if any(s.mean):
        x -= np.asarray(s.mean, np.float32)
    if any(v != 1.0 for v in s.std):
        x /= np.asarray(s.std, np.float32)
    return x


def draft_scale(size: tuple[int, int], draft: tuple[int, int]) -> int:
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


def _decode_full(source: ImageSource, spec: InputSpec) -> Image.Image:
    """The full-scale decode a pipeline starts from: TensorFlow's for `tf-*` filters (its IDCT;
    libjpeg's own grayscale for a grayscale model, as decode_image(channels=1)); Pillow's
    otherwise, which is cv2.imread's for `cv2-*` filters (libjpeg's accurate IDCT, EXIF
    orientation applied, libjpeg's own grayscale as IMREAD_GRAYSCALE)."""
    tf_decoding = spec.resize_filter in TF_FILTERS
    libjpeg_gray = tf_decoding or spec.resize_filter in CV2_FILTERS
    gray = libjpeg_gray and spec.color == "grayscale"
    return open_image(source, gray=gray, tf_decoding=tf_decoding)


def _full_size(
    img: Image.Image, seen: list[tuple[tuple[int, int], int]]
) -> tuple[tuple[int, int], int]:
    """The upright full-size dimensions of an image libjpeg decoded at 1/scale, and the scale
    (EXIF orientation may have turned the reduced image by 90 degrees)."""
    if not seen or seen[-1][1] == 1:
        return img.size, 1
    (w, h), s = seen[-1]
    reduced = (-(-w // s), -(-h // s))
    return ((w, h) if img.size == reduced else (h, w)), s


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """16-bit and float grayscale: map the type's full range onto 0-255 (Pillow would clip).
    Row block by row block: the float64 arithmetic never holds more than a block."""
    rows = max(1, GRAY_BLOCK_PIXELS // img.size[0])
    blocks = range(0, img.size[1], rows)

    def values(top: int) -> np.ndarray:
        a = np.asarray(img.crop((0, top, img.size[0], min(top + rows, img.size[1]))))
        if img.mode == "F":
            return np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, None)
        return a.astype(np.float64)

    peak = max(float(values(top).max()) for top in blocks)
    if img.mode == "F":
        scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
    else:
        scale = 65535.0 if peak > 255 else 255.0
    out = np.empty((img.size[1], img.size[0]), np.uint8)
    for top in blocks:
        out[top : top + rows] = np.clip(np.rint(values(top) * (255.0 / scale)), 0, 255)
    return Image.fromarray(out, "L")
