"""The declarative form of the intensity steps of `engine.runtime.intensity`: one frozen, typed
step per library call, for the model contract (`to_dict`, `Step.from_dict`, `steps_from_list`,
each reporting every problem at once) and for people (`describe()`). The command-line spelling
(`clahe:2.0:8x8`) is in `intensity_spelling`; `intensity.apply_steps` applies steps in order.

Pure data, importing only the ground floor (errors) and numpy: the contract, a layer below the
runtime, holds these steps.

Dict form: {"name": <step name>, <parameter>: <value>, ...}, JSON-ready; a parameter left out
takes the library's own default (cv2.createCLAHE(): clip 40, tiles 8x8; autocontrast: cutoff 0,
no level ignored), except a gamma's `gamma`, which has none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np

from pneumo_onnx.engine.errors import ContractError

StepName = Literal[
    "scale-abs",
    "equalize-hist",
    "clahe",
    "equalize-pil",
    "autocontrast",
    "invert",
    "gamma-cv2",
    "gamma-pil",
]
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Step:
    """One step; use a subclass. Invalid parameters raise ContractError listing each problem."""

    name: ClassVar[StepName]

    def __post_init__(self) -> None:
        problems = self.check(vars(self))
        if problems:
            raise ContractError(f"invalid pre-resize step {self.name!r}: " + "; ".join(problems))
        for f in fields(self):  # JSON's lists and whole numbers -> the fields' tuples and floats
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            elif f.type == "float":
                object.__setattr__(self, f.name, float(value))

    @classmethod
    def check(cls, values: Mapping[str, Any]) -> list[str]:
        """What is wrong with the parameters given in `values` (those left out are not
        checked), one message each."""
        return []

    def describe(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        params = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            "name": self.name,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
        }

    @classmethod
    def from_dict(cls, data: object) -> Step:
        """The step a dict describes; a ContractError lists every problem at once."""
        if not isinstance(data, Mapping):
            raise ContractError(f"a pre-resize step is an object with a 'name', got {data!r}")
        name = data.get("name")
        kind = STEPS.get(name) if isinstance(name, str) else None
        if kind is None:
            raise ContractError(f"pre-resize step name must be one of {tuple(STEPS)}, got {name!r}")
        params = [f.name for f in fields(kind)]
        known = ", ".join(params) or "no parameters"
        problems = [
            f"unknown field {key!r} ({name} has {known})"
            for key in data
            if key != "name" and key not in params
        ]
        problems += [
            f"missing field {f.name!r}"
            for f in fields(kind)
            if f.default is MISSING and f.name not in data
        ]
        values = {key: data[key] for key in params if key in data}
        problems += kind.check(values)
        if problems:
            raise ContractError(f"invalid pre-resize step {name!r}: " + "; ".join(problems))
        return kind(**values)


def _is_number(value: object, low: float, high: float = math.inf) -> bool:
    """A finite int or float (not a bool) in [low, high]."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def _number(
    values: Mapping[str, Any], key: str, what: str, low: float, high: float = math.inf
) -> list[str]:
    if key in values and not _is_number(values[key], low, high):
        return [f"{key} must be {what}, got {values[key]!r}"]
    return []


def _flag(values: Mapping[str, Any], key: str) -> list[str]:
    if key in values and not isinstance(values[key], bool):
        return [f"{key} must be true or false, got {values[key]!r}"]
    return []


@dataclass(frozen=True)
class ScaleAbs(Step):
    """cv2.convertScaleAbs(src, alpha=alpha, beta=beta). `fma` False: a CPU without fused
    multiply-add (x86 before AVX2), or cv2.setUseOptimized(False); see intensity.scale_abs."""

    alpha: float = 1.0
    beta: float = 0.0
    fma: bool = True
    name: ClassVar[StepName] = "scale-abs"

    @classmethod
    def check(cls, values: Mapping[str, Any]) -> list[str]:
        what = "a finite number within float32's range (cv2 casts it to float)"
        return [
            *_number(values, "alpha", what, -_FLOAT32_MAX, _FLOAT32_MAX),
            *_number(values, "beta", what, -_FLOAT32_MAX, _FLOAT32_MAX),
            *_flag(values, "fma"),
        ]

    def describe(self) -> str:
        how = "" if self.fma else ", without FMA"
        return f"cv2.convertScaleAbs alpha {self.alpha}, beta {self.beta}{how}"


@dataclass(frozen=True)
class EqualizeHist(Step):
    """cv2.equalizeHist(gray)."""

    name: ClassVar[StepName] = "equalize-hist"

    def describe(self) -> str:
        return "histogram equalisation (cv2.equalizeHist)"


@dataclass(frozen=True)
class Clahe(Step):
    """cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tile_grid).apply(gray); tile_grid is
    cv2's (columns, rows); clip_limit 0: no clipping."""

    clip_limit: float = 40.0
    tile_grid: tuple[int, int] = (8, 8)
    name: ClassVar[StepName] = "clahe"

    @classmethod
    def check(cls, values: Mapping[str, Any]) -> list[str]:
        problems = _number(values, "clip_limit", "a finite number >= 0 (0: no clipping)", 0)
        grid = values.get("tile_grid", (8, 8))
        if not (
            isinstance(grid, list | tuple)
            and len(grid) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid)
        ):
            problems.append(f"tile_grid must be [columns, rows], two integers >= 1, got {grid!r}")
        return problems

    def describe(self) -> str:
        clip = f"clip {self.clip_limit}" if self.clip_limit else "no clip limit"
        return f"CLAHE {clip}, tiles {self.tile_grid[0]}x{self.tile_grid[1]} (cv2)"


@dataclass(frozen=True)
class EqualizePil(Step):
    """PIL.ImageOps.equalize(image)."""

    name: ClassVar[StepName] = "equalize-pil"

    def describe(self) -> str:
        return "histogram equalisation (PIL ImageOps.equalize)"


@dataclass(frozen=True)
class Autocontrast(Step):
    """PIL.ImageOps.autocontrast(image, cutoff=cutoff, ignore=ignore or None): cutoff is
    (low, high) percent (a number n is (n, n), as in Pillow)."""

    cutoff: tuple[float, float] = (0.0, 0.0)
    ignore: tuple[int, ...] = ()
    name: ClassVar[StepName] = "autocontrast"

    def __post_init__(self) -> None:
        # Pillow's shorthands: one cutoff n for (n, n), one level for a list of one.
        if _is_number(self.cutoff, 0, 100):
            object.__setattr__(self, "cutoff", (self.cutoff, self.cutoff))
        if isinstance(self.ignore, int) and not isinstance(self.ignore, bool):
            object.__setattr__(self, "ignore", (self.ignore,))
        super().__post_init__()
        object.__setattr__(self, "cutoff", tuple(map(float, self.cutoff)))

    @classmethod
    def check(cls, values: Mapping[str, Any]) -> list[str]:
        cutoff, ignore = values.get("cutoff", 0.0), values.get("ignore", ())
        pair = cutoff if isinstance(cutoff, list | tuple) else (cutoff, cutoff)
        problems = []
        if len(pair) != 2 or not all(_is_number(v, 0, 100) for v in pair):
            problems.append(
                f"cutoff must be a percentage in [0, 100] or a pair [low, high] of them, "
                f"got {cutoff!r}"
            )
        levels = ignore if isinstance(ignore, list | tuple) else (ignore,)
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in levels
        ):
            problems.append(f"ignore must be levels in 0..255, got {ignore!r}")
        return problems

    def describe(self) -> str:
        low, high = self.cutoff
        cut = f"cutoff {low}%" if low == high else f"cutoff {low}% low, {high}% high"
        ignore = f", ignoring {', '.join(map(str, self.ignore))}" if self.ignore else ""
        return f"autocontrast {cut}{ignore} (PIL ImageOps.autocontrast)"


@dataclass(frozen=True)
class Invert(Step):
    """255 - x (PIL.ImageOps.invert, cv2.bitwise_not)."""

    name: ClassVar[StepName] = "invert"

    def describe(self) -> str:
        return "inverted (255 - x)"


@dataclass(frozen=True)
class Gamma(Step):
    """A gamma LUT with exponent `gamma`, or 1.0 / gamma when `inverse` (written `1/G` on the
    command line): state the exponent the way the user's code computes it."""

    gamma: float
    inverse: bool = False
    library: ClassVar[Literal["cv2", "pil"]]

    @classmethod
    def check(cls, values: Mapping[str, Any]) -> list[str]:
        return [
            *_number(values, "gamma", "a finite number > 0", math.ulp(0.0)),
            *_flag(values, "inverse"),
        ]

    @property
    def exponent(self) -> float:
        return 1.0 / self.gamma if self.inverse else self.gamma

    def _power(self) -> str:
        return f"(1 / {self.gamma})" if self.inverse else f"{self.gamma}"


@dataclass(frozen=True)
class GammaCv2(Gamma):
    """np.array([((i / 255.0) ** exponent) * 255 for i in range(256)]).astype("uint8"), then
    cv2.LUT: truncated."""

    name: ClassVar[StepName] = "gamma-cv2"
    library: ClassVar[Literal["cv2", "pil"]] = "cv2"

    def describe(self) -> str:
        return f"gamma (x / 255) ** {self._power()} * 255, truncated (cv2 LUT recipe)"


@dataclass(frozen=True)
class GammaPil(Gamma):
    """image.point(lambda p: 255 * (p / 255) ** exponent): rounded half to even."""

    name: ClassVar[StepName] = "gamma-pil"
    library: ClassVar[Literal["cv2", "pil"]] = "pil"

    def describe(self) -> str:
        return f"gamma 255 * (x / 255) ** {self._power()}, rounded (PIL Image.point)"


# cv2 takes 8-bit single-channel images only for these: code that ran them had a grey image.
ONE_CHANNEL_STEPS = ("equalize-hist", "clahe")
STEPS: dict[str, type[Step]] = {
    kind.name: kind
    for kind in (
        ScaleAbs,
        EqualizeHist,
        Clahe,
        EqualizePil,
        Autocontrast,
        Invert,
        GammaCv2,
        GammaPil,
    )
}


def steps_from_list(data: object) -> tuple[Step, ...]:
    """The steps of a contract's list of dicts; a ContractError lists every problem of every
    step, each with its position (1-based)."""
    if not isinstance(data, list | tuple):
        raise ContractError(f"pre-resize steps must be a list of steps, got {data!r}")
    steps, problems = [], []
    for i, item in enumerate(data, 1):
        try:
            steps.append(Step.from_dict(item))
        except ContractError as e:
            problems.append(f"step {i}: {e.message}")
    if problems:
        raise ContractError("; ".join(problems))
    return tuple(steps)
