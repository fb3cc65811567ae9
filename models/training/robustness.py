"""Robustness checks on validation images: how scores move under other sites' image styles.

v1 lost its specificity (0.62 at 0.5) on an external set of the same population, so these
checks look at specificity and sensitivity at the clean validation threshold, not only AUC,
under perturbations of the cached 128 px tensors. Some are stronger than the training
augmentation (gamma, contrast), and three kinds are never drawn in training at all (histogram
equalisation, JPEG compression, a 2x down-up resize): those are the fairer test.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from pneumo_onnx.engine.runtime.metrics import metrics_at, roc_auc


def _gray(x: np.ndarray) -> np.ndarray:
    return x[..., 0].astype(np.float64) / 255.0


def _to_uint8(g: np.ndarray) -> np.ndarray:
    return np.repeat(np.rint(np.clip(g, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _each(fn: Callable[[Image.Image], Image.Image]) -> Callable[[np.ndarray], np.ndarray]:
    """A per-image PIL operation on the gray channel of a uint8 NHWC batch."""

    def run(x: np.ndarray) -> np.ndarray:
        out = [np.asarray(fn(Image.fromarray(im[..., 0]))) for im in x]
        return np.repeat(np.stack(out)[..., None], 3, axis=-1)

    return run


def _gamma(g: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: _to_uint8(_gray(x) ** g)


def _contrast(c: float) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        g = _gray(x)
        mean = g.mean(axis=(1, 2), keepdims=True)
        return _to_uint8(mean + (g - mean) * c)

    return run


def _noise(sd: float) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(0)
        return _to_uint8(_gray(x) + rng.normal(0.0, sd, size=x.shape[:3]))

    return run


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def run(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("L")

    return run


def _zoom(factor: float) -> Callable[[Image.Image], Image.Image]:
    def run(im: Image.Image) -> Image.Image:
        w, h = im.size
        cw, ch = w / factor, h / factor
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        return im.resize((w, h), Image.Resampling.BICUBIC, box=box)

    return run


def _down_up(im: Image.Image) -> Image.Image:
    w, h = im.size
    small = im.resize((w // 2, h // 2), Image.Resampling.BICUBIC)
    return small.resize((w, h), Image.Resampling.BICUBIC)


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gamma_0.6": _gamma(0.6),
    "gamma_1.6": _gamma(1.6),
    "contrast_0.6": _contrast(0.6),
    "contrast_1.5": _contrast(1.5),
    "brightness_+0.1": lambda x: _to_uint8(_gray(x) + 0.1),
    "brightness_-0.1": lambda x: _to_uint8(_gray(x) - 0.1),
    "blur_1px": _each(lambda im: im.filter(ImageFilter.GaussianBlur(1.0))),
    "sharpen": _each(lambda im: im.filter(ImageFilter.UnsharpMask(2, 100, 0))),
    "noise_0.03": _noise(0.03),
    "zoom_1.1": _each(_zoom(1.1)),
    # Never drawn in training:
    "equalize": _each(ImageOps.equalize),
    "jpeg_q30": _each(_jpeg(30)),
    "down_up_2x": _each(_down_up),
}
UNSEEN = ("equalize", "jpeg_q30", "down_up_2x")


def robustness(
    score: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    """AUC, sensitivity and specificity at `threshold`, and the mean absolute score change,
    for clean `x` (uint8 NHWC) and each perturbation; plus the worst and mean over them."""
    clean = score(x)
    out: dict[str, Any] = {"clean": _figures(y, clean, clean, threshold)}
    for name, perturb in PERTURBATIONS.items():
        out[name] = _figures(y, score(perturb(x)), clean, threshold)
    rows = [out[name] for name in PERTURBATIONS]
    out["summary"] = {
        "mean_auc": float(np.mean([r["roc_auc"] for r in rows])),
        "min_auc": float(min(r["roc_auc"] for r in rows)),
        "min_sensitivity": float(min(r["sensitivity"] for r in rows)),
        "min_specificity": float(min(r["specificity"] for r in rows)),
        "mean_auc_unseen": float(np.mean([out[n]["roc_auc"] for n in UNSEEN])),
    }
    return out


def _figures(y: np.ndarray, s: np.ndarray, clean: np.ndarray, threshold: float) -> dict[str, Any]:
    m = metrics_at(y, s, threshold)
    return {
        "roc_auc": roc_auc(y, s),
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "mean_abs_score_change": float(np.mean(np.abs(s - clean))),
    }


def fullres_figures(
    score: Callable[[np.ndarray], np.ndarray],
    x224: np.ndarray,
    x_fullres: dict[str, np.ndarray],
    y: np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    """The same images from their 224 px copies and from the full-resolution files (the
    deployed pipeline's input) through each preprocessing: figures at `threshold` per source,
    and how far the scores move from the 224 px copy's."""
    base = score(x224)
    out: dict[str, Any] = {"images": len(y), "positives": int(y.sum())}
    for source, s in (
        ("224px_reference", base),
        *((f"fullres_{k}", score(v)) for k, v in x_fullres.items()),
    ):
        m = metrics_at(y, s, threshold)
        out[source] = {
            "roc_auc": roc_auc(y, s),
            "sensitivity": m["sensitivity"],
            "specificity": m["specificity"],
            "confusion": m["confusion"],
        }
        if source != "224px_reference":
            d = s - base
            out[source]["score_minus_224px"] = {
                "mean_abs": float(np.mean(np.abs(d))),
                "max_abs": float(np.max(np.abs(d))),
                "mean_normal": float(np.mean(d[y == 0])),
                "mean_pneumonia": float(np.mean(d[y == 1])),
                "calls_changed": int(np.sum((s > threshold) != (base > threshold))),
            }
    return out
