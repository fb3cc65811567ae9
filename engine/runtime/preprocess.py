"""The two preprocessing paths, `reference` and `fast`: decoded image -> the model's tensor.

`reference` is exactly what the Keras model was trained with: full decode, EXIF orientation,
8-bit grayscale or RGB, resize to the contract's size with the contract's filter, scale. It is
the ground truth for parity; the training script, the parity tests and the conversion stage's
probes all call it, so there is one implementation of decode/resize/scale.

`fast` (the engine's default) produces the same layout from a JPEG decoded at reduced scale;
its distance from `reference` is measured on real X-rays and guarded by a parity test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from engine.contract import SCALINGS, Contract
from engine.runtime.decoders import ImageSource, open_image

# The fast path lets libjpeg decode at 1/4 or 1/8 scale while staying at least DRAFT_FACTOR x
# the model's size, at 1/2 scale only while staying HALF_DRAFT_FACTOR x; its final resize
# first box-reduces by whole factors down to REDUCING_GAP x the model size (Pillow's
# reducing_gap). Trained model, 200 full-resolution X-rays, max score diff vs reference /
# decode+resize ms per image, one thread, same run: 3 / 5 / 4 (shipped): 0.012 / 5.7;
# 3 / none / none: 0.005 / 6.9; 3 / 3 / none: 0.024; 3 / 4 / 5: 0.024; 3 / 5 / 5: 0.009 / 6.1.
DRAFT_FACTOR = 3
HALF_DRAFT_FACTOR = 5
REDUCING_GAP = 4.0
_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def to_mode(img: Image.Image, channels: int, keep_gray: bool = False) -> Image.Image:
    """8-bit 'L' or 'RGB': 16-bit scaled down, alpha composited on black.

    With `keep_gray`, a grayscale image stays 'L' even for a 3-channel model (the fast path
    resizes one channel and repeats it at the end; the result is the same as resizing RGB).
    """
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        img = _to_8bit_gray(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if channels == 1 or (keep_gray and img.mode in ("L", "1")):
        return img.convert("L")
    return img.convert("RGB")


def reference_pixels(source: ImageSource, contract: Contract) -> np.ndarray:
    """One image as the model's input tensor (no batch dimension), reference path: the full
    decode, RGB, the declared resize filter, then scaling. The ground truth for parity."""
    spec = contract.input
    img = to_mode(open_image(source), spec.channels)
    img = img.resize((spec.width, spec.height), _FILTERS[spec.resize_filter])
    return finish(np.asarray(img, dtype=np.uint8), contract)


def fast_pixels(source: ImageSource, contract: Contract) -> np.ndarray:
    """The default path, same output layout as `reference_pixels`: JPEGs decoded at reduced
    scale in the DCT domain (never below DRAFT_FACTOR x the model size, so the final resize
    still low-pass filters), grayscale kept single-channel, a box pre-reduction before the
    declared filter, uint8 until the final scaling."""
    spec = contract.input
    side = DRAFT_FACTOR * max(spec.width, spec.height)
    img = open_image(source, lambda size: draft_scale(size, (side, side)), gray=spec.channels == 1)
    img = to_mode(img, spec.channels, keep_gray=True)
    filt = _FILTERS[spec.resize_filter]
    img = img.resize((spec.width, spec.height), filt, reducing_gap=REDUCING_GAP)
    return finish(np.asarray(img, dtype=np.uint8), contract)


PREPROCESSORS = {"fast": fast_pixels, "reference": reference_pixels}


def grey_picture(source: ImageSource, side: int) -> Image.Image:
    """An 8-bit grey image of the X-ray for people to look at (overlays, thumbnails), decoded
    at reduced scale where that keeps at least `side` px."""
    return to_mode(open_image(source, lambda size: draft_scale(size, (side, side))), 1)


def reference_batch(sources: Sequence[ImageSource], contract: Contract) -> np.ndarray:
    """A batch through the reference path; any bad image raises (use per-item calls to skip)."""
    return np.stack([reference_pixels(s, contract) for s in sources])


def finish(pixels: np.ndarray, contract: Contract) -> np.ndarray:
    """uint8 HxW or HxWxC at model size -> float32 in the contract's scaling and layout."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] != contract.input.channels:
        pixels = np.repeat(pixels, contract.input.channels, axis=2)
    mul, add = SCALINGS[contract.input.scaling]
    x = pixels.astype(np.float32) * np.float32(mul / 255.0)
    if add:
        x += np.float32(add)
    if contract.input.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
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


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """16-bit and float grayscale: map the type's full range onto 0-255 (Pillow would clip)."""
    a = np.asarray(img)
    if img.mode == "F":
        a = np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, None)
        top = 1.0 if a.max() <= 1.0 else 255.0 if a.max() <= 255.0 else 65535.0
    else:
        a = a.astype(np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
