"""Detect a model's input contract and output kind from its layers and from probing it."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_onnx.convert.applications import input_scaling
from pneumo_onnx.convert.probes import real_batch
from pneumo_onnx.convert.source import LoadedSource
from pneumo_onnx.engine.contract import (
    OUTPUT_KINDS,
    Contract,
    InputSpec,
    OutputSpec,
    pipeline_problems,
)
from pneumo_onnx.engine.errors import ContractError, UsageError
from pneumo_onnx.engine.intensity_steps import Step
from pneumo_onnx.engine.presets import pipeline_fields
from pneumo_onnx.engine.runtime.preprocess import finish

log = logging.getLogger(__name__)

POSITIVE_LABEL = "PNEUMONIA"


@dataclass(frozen=True)
class Overrides:
    """What the user said on the command line; None means 'detect' (or the contract's default).
    The pipeline fields come from `presets`, each overridden by its explicit flag."""

    input_size: tuple[int, int] | None = None
    input_scaling: str | None = None
    resize_filter: str | None = None
    resize_mode: str | None = None
    color: str | None = None
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    pre_resize: tuple[Step, ...] | None = None  # intensity steps before the resize, in order
    presets: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None  # in output-index order for softmax2; (neg, pos) else
    positive_index: int | None = None
    output_kind: str | None = None  # one of OUTPUT_KINDS, where the final activation is hidden
    threshold: float | None = None  # None: the contract's default (0.5)


def detect_contract(src: LoadedSource, o: Overrides, images: Sequence[Path] = ()) -> Contract:
    """The model's contract; `images` (real X-rays) check what its output units add up to."""
    layers = list(_walk_layers(src.model)) if src.model is not None else []
    spec = _input_spec(src, o, layers)
    # Only graph models list layers in call order; a subclassed model's order is attribute order.
    ordered = layers if _is_graph_model(src.model) else []
    real = real_batch(Contract(input=spec), images) if images else None
    output = _output_spec(src, spec, o, ordered, real)
    negative, positive = _labels(output, o)
    return Contract(
        input=spec,
        output=output,
        negative_label=negative,
        positive_label=positive,
        **({} if o.threshold is None else {"threshold": o.threshold}),
    )


def _input_spec(src: LoadedSource, o: Overrides, layers: list[Any]) -> InputSpec:
    shape = src.input_shape
    if len(shape) != 4:
        raise ContractError(
            f"{src.name} takes input of shape {shape}: expected an image batch (N, H, W, C)"
        )
    _, h, w, c = shape
    if c not in (1, 3):
        raise ContractError(
            f"{src.name} takes {c} channels per pixel (shape {shape}): expected 1 (grayscale) or "
            "3 (RGB), channels last"
        )
    resizing = [layer for layer in layers if type(layer).__name__ == "Resizing"]
    rescaling = [layer for layer in layers if type(layer).__name__ == "Rescaling"]
    if o.input_size is not None:
        if h is not None and w is not None and (h, w) != o.input_size:
            raise UsageError(
                f"--input-size {o.input_size[0]}x{o.input_size[1]} contradicts the model's "
                f"declared input {h}x{w}"
            )
        h, w = o.input_size
    elif (h is None or w is None) and resizing:
        h, w = int(resizing[0].height), int(resizing[0].width)
    if h is None or w is None:
        raise ContractError(
            f"{src.name} accepts any image size ({shape}) and has no Resizing layer: "
            "pass --input-size HxW (the size it was trained at)"
        )
    stated = pipeline_fields(
        o.presets,
        {
            "resize_filter": o.resize_filter,
            "resize_mode": o.resize_mode,
            "color": o.color,
            "scaling": o.input_scaling,
            "mean": o.input_mean,
            "std": o.input_std,
            "pre_resize": o.pre_resize,
        },
    )
    _check_mean_std(stated, o, int(c))
    if stated.get("scaling") is None and not layers:
        log.warning(
            "%s: cannot see the model's layers (plain SavedModel); assuming inputs in [0, 1]."
            " Pass --input-scaling raw if it rescales 0-255 itself",
            src.name,
        )
    graph = _is_graph_model(src.model)
    detected = "raw" if rescaling else "unit"
    stated["scaling"] = input_scaling(src.name, src.model, graph, stated.get("scaling"), detected)
    spec = InputSpec(
        height=int(h),
        width=int(w),
        channels=int(c),
        resizes_inside=bool(resizing),
        **stated,
    )
    problems = pipeline_problems(spec)
    if problems:  # what the presets and flags say cannot be one pipeline
        raise UsageError(f"the input pipeline stated (--preset, flags): {'; '.join(problems)}")
    return spec


def _check_mean_std(stated: dict[str, Any], o: Overrides, channels: int) -> None:
    """--input-mean/--input-std: both given (or one over a preset's pair), one value or one per
    channel. Values in pixel units (any above 1: an author who subtracts 123.68 from 0-255
    pixels, or divides by 58.4) are divided by 255, to the contract's [0, 1] scale."""
    if stated.get("scaling") != "custom":
        return
    for flag, name in (("--input-mean", "mean"), ("--input-std", "std")):
        other = "--input-std" if name == "mean" else "--input-mean"
        values = stated.get(name)
        if values is None:
            raise UsageError(
                f"{other} needs {flag} too: the scaling is (x / 255 - mean) / std per channel; "
                "pass both (e.g. --input-mean 0.485,0.456,0.406 --input-std 0.229,0.224,0.225)"
            )
        if len(values) not in (1, channels):
            raise UsageError(
                f"{flag} has {len(values)} values but the model takes {channels} channel"
                f"{'s' if channels > 1 else ''} per pixel: give 1 value"
                + (f" or {channels}" if channels > 1 else "")
            )
    given = {"mean": o.input_mean, "std": o.input_std}
    if max((abs(v) for values in given.values() for v in values or ()), default=0.0) <= 1.0:
        return
    for name, values in given.items():  # a preset's values are on [0, 1] already
        if values is not None:
            stated[name] = tuple(v / 255.0 for v in values)
    log.info(
        "--input-mean/--input-std in pixel units (0-255, a value above 1): read as mean %s, "
        "std %s on the [0, 1] scale",
        [round(v, 6) for v in stated["mean"]],
        [round(v, 6) for v in stated["std"]],
    )


def _output_spec(
    src: LoadedSource,
    spec: InputSpec,
    o: Overrides,
    layers: list[Any],
    real: np.ndarray | None = None,
) -> OutputSpec:
    """One sigmoid unit, two softmax units or two sigmoid units (or what --output-kind says),
    judged from the final activation where the layers are visible and from outputs on uniform
    noise and on real X-rays (`real`): a saturated model sums to 1 on noise whatever its
    activation."""
    rng = np.random.default_rng(0)  # noise pixels, scaled as the contract scales real ones
    pixels = rng.random((4, spec.height, spec.width, spec.channels), dtype=np.float32) * 255.0
    probe = np.stack([finish(p, Contract(input=spec)) for p in pixels])
    out = src.predict(probe)
    flat = out.reshape(len(out), -1)
    on_real = src.predict(real).reshape(len(real), -1) if real is not None else flat[:0]
    units = flat.shape[1]
    both = np.concatenate([flat, on_real])
    in_unit_range = bool(np.all((both >= 0.0) & (both <= 1.0)))
    activation = _final_activation(layers)
    if o.output_kind is not None and o.output_kind not in OUTPUT_KINDS:
        raise UsageError(f"--output-kind must be one of {', '.join(OUTPUT_KINDS)}")
    if units == 1:
        if o.output_kind not in (None, "sigmoid"):
            raise ContractError(
                f"--output-kind {o.output_kind}: {src.name} outputs one value per image"
            )
        if activation not in (None, "sigmoid") or not in_unit_range:
            raise ContractError(
                f"unknown output kind: {src.name} has one output unit but its final activation "
                f"is {activation or 'unknown'} and it produced {both.min():.3g}..{both.max():.3g}:"
                " expected a sigmoid probability (add a sigmoid to the model)"
            )
        return OutputSpec(kind="sigmoid", positive_index=0)
    if units == 2:
        sums = _sums(flat, "uniform noise") + (
            f" and {_sums(on_real, f'{len(on_real)} real X-rays')}" if len(on_real) else ""
        )
        stated = o.output_kind
        if stated == "sigmoid2" or (stated is None and activation == "sigmoid"):
            if not in_unit_range:
                raise ContractError(
                    f"unknown output kind: {src.name} has two output units said to be sigmoids "
                    f"but it produced {both.min():.3g}..{both.max():.3g}, not probabilities"
                )
            return OutputSpec(kind="sigmoid2", positive_index=_positive_index(src, o))
        if stated == "sigmoid":
            raise ContractError(
                f"--output-kind sigmoid: {src.name} outputs 2 values per image, a sigmoid "
                "output has one (use softmax2 or sigmoid2)"
            )
        if not in_unit_range or not np.allclose(both.sum(axis=1), 1.0, atol=1e-3):
            raise ContractError(
                f"unknown output kind: {src.name} has two output units that are not softmax "
                f"probabilities (final activation {activation or 'unknown'}; rows must sum to 1, "
                f"they sum to {sums}): add a softmax to the model, or if they are two sigmoids "
                "your application reads by argmax, pass --output-kind sigmoid2"
            )
        return OutputSpec(kind="softmax2", positive_index=_positive_index(src, o))
    raise ContractError(
        f"unknown output kind: {src.name} outputs {units} values per image (shape "
        f"{out.shape[1:]}): expected one sigmoid unit or two (softmax or sigmoid) units"
    )


def _sums(rows: np.ndarray, on: str) -> str:
    total = rows.sum(axis=1)
    return f"{total.min():.3g}..{total.max():.3g} on {on}"


def _positive_index(src: LoadedSource, o: Overrides) -> int:
    if o.positive_index is not None:
        if o.positive_index not in (0, 1):
            raise UsageError(f"--positive-index must be 0 or 1, got {o.positive_index}")
        return o.positive_index
    if o.labels is not None:
        upper = [label.upper() for label in o.labels]
        if len(upper) == 2 and POSITIVE_LABEL in upper:
            return upper.index(POSITIVE_LABEL)
        raise UsageError(
            f"--labels {','.join(o.labels)}: cannot tell the positive class; name it "
            f"{POSITIVE_LABEL} or pass --positive-index"
        )
    raise UsageError(
        f"{src.name} has a 2-unit output: say which unit is P({POSITIVE_LABEL}) with "
        "--positive-index 0|1, or --labels in output order (e.g. --labels NORMAL,PNEUMONIA)"
    )


def _labels(output: OutputSpec, o: Overrides) -> tuple[str, str]:
    if o.labels is None:
        return ("NORMAL", POSITIVE_LABEL)
    if len(o.labels) != 2:
        raise UsageError(f"--labels needs exactly two names, got {len(o.labels)}")
    if output.kind != "sigmoid":  # two units: the labels name them in output order
        return (o.labels[1 - output.positive_index], o.labels[output.positive_index])
    return (o.labels[0], o.labels[1])


def _final_activation(layers: list[Any]) -> str | None:
    """Name of the last layer's activation, if the last layer has one."""
    for layer in reversed(layers):
        act = getattr(layer, "activation", None)
        if act is not None:
            return getattr(act, "__name__", str(act))
        if type(layer).__name__ == "Softmax":  # keras.layers.Softmax has no `activation`
            return "softmax"
        if type(layer).__name__ not in ("Dropout", "Flatten", "Reshape", "InputLayer"):
            return None
    return None


def _is_graph_model(model: Any) -> bool:
    return bool(getattr(model, "_is_graph_network", False)) or type(model).__name__ in (
        "Sequential",
        "Functional",
    )


def _walk_layers(model: Any) -> Iterator[Any]:
    """Every layer, nested models flattened, in order."""
    for layer in getattr(model, "layers", []):
        if getattr(layer, "layers", None):
            yield from _walk_layers(layer)
        else:
            yield layer
