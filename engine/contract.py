"""The model contract: what a model expects as input and what its output means.

The conversion stage writes it into the ONNX `metadata_props` (key `pneumo.contract`); the engine,
the server and the validator read it from there. It is the one source of truth for input size,
channels, scaling, resize filter, labels, positive class and default threshold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from engine.errors import ContractError, UsageError

CONTRACT_KEY = "pneumo.contract"
PROVENANCE_KEY = "pneumo.provenance"
SCHEMA_VERSION = 1

# Input value range the model was trained on, as (multiplier, offset) applied to x in [0, 1].
SCALINGS: dict[str, tuple[float, float]] = {
    "unit": (1.0, 0.0),  # [0, 1]: the reference PneumoniaCNN
    "raw": (255.0, 0.0),  # [0, 255]: a Rescaling layer sits inside the model
    "symmetric": (2.0, -1.0),  # [-1, 1]: MobileNet-style preprocess_input outside the model
}
RESIZE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
OUTPUT_KINDS = ("sigmoid", "softmax2")
LAYOUTS = ("NHWC", "NCHW")


@dataclass(frozen=True)
class InputSpec:
    """One image tensor, batch dimension first and dynamic."""

    name: str = "image"
    layout: str = "NHWC"
    height: int = 128
    width: int = 128
    channels: int = 3
    scaling: str = "unit"
    # Pillow's Image.resize default, which the original deployment guide's preprocessing used.
    resize_filter: str = "bicubic"
    # True when a Resizing layer sits inside the model: feed it at (height, width) anyway.
    resizes_inside: bool = False


@dataclass(frozen=True)
class OutputSpec:
    """One score tensor: a sigmoid unit, or two softmax units (positive class at an index)."""

    name: str = "score"
    kind: str = "sigmoid"
    positive_index: int = 0


@dataclass(frozen=True)
class Contract:
    input: InputSpec = field(default_factory=InputSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    negative_label: str = "NORMAL"
    positive_label: str = "PNEUMONIA"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ContractError("invalid model contract: " + "; ".join(problems))

    # --- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contract:
        try:
            schema = data.get("schema", SCHEMA_VERSION)
            if schema != SCHEMA_VERSION:
                raise ContractError(
                    f"model contract schema {schema!r} is not supported "
                    f"(this pneumo-onnx reads schema {SCHEMA_VERSION})"
                )
            return cls(
                input=InputSpec(**data["input"]),
                output=OutputSpec(**data["output"]),
                negative_label=str(data["negative_label"]),
                positive_label=str(data["positive_label"]),
                threshold=float(data["threshold"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ContractError(f"model contract is malformed: {e}") from e

    def to_metadata(self) -> dict[str, str]:
        return {CONTRACT_KEY: json.dumps(self.to_dict(), sort_keys=True)}

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, str],
        input_name: str,
        input_shape: Sequence[int | str | None],
        output_name: str,
    ) -> Contract:
        """Read the contract from ONNX metadata, or infer safe defaults for a plain ONNX file.

        A plain file (no `pneumo.contract`) is assumed to be the reference PneumoniaCNN style:
        RGB in [0, 1], bicubic resize, one sigmoid unit, threshold 0.5; size and layout come
        from the graph's input shape.
        """
        raw = metadata.get(CONTRACT_KEY)
        if raw is not None:
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ContractError(f"model metadata '{CONTRACT_KEY}' is not JSON: {e}") from e
            if not isinstance(data, dict):
                raise ContractError(f"model metadata '{CONTRACT_KEY}' is not a JSON object")
            return cls.from_dict(data)
        return cls(
            input=_input_from_shape(input_name, input_shape),
            output=OutputSpec(name=output_name),
        )

    # --- meaning of outputs ------------------------------------------------------------------

    def scores(self, output: np.ndarray) -> np.ndarray:
        """P(positive) per batch item from the model's raw output tensor."""
        out = np.asarray(output, dtype=np.float32).reshape(len(output), -1)
        expected = 1 if self.output.kind == "sigmoid" else 2
        if out.shape[1] != expected:
            raise ContractError(
                f"model output has {out.shape[1]} values per image, "
                f"the contract's '{self.output.kind}' output has {expected}"
            )
        return out[:, self.output.positive_index]

    def label(self, score: float, threshold: float | None = None) -> str:
        """Label for a score; a score exactly at the threshold is negative, as in the seed."""
        return self.decide(score, threshold)[0]

    def decide(self, score: float, threshold: float | None = None) -> tuple[str, float]:
        """THE decision: (label, confidence) for P(positive) `score`. Positive only when the
        score is strictly above the threshold (as the seed did); confidence is the probability
        of the label given."""
        t = self.threshold if threshold is None else threshold
        if score > t:
            return self.positive_label, float(score)
        return self.negative_label, float(1.0 - score)

    def with_threshold(self, threshold: float) -> Contract:
        return replace(self, threshold=threshold)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-image shape in the model's layout (no batch dimension)."""
        i = self.input
        if i.layout == "NHWC":
            return (i.height, i.width, i.channels)
        return (i.channels, i.height, i.width)


def _problems(c: Contract) -> list[str]:
    p: list[str] = []
    i, o = c.input, c.output
    if i.layout not in LAYOUTS:
        p.append(f"input layout must be one of {LAYOUTS}, got {i.layout!r}")
    for dim in ("height", "width"):
        v = getattr(i, dim)
        if not isinstance(v, int) or not 8 <= v <= 4096:
            p.append(f"input {dim} must be an integer in [8, 4096], got {v!r}")
    if i.channels not in (1, 3):
        p.append(f"input channels must be 1 or 3, got {i.channels!r}")
    if i.scaling not in SCALINGS:
        p.append(f"input scaling must be one of {tuple(SCALINGS)}, got {i.scaling!r}")
    if i.resize_filter not in RESIZE_FILTERS:
        p.append(f"resize filter must be one of {RESIZE_FILTERS}, got {i.resize_filter!r}")
    if o.kind not in OUTPUT_KINDS:
        p.append(f"output kind must be one of {OUTPUT_KINDS}, got {o.kind!r}")
    elif o.kind == "sigmoid" and o.positive_index != 0:
        p.append("a sigmoid output has one unit: positive_index must be 0")
    elif o.kind == "softmax2" and o.positive_index not in (0, 1):
        p.append(f"a softmax2 output's positive_index must be 0 or 1, got {o.positive_index!r}")
    if not c.negative_label or not c.positive_label or c.negative_label == c.positive_label:
        p.append("labels must be two different non-empty names")
    if not isinstance(c.threshold, float | int) or not (
        math.isfinite(c.threshold) and 0.0 <= c.threshold <= 1.0
    ):
        p.append(f"threshold must be a finite number in [0, 1], got {c.threshold!r}")
    return p


def _input_from_shape(name: str, shape: Sequence[int | str | None]) -> InputSpec:
    dims = list(shape)
    if len(dims) != 4:
        raise ContractError(
            f"model input '{name}' has shape {dims}: expected an image batch [N, H, W, C] "
            "or [N, C, H, W]"
        )
    _, a, b, c = dims
    if isinstance(c, int) and c in (1, 3):
        layout, h, w, ch = "NHWC", a, b, c
    elif isinstance(a, int) and a in (1, 3):
        layout, h, w, ch = "NCHW", b, c, a
    else:
        raise ContractError(
            f"model input '{name}' has shape {dims}: cannot tell where its 1 or 3 channels are"
        )
    if not isinstance(h, int) or not isinstance(w, int):
        raise ContractError(
            f"model input '{name}' has dynamic height/width {dims} and no pneumo contract: "
            "convert it with `pneumo convert --input-size`"
        )
    return InputSpec(name=name, layout=layout, height=h, width=w, channels=ch)


def check_threshold(value: object) -> float:
    """A caller's decision threshold as a float, or a UsageError: a finite number in [0, 1]
    (bools and strings refused). The one check behind the engine, the server and the jobs."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"threshold must be a number in [0, 1], got {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UsageError(f"threshold must be a finite number in [0, 1], got {value!r}")
    return float(value)
