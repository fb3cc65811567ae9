"""Heatmaps: where in the X-ray the model found its evidence, with numpy and onnxruntime only.

Two methods:

- `cam` (default): class activation map from the model's feature-map output
  (engine/repository/cam.py). One model run, the same as scoring; needs a model converted with
  that output (the shipped one is). Values in logit units: the logit (less the bias) the model
  would give if every location looked like this one; their mean plus the bias is its logit.
- `occlusion`: for any model. The image is cut into a `grid` x `grid` raster; each cell in turn
  is painted with the image's mean value and the drop of the logit is recorded (positive: the
  cell spoke for the positive class). grid**2 extra runs, batched through the same session, so it
  is opt-in (`method="occlusion"`, or `"auto"` to use it only where CAM is unavailable).

Every heatmap carries its colour scale (engine.repository.cam.EvidenceScale), fixed per model
so that colours compare between images: the one stored in the model at conversion (CAM), else
one measured the same way on the shipped sample X-rays at first use and kept per engine (CAM of
a model converted before scales were stored: 6 runs; occlusion: 6 x (grid**2 + 1) runs).

    from engine.explain.heatmap import compute
    heatmap = compute(engine, engine.preprocess("xray.jpeg"))   # the numbers; pictures: overlay
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.explain import DEFAULT_GRID, MAX_GRID, METHODS, Method
from pneumo_onnx.engine.repository.cam import CamSpec, EvidenceScale, measure_scale
from pneumo_onnx.engine.runtime.decoders import ImageSource, read_once
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.results import Scored
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.runtime.session import run, run_batched

UNITS = {"cam": "logit (class activation)", "occlusion": "logit drop when hidden"}


@dataclass(frozen=True)
class Heatmap:
    """A signed map over the whole image (rows, cols of the model's input grid, coarse)."""

    values: np.ndarray  # (h, w) float64; > 0 speaks for the positive class
    method: Method
    unit: str  # what one unit of `values` is, for the legend
    score: float  # P(positive) from the same run
    scale: EvidenceScale  # the model's colour scale, in the unit of `values`
    scale_source: str  # where the scale comes from, for the legend


_samples_scales: weakref.WeakKeyDictionary[Engine, dict[tuple[str, int], EvidenceScale]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def cam_spec(engine: Engine) -> CamSpec | None:
    """The model's CAM spec (pneumo.cam metadata), or None if it was converted without one."""
    return CamSpec.from_metadata(engine.session.get_modelmeta().custom_metadata_map)


def check_method(engine: Engine, method: str, grid: int = DEFAULT_GRID) -> Method:
    """The method that will run ('cam' or 'occlusion'), or a UsageError before any work."""
    if method not in METHODS:
        raise UsageError(f"heatmap method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 2 <= grid <= MAX_GRID:
        raise UsageError(f"occlusion grid must be between 2 and {MAX_GRID}, got {grid}")
    if method == "occlusion":
        return "occlusion"
    if cam_spec(engine) is not None:
        return "cam"
    if method == "auto":
        return "occlusion"
    raise UsageError(
        f"{engine.model.path.name} has no class activation map output (that needs global "
        "average pooling before the classifier, converted by pneumo convert): use the heatmap "
        "method 'occlusion' (slower) or 'auto'"
    )


def compute(
    engine: Engine, x: np.ndarray, method: str = "cam", grid: int = DEFAULT_GRID
) -> Heatmap:
    """The heatmap of one preprocessed image tensor (no batch dimension)."""
    if check_method(engine, method, grid) == "cam":
        spec = cam_spec(engine)
        assert spec is not None  # check_method said so
        return class_activation_map(engine, spec, x)
    return occlusion_map(engine, x, grid)


def class_activation_map(engine: Engine, spec: CamSpec, x: np.ndarray) -> Heatmap:
    """Score and feature map from one run; the map weighed with the classifier in numpy."""
    maps, scores = _cams(engine, spec, x[None])
    if spec.scale is not None:
        scale, source = spec.scale, f"from {spec.scale.images} X-rays at conversion"
    else:  # converted before scales were stored
        scale = samples_scale(engine, "cam")
        source = f"from {scale.images} sample X-rays (none stored)"
    return Heatmap(maps[0], "cam", UNITS["cam"], float(scores[0]), scale, source)


def occlusion_map(engine: Engine, x: np.ndarray, grid: int = DEFAULT_GRID) -> Heatmap:
    """Logit drop when each cell of a grid x grid raster is hidden (mean-filled)."""
    if not 2 <= grid <= MAX_GRID:
        raise UsageError(f"occlusion grid must be between 2 and {MAX_GRID}, got {grid}")
    values, score = _occlusion(engine, x, grid)
    scale = samples_scale(engine, "occlusion", grid)
    source = f"from {scale.images} sample X-rays, grid {grid}"
    return Heatmap(values, "occlusion", UNITS["occlusion"], score, scale, source)


def samples_scale(engine: Engine, method: Method, grid: int = DEFAULT_GRID) -> EvidenceScale:
    """The colour scale measured on the shipped sample X-rays (measure_scale), once per engine,
    method and grid: for occlusion, and for CAM of a model that stores no scale."""
    key = (method, grid if method == "occlusion" else 0)
    with _lock:
        known = _samples_scales.get(engine, {}).get(key)
    if known is not None:
        return known
    x = np.stack([engine.preprocess(p) for p in sample_images()])
    if method == "cam":
        spec = cam_spec(engine)
        assert spec is not None  # only asked for a model with CAM
        maps, scores = _cams(engine, spec, x)
    else:
        pairs = [_occlusion(engine, image, grid) for image in x]
        maps, scores = np.stack([m for m, _ in pairs]), np.array([s for _, s in pairs])
    scale = measure_scale(maps, scores, engine.contract.threshold)
    with _lock:
        _samples_scales.setdefault(engine, {})[key] = scale
    return scale


def _cams(engine: Engine, spec: CamSpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, h, w) CAMs and N scores of a batch, from one run."""
    out, features = run(engine.session, x, [engine.contract.output.name, spec.output])
    return spec.maps(features), engine.contract.scores(out).astype(np.float64)


def _occlusion(engine: Engine, x: np.ndarray, grid: int) -> tuple[np.ndarray, float]:
    """(grid, grid) logit drops and the untouched image's score, from one batched run."""
    nchw = engine.contract.input.layout == "NCHW"
    image = np.moveaxis(x, 0, -1) if nchw else x  # (H, W, C) view
    height, width = image.shape[:2]
    rows = np.linspace(0, height, grid + 1).round().astype(int)
    cols = np.linspace(0, width, grid + 1).round().astype(int)
    fill = image.mean(axis=(0, 1))
    batch = np.repeat(image[None], grid * grid + 1, axis=0)  # first: the untouched image
    for r in range(grid):
        for c in range(grid):
            batch[1 + r * grid + c, rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = fill
    if nchw:
        batch = np.ascontiguousarray(np.moveaxis(batch, -1, 1))
    scores = engine.contract.scores(run_batched(engine.session, batch, batch_size=32))
    # In logit units: a confident score sits where the sigmoid is flat, and score drops there
    # would all read ~0.
    p = np.clip(scores.astype(np.float64), 1e-7, 1.0 - 1e-7)
    logits = np.log(p) - np.log1p(-p)
    drop = logits[0] - logits[1:]
    return drop.reshape(grid, grid), float(scores[0])


def heatmap_for(
    engine: Engine,
    image: ImageSource,
    method: str = "cam",
    grid: int = DEFAULT_GRID,
    threshold: float | None = None,
) -> tuple[Heatmap, Scored, bytes | Image.Image | np.ndarray]:
    """Heatmap and result of one image, plus the image read once (for drawing it)."""
    data = read_once(image)
    heatmap = compute(engine, engine.preprocess(data), method, grid)
    return heatmap, engine.result(heatmap.score, engine.resolve_threshold(threshold)), data
