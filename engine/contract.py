"""The model contract: what a model expects as input and what its output means.

The conversion stage writes it into the ONNX `metadata_props` (key `pneumo.contract`); the engine,
the server and the validator read it from there. It is the one source of truth for input size,
channels and colour order, resize filter and mode, scaling, labels, positive class and default
threshold: the whole pipeline from an image file to the model's output meaning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

import numpy as np

from pneumo_onnx.engine.errors import ContractError, UsageError
from pneumo_onnx.engine.intensity_steps import ONE_CHANNEL_STEPS, Step, steps_from_list
from pneumo_onnx.engine.scaling import SCALINGS, Scaling

CONTRACT_KEY = "pneumo.contract"
PROVENANCE_KEY = "pneumo.provenance"
# Schema 2 states the whole input pipeline (colour, resize filter and mode, scaling with
# per-channel mean/std). Schema 3 adds intensity steps before the resize (`pre_resize`) and the
# `sigmoid2` output; a contract without them is still written as schema 2, so engines that
# predate schema 3 keep reading it. Schema 1 files (the shipped v1 model) read with their
# meaning then: Pillow decoding, the image stretched to the input size, RGB for 3 channels.
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)


COLORS = ("rgb", "grayscale", "bgr")
# Pillow's filters (Image.resize, as PIL code and keras.utils.load_img use them), and the
# TensorFlow pipeline of keras.utils.image_dataset_from_directory: tf.io.decode_image (JPEG
# with libjpeg's fast integer IDCT) then tf.image.resize without antialiasing.
PIL_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
TF_FILTERS = ("tf-bilinear", "tf-nearest")
# OpenCV's cv2.resize(img, (W, H), interpolation=INTER_LINEAR | INTER_AREA | INTER_NEAREST) on
# the uint8 image of cv2.imread (libjpeg's accurate IDCT, like Pillow's; libjpeg's own grayscale).
CV2_FILTERS = ("cv2-linear", "cv2-area", "cv2-nearest")
RESIZE_FILTERS = PIL_FILTERS + TF_FILTERS + CV2_FILTERS
# stretch: to the input size, aspect ratio lost; center-crop: the centred largest box of the
# input's aspect ratio, in whole pixels (load_img keep_aspect_ratio, crop_to_aspect_ratio);
# fit: the same box in fractional pixels (PIL ImageOps.fit); pad: the whole image, centred,
# black borders (ImageOps.pad, or tf.image.resize_with_pad / pad_to_aspect_ratio).
RESIZE_MODES = ("stretch", "center-crop", "fit", "pad")
# sigmoid: one unit, P(positive). softmax2: two units summing to 1, P(positive) at an index.
# sigmoid2: two independent sigmoid units (Dense(2, sigmoid) trained on one-hot labels) whose
# author reads argmax: the score o_pos / (o_0 + o_1) is above 0.5 exactly when o_pos is the
# larger, so threshold 0.5 gives argmax's label.
OutputKind = Literal["sigmoid", "softmax2", "sigmoid2"]
OUTPUT_KINDS: tuple[OutputKind, ...] = get_args(OutputKind)
Layout = Literal["NHWC", "NCHW"]
LAYOUTS: tuple[Layout, ...] = get_args(Layout)


@dataclass(frozen=True)
class InputSpec:
    """One image tensor, batch dimension first and dynamic, and the pipeline that fills it."""

    name: str = "image"
    layout: Layout = "NHWC"
    height: int = 128
    width: int = 128
    channels: int = 3
    scaling: str = "unit"
    # Pillow's Image.resize default, which the original deployment guide's preprocessing used.
    resize_filter: str = "bicubic"
    # True when a Resizing layer sits inside the model: feed it at (height, width) anyway.
    resizes_inside: bool = False
    resize_mode: str = "stretch"
    color: str = ""  # "" -> grayscale for 1 channel, rgb for 3
    mean: tuple[float, ...] | None = None  # scaling 'custom' only, on the [0, 1] scale
    std: tuple[float, ...] | None = None
    # Intensity steps on the full-size 8-bit image (after the colour, before the resize), in
    # order: what X-ray code does with cv2.convertScaleAbs, equalizeHist, CLAHE, PIL's
    # ImageOps.equalize / autocontrast, an inversion or a gamma table.
    pre_resize: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        if not self.color:
            object.__setattr__(self, "color", "grayscale" if self.channels == 1 else "rgb")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(value))
        if not all(isinstance(s, Step) for s in self.pre_resize):  # the contract's dict form
            object.__setattr__(self, "pre_resize", steps_from_list(list(self.pre_resize)))
        else:
            object.__setattr__(self, "pre_resize", tuple(self.pre_resize))

    def scaler(self) -> Scaling:
        """The scaling arithmetic, with a 'custom' mean/std filled in."""
        scaling = SCALINGS[self.scaling]
        if self.scaling == "custom" and self.mean is not None and self.std is not None:
            return replace(scaling, mean=self.mean, std=self.std)
        return scaling

    def describe(self) -> str:
        """The pipeline in one line, for `pneumo info` and conversion reports."""
        scaling = self.scaling
        if self.scaling == "custom":
            scaling += f" mean {list(self.mean or ())} std {list(self.std or ())}"
        steps = "".join(f"{s.describe()}, " for s in self.pre_resize)
        return f"{self.color}, {steps}{self.resize_filter} {self.resize_mode}, scaling {scaling}"


@dataclass(frozen=True)
class OutputSpec:
    """One score tensor: a sigmoid unit, or two units (softmax, or independent sigmoids read
    by argmax) with the positive class at an index."""

    name: str = "score"
    kind: OutputKind = "sigmoid"
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
        """The JSON form, in the oldest schema that states it (2 unless it needs 3)."""
        data = asdict(self)
        if self.input.pre_resize or self.output.kind == "sigmoid2":
            data["input"]["pre_resize"] = [s.to_dict() for s in self.input.pre_resize]
            return {"schema": SCHEMA_VERSION, **data}
        del data["input"]["pre_resize"]
        return {"schema": 2, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contract:
        try:
            schema = data.get("schema", SCHEMA_VERSION)
            if schema not in READABLE_SCHEMAS:
                raise ContractError(
                    f"model contract schema {schema!r} is not supported (this pneumo-onnx "
                    f"reads schemas {', '.join(map(str, READABLE_SCHEMAS))}): upgrade pneumo-onnx"
                )
            inputs = dict(data["input"])
            if schema == 1:  # its fields only; the new ones keep schema 1's meaning
                unknown = set(inputs) - _SCHEMA_1_INPUT
                if unknown:
                    raise TypeError(f"schema 1 has no input field {sorted(unknown)[0]!r}")
            return cls(
                input=InputSpec(**inputs),
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
        RGB in [0, 1], stretched with bicubic, one sigmoid unit, threshold 0.5; size and layout
        come from the graph's input shape.
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
        positive = out[:, self.output.positive_index]
        if self.output.kind != "sigmoid2":
            return positive
        # In float64: units one float32 step apart give a ratio float32 would round to 0.5.
        total = out.sum(axis=1, dtype=np.float64)
        # Both units 0 (saturated sigmoids): a tie, scored 0.5 as a tie of equal units is.
        return np.divide(positive, total, out=np.full(len(out), 0.5), where=total > 0)

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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-image shape in the model's layout (no batch dimension)."""
        i = self.input
        if i.layout == "NHWC":
            return (i.height, i.width, i.channels)
        return (i.channels, i.height, i.width)


_SCHEMA_1_INPUT = {
    "name",
    "layout",
    "height",
    "width",
    "channels",
    "scaling",
    "resize_filter",
    "resizes_inside",
}


def _problems(c: Contract) -> list[str]:
    p: list[str] = pipeline_problems(c.input)
    i, o = c.input, c.output
    if i.layout not in LAYOUTS:
        p.append(f"input layout must be one of {LAYOUTS}, got {i.layout!r}")
    for dim in ("height", "width"):
        v = getattr(i, dim)
        if not isinstance(v, int) or not 8 <= v <= 4096:
            p.append(f"input {dim} must be an integer in [8, 4096], got {v!r}")
    if i.channels not in (1, 3):
        p.append(f"input channels must be 1 or 3, got {i.channels!r}")
    if o.kind not in OUTPUT_KINDS:
        p.append(f"output kind must be one of {OUTPUT_KINDS}, got {o.kind!r}")
    elif o.kind == "sigmoid" and o.positive_index != 0:
        p.append("a sigmoid output has one unit: positive_index must be 0")
    elif o.kind != "sigmoid" and o.positive_index not in (0, 1):
        p.append(f"a {o.kind} output's positive_index must be 0 or 1, got {o.positive_index!r}")
    if not c.negative_label or not c.positive_label or c.negative_label == c.positive_label:
        p.append("labels must be two different non-empty names")
    if not isinstance(c.threshold, float | int) or not (
        math.isfinite(c.threshold) and 0.0 <= c.threshold <= 1.0
    ):
        p.append(f"threshold must be a finite number in [0, 1], got {c.threshold!r}")
    return p


def pipeline_problems(i: InputSpec) -> list[str]:
    """Colour, resize and scaling: each field valid, and the fields consistent together."""
    p: list[str] = []
    if i.color not in COLORS:
        p.append(f"input color must be one of {COLORS}, got {i.color!r}")
    elif i.channels == 1 and i.color != "grayscale":
        p.append(f"a 1-channel input is grayscale, got color {i.color!r}")
    if i.resize_filter not in RESIZE_FILTERS:
        p.append(f"resize filter must be one of {RESIZE_FILTERS}, got {i.resize_filter!r}")
    if i.resize_mode not in RESIZE_MODES:
        p.append(f"resize mode must be one of {RESIZE_MODES}, got {i.resize_mode!r}")
    elif i.resize_mode != "stretch" and i.resize_filter in CV2_FILTERS:
        p.append(
            f"resize filter {i.resize_filter!r} is cv2.resize(img, (width, height)), which "
            f"stretches: it takes resize mode 'stretch', not {i.resize_mode!r}"
        )
    elif i.resize_mode == "fit" and i.resize_filter in TF_FILTERS:
        p.append(
            f"resize mode 'fit' is PIL's ImageOps.fit: it takes a PIL filter, not "
            f"{i.resize_filter!r} (TensorFlow's crop_to_aspect_ratio is 'center-crop')"
        )
    one_channel = [s.name for s in i.pre_resize if s.name in ONE_CHANNEL_STEPS]
    if one_channel and i.color != "grayscale":
        p.append(
            f"pre-resize step {one_channel[0]!r} works on a grey image (cv2 takes 8-bit single-"
            f"channel images only): it needs color 'grayscale' (the image in grey, repeated to "
            f"the model's channels after), not {i.color!r}"
        )
    if i.scaling not in SCALINGS:
        p.append(f"input scaling must be one of {tuple(SCALINGS)}, got {i.scaling!r}")
        return p
    if i.scaling == "custom":
        for name in ("mean", "std"):
            p.extend(_per_channel_problems(name, getattr(i, name), i.channels))
    elif i.mean is not None or i.std is not None:
        p.append(f"a mean and std go with scaling 'custom', not {i.scaling!r}")
    if i.scaling in ("caffe", "torch") and i.channels != 3:
        p.append(f"scaling {i.scaling!r} has 3 per-channel means: it needs a 3-channel input")
    elif i.scaling == "caffe" and i.color != "bgr":
        p.append(
            "scaling 'caffe' subtracts the ImageNet means in BGR order: it needs color 'bgr' "
            "(for means in another order, use scaling 'custom' with a mean and std)"
        )
    return p


def _per_channel_problems(name: str, values: object, channels: int) -> list[str]:
    if not isinstance(values, tuple) or len(values) not in (1, channels):
        return [f"scaling 'custom' needs a {name} of 1 or {channels} numbers, got {values!r}"]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, float | int) or not math.isfinite(v):
            return [f"{name} values must be finite numbers, got {values!r}"]
        if name == "std" and v <= 0:
            return [f"std values must be positive, got {values!r}"]
    return []


def _input_from_shape(name: str, shape: Sequence[int | str | None]) -> InputSpec:
    dims = list(shape)
    if len(dims) != 4:
        raise ContractError(
            f"model input '{name}' has shape {dims}: expected an image batch [N, H, W, C] "
            "or [N, C, H, W]"
        )
    _, a, b, c = dims
    layout: Layout
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
