"""The command-line spelling of the intensity steps (`engine.intensity_steps`), as
`--pre-resize clahe:2.0:8x8` takes it: the step's name, then its parameters after colons.
`parse_step(spelling(step)) == step` for every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.intensity_steps import (
    STEPS,
    Autocontrast,
    Clahe,
    Gamma,
    ScaleAbs,
    Step,
)

FORMS = {
    "scale-abs": "scale-abs:ALPHA[:BETA[:no-fma]]",
    "equalize-hist": "equalize-hist",
    "clahe": "clahe[:CLIP[:COLSxROWS]]",
    "equalize-pil": "equalize-pil",
    "autocontrast": "autocontrast[:CUTOFF|LOW,HIGH[:LEVEL,...]]",
    "invert": "invert",
    "gamma-cv2": "gamma-cv2:EXPONENT|1/GAMMA",
    "gamma-pil": "gamma-pil:EXPONENT|1/GAMMA",
}


def parse_step(text: str) -> Step:
    """A step from its spelling, e.g. `clahe:2.0:8x8`; a UsageError names the valid forms."""
    name, *args = text.strip().split(":")
    kind = STEPS.get(name)
    if kind is None:
        raise UsageError(
            f"unknown pre-resize step {text!r}: the steps are {', '.join(FORMS.values())}"
        )
    try:
        values = _PARSERS.get(name, _nothing)(args)
    except ValueError as e:
        raise UsageError(f"pre-resize step {text!r}: {e} (the form is {FORMS[name]})") from e
    problems = kind.check(values)
    if problems:
        raise UsageError(f"pre-resize step {text!r}: {'; '.join(problems)}")
    return kind(**values)


def spelling(step: Step) -> str:
    """The spelling `parse_step` reads back as `step` (floats written exactly, with repr)."""
    if isinstance(step, ScaleAbs):
        return f"scale-abs:{step.alpha!r}:{step.beta!r}" + ("" if step.fma else ":no-fma")
    if isinstance(step, Clahe):
        return f"clahe:{step.clip_limit!r}:{step.tile_grid[0]}x{step.tile_grid[1]}"
    if isinstance(step, Autocontrast):
        low, high = step.cutoff
        text = f"autocontrast:{low!r}" + ("" if low == high else f",{high!r}")
        return text + (":" + ",".join(map(str, step.ignore)) if step.ignore else "")
    if isinstance(step, Gamma):
        return f"{step.name}:{'1/' if step.inverse else ''}{step.gamma!r}"
    return step.name


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _at_most(name: str, args: list[str], n: int) -> None:
    if len(args) > n:
        raise ValueError(f"{name} takes at most {n} parameters, got {len(args)}")


def _nothing(args: list[str]) -> dict[str, Any]:
    if args:
        raise ValueError("this step takes no parameters")
    return {}


def _scale_abs(args: list[str]) -> dict[str, Any]:
    _at_most("scale-abs", args, 3)
    if not args or (len(args) == 3 and args[2] not in ("fma", "no-fma")):
        raise ValueError("scale-abs takes ALPHA, then optionally BETA, then optionally 'no-fma'")
    values: dict[str, Any] = {"alpha": _number(args[0])}
    if len(args) > 1:
        values["beta"] = _number(args[1])
    if len(args) > 2:
        values["fma"] = args[2] == "fma"
    return values


def _clahe(args: list[str]) -> dict[str, Any]:
    _at_most("clahe", args, 2)
    values: dict[str, Any] = {"clip_limit": _number(args[0])} if args else {}
    if len(args) > 1:
        cols, x, rows = args[1].partition("x")
        if not (x and cols.isdigit() and rows.isdigit()):
            raise ValueError(f"the tile grid is COLSxROWS, e.g. 8x8, got {args[1]!r}")
        values["tile_grid"] = (int(cols), int(rows))
    return values


def _autocontrast(args: list[str]) -> dict[str, Any]:
    _at_most("autocontrast", args, 2)
    values: dict[str, Any] = {}
    if args:
        cutoff = [_number(v) for v in args[0].split(",")]
        values["cutoff"] = cutoff[0] if len(cutoff) == 1 else tuple(cutoff)
    if len(args) > 1:
        if not all(v.isdigit() for v in args[1].split(",")):
            raise ValueError(f"the levels to ignore are like 0 or 0,255, got {args[1]!r}")
        values["ignore"] = tuple(int(v) for v in args[1].split(","))
    return values


def _gamma(args: list[str]) -> dict[str, Any]:
    if len(args) != 1:
        raise ValueError("a gamma takes one exponent, EXPONENT or 1/GAMMA")
    inverse = args[0].startswith("1/")
    return {"gamma": _number(args[0][2:] if inverse else args[0]), "inverse": inverse}


_PARSERS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "scale-abs": _scale_abs,
    "clahe": _clahe,
    "autocontrast": _autocontrast,
    "gamma-cv2": _gamma,
    "gamma-pil": _gamma,
}
