"""Class activation maps (CAM) in numpy, from an optional feature-map output of the ONNX model.

For a model whose classifier is `Dense(GlobalAveragePooling(F))`, the logit is
`mean_xy(sum_k w_k F_k(x, y)) + b`, so `M(x, y) = sum_k w_k F_k(x, y)` says how much each
location of the last convolutional feature map pushes the logit (Zhou et al., CVPR 2016).

The conversion stage (convert/cam.py) stores what the engine needs in the ONNX metadata
(`pneumo.cam`, JSON): the name of the extra graph output holding F, its layout, and the
classifier weights `w` and bias `b` of the positive-class logit (for a 2-unit softmax, the
difference positive minus negative, whose sigmoid is the softmax probability). The score
output stays the graph's first output; the engine fetches the feature map only when asked.

Optional in that metadata (older models lack it, and stay readable): `scale`, the colour scale
of the model's heatmaps, measured at conversion on the real probe X-rays (`measure_scale`), so
that every picture of one model uses the same colours for the same evidence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo_onnx.engine.errors import ContractError

CAM_KEY = "pneumo.cam"
CAM_SCHEMA = 1  # `scale` is optional, so adding it kept the schema: old readers ignore it
FEATURE_OUTPUT = "feature_map"
SCALE_PERCENTILE = 99.0


@dataclass(frozen=True)
class EvidenceScale:
    """Where a heatmap's colour starts (`floor`) and where it is full (`full`), in the map's
    own unit (logit for CAM and occlusion), measured on `images` real X-rays.

    The floor is how high the map rises on X-rays the model calls NORMAL: values below it are
    what normal X-rays show too, and get no colour, so a NORMAL X-ray looks quiet.
    """

    floor: float
    full: float
    images: int

    def to_dict(self) -> dict[str, float | int]:
        return {"floor": self.floor, "full": self.full, "images": self.images}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvidenceScale:
        scale = cls(float(data["floor"]), float(data["full"]), int(data["images"]))
        if not (0.0 <= scale.floor < scale.full < math.inf) or scale.images < 1:
            raise ValueError(
                f"scale needs 0 <= floor < full (finite) and images >= 1, got floor "
                f"{scale.floor}, full {scale.full}, images {scale.images}"
            )
        return scale


def measure_scale(maps: np.ndarray, scores: np.ndarray, threshold: float) -> EvidenceScale:
    """The colour scale of a model, from the heatmaps (N, h, w) of N real X-rays and their
    scores: `floor` is the SCALE_PERCENTILE-th percentile of the map values on the X-rays called
    NORMAL (0 if none is, or if it is not below `full`), `full` the same percentile of the
    positive values on all of them (of the absolute values if none is positive)."""
    m = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    if not len(m) or len(m) != len(scores):
        raise ValueError(f"measure_scale needs one score per map, got {len(m)} and {len(scores)}")
    positive = m[m > 0]
    values = positive if positive.size else np.abs(m).ravel()
    full = float(np.percentile(values, SCALE_PERCENTILE)) or 1.0  # all-zero maps: any scale
    normal = m[np.asarray(scores) <= threshold]
    floor = float(np.percentile(normal, SCALE_PERCENTILE)) if normal.size else 0.0
    floor = max(0.0, floor) if floor < full else 0.0  # a map that does not separate: no floor
    return EvidenceScale(round(floor, 4), round(full, 4), len(m))


@dataclass(frozen=True)
class CamSpec:
    """Where the feature map is and how to weigh it."""

    output: str  # graph output holding the last conv feature map
    layout: str  # NHWC or NCHW
    weights: np.ndarray  # (channels,) float64: positive-class logit weights
    bias: float
    layer: str = ""  # the Keras layer whose output F is (for people reading the metadata)
    scale: EvidenceScale | None = None  # None: converted before scales were stored

    def to_metadata(self) -> dict[str, str]:
        data: dict[str, object] = {
            "schema": CAM_SCHEMA,
            "output": self.output,
            "layout": self.layout,
            "weights": [float(w) for w in self.weights],
            "bias": float(self.bias),
            "layer": self.layer,
        }
        if self.scale is not None:
            data["scale"] = self.scale.to_dict()
        return {CAM_KEY: json.dumps(data, sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> CamSpec | None:
        """The spec, or None for a model converted without one (then use occlusion)."""
        raw = metadata.get(CAM_KEY)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            if data.get("schema") != CAM_SCHEMA:
                raise ContractError(
                    f"model metadata '{CAM_KEY}' has schema {data.get('schema')!r}: "
                    f"this pneumo-onnx reads schema {CAM_SCHEMA}"
                )
            spec = cls(
                output=str(data["output"]),
                layout=str(data["layout"]),
                weights=np.asarray(data["weights"], dtype=np.float64),
                bias=float(data["bias"]),
                layer=str(data.get("layer", "")),
                scale=EvidenceScale.from_dict(data["scale"]) if "scale" in data else None,
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ContractError(f"model metadata '{CAM_KEY}' is malformed: {e}") from e
        if spec.layout not in ("NHWC", "NCHW") or spec.weights.ndim != 1 or not spec.weights.size:
            raise ContractError(
                f"model metadata '{CAM_KEY}': layout must be NHWC or NCHW and weights a "
                f"non-empty list, got {spec.layout!r} and {spec.weights.shape}"
            )
        return spec

    def maps(self, features: np.ndarray) -> np.ndarray:
        """(N, h, w) CAMs in logit units from a (N, h, w, C) or (N, C, h, w) feature batch."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 4:
            raise ContractError(f"feature map has shape {f.shape}: expected 4 dimensions")
        if self.layout == "NCHW":
            f = f.transpose(0, 2, 3, 1)
        if f.shape[3] != self.weights.size:
            raise ContractError(
                f"feature map has {f.shape[3]} channels, the CAM weights {self.weights.size}"
            )
        return f @ self.weights

    def scores(self, maps: np.ndarray) -> np.ndarray:
        """P(positive) rebuilt from CAMs: sigmoid(mean + bias). Equals the model's score for a
        GAP-then-Dense head; the conversion stage checks that before storing the spec."""
        logits = maps.reshape(len(maps), -1).mean(axis=1) + self.bias
        return 0.5 * (1.0 + np.tanh(0.5 * logits))  # the sigmoid, without exp overflow
