"""The sections of a version's manifest, one frozen dataclass each: what `convert` measured and
recorded, typed for its readers (engine, server, CLI, validate). Each section has `read` (from
the manifest's JSON, every problem collected through `fields`) and `to_dict` (the same JSON
back, keys in the order `convert` writes them).

Figures that are a check's own record (the labelled check's, the expected-scores check's) stay
`Figures` as measured: they are self-describing, name labels as keys, and nothing in the engine
decides on them. A variant's gate figures are typed (engine/repository/variant_figures.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pneumo_onnx.engine.repository.cam import EvidenceScale
from pneumo_onnx.engine.repository.fields import (
    Bad,
    Fields,
    count,
    flag,
    number,
    one_of,
    parse,
    sha256,
    table_of,
    text,
)
from pneumo_onnx.engine.repository.variant_figures import Figures, Precision, VariantFigures

FastOrReference = Literal["fast", "reference"]
FILE_KEYS = ("sha256", "bytes", "kind")


@dataclass(frozen=True)
class FileEntry:
    """One file of the version: its sha256, its size (the JSON's `bytes`), what it is (`kind`:
    a variant key such as fp32 or int8, or 'training list'; hand-written manifests may leave it
    out), a variant's gate figures (`variant`, typed) and any other figures its conversion
    recorded (the fp32 model's parity, a training list's image count)."""

    sha256: str
    size: int
    kind: str | None = None
    figures: Figures = field(default_factory=dict)
    variant: VariantFigures | None = None

    @property
    def precision(self) -> Precision | None:
        """How a reduced-precision variant was built (its fp32 nodes); None for the others."""
        return self.variant.precision if self.variant else None

    @property
    def fp32_mac_share(self) -> float | None:
        """The share of the multiply-adds this variant runs in fp32; None where not recorded."""
        return self.variant.fp32_mac_share if self.variant else None

    @classmethod
    def of(cls, data: bytes, info: Figures) -> FileEntry:
        """The entry a writer records for `data`, hashed and sized here; `info` holds its
        `kind` and figures (a size or hash in it is the writer's own: replaced), read as a
        reader would read them."""
        rest = {k: v for k, v in info.items() if k not in ("sha256", "bytes")}
        entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), **rest}
        return parse(cls.read, entry, "file entry")

    def to_dict(self) -> dict[str, Any]:
        kind = {} if self.kind is None else {"kind": self.kind}
        gated = {} if self.variant is None else self.variant.to_dict()
        return {"sha256": self.sha256, "bytes": self.size, **kind, **gated, **self.figures}

    @classmethod
    def read(cls, f: Fields) -> FileEntry:
        gated = VariantFigures.recorded_in(f.data)
        return cls(
            sha256=f.value("sha256", sha256, ""),
            size=f.value("bytes", count, 0),
            kind=f.optional("kind", text),
            figures={} if gated else f.rest(FILE_KEYS),
            variant=VariantFigures.read(f, besides=FILE_KEYS) if gated else None,
        )


@dataclass(frozen=True)
class Source:
    """The model the version was converted from: file name, format (keras, h5, savedmodel;
    object for a Keras model handed over in memory) and the sha256 of what was read ("" for a
    model in memory: no file was read)."""

    name: str
    format: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "sha256": self.sha256}

    @classmethod
    def read(cls, f: Fields) -> Source:
        return cls(
            f.value("name", text, ""),
            f.value("format", text, ""),
            f.value("sha256", _source_digest, ""),
        )


@dataclass(frozen=True)
class Parity:
    """The fp32 ONNX model against its source on the probes: the largest absolute output
    difference, per batch size, and the bound it met (`tolerance`, derived from the model's
    own `fp32_noise` where that was measured)."""

    max_abs_diff: float
    max_abs_diff_by_batch: Mapping[str, float]
    tolerance: float
    probes: int
    fp32_noise: Mapping[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        noise = {} if self.fp32_noise is None else {"fp32_noise": dict(self.fp32_noise)}
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_abs_diff_by_batch": dict(self.max_abs_diff_by_batch),
            "tolerance": self.tolerance,
            "probes": self.probes,
            **noise,
        }

    @classmethod
    def from_dict(cls, data: object) -> Parity:
        """The parity check's figures (convert.validate.parity_check), typed."""
        return parse(cls.read, data, "parity record")

    @classmethod
    def read(cls, f: Fields) -> Parity:
        return cls(
            max_abs_diff=f.value("max_abs_diff", number, 0.0),
            max_abs_diff_by_batch=f.value("max_abs_diff_by_batch", table_of(number), {}),
            tolerance=f.value("tolerance", number, 0.0),
            probes=f.value("probes", count, 0),
            fp32_noise=f.optional("fp32_noise", table_of(number)),
        )


@dataclass(frozen=True)
class FastPathFigures:
    """The `fast` preprocessing path against `reference`, the converted model scoring the probe
    X-rays through both (`engine.runtime.fidelity.measure`; its `verdict` reads these)."""

    images: int
    shortcut_images: int  # probes on which fast took a shortcut (its pixels differ)
    exact_by_construction: bool
    max_score_diff: float
    p99_score_diff: float
    mean_score_diff: float
    label_changes: int
    label_changes_away_from_threshold: int
    largest_threshold_distance_of_a_change: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, f: Fields) -> FastPathFigures:
        return cls(
            images=f.value("images", count, 0),
            shortcut_images=f.value("shortcut_images", count, 0),
            exact_by_construction=f.value("exact_by_construction", flag, False),
            max_score_diff=f.value("max_score_diff", number, 0.0),
            p99_score_diff=f.value("p99_score_diff", number, 0.0),
            mean_score_diff=f.value("mean_score_diff", number, 0.0),
            label_changes=f.value("label_changes", count, 0),
            label_changes_away_from_threshold=f.value(
                "label_changes_away_from_threshold", count, 0
            ),
            largest_threshold_distance_of_a_change=f.value(
                "largest_threshold_distance_of_a_change", number, 0.0
            ),
            threshold=f.value("threshold", number, 0.0),
        )


@dataclass(frozen=True)
class Preprocessing:
    """Which preprocessing path the engine's `auto` runs for this model, why, and the figures
    that decided it."""

    fast_vs_reference: FastPathFigures
    verdict: FastOrReference
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "fast_vs_reference": self.fast_vs_reference.to_dict(),
            "verdict": self.verdict,
            "reason": self.reason,
        }

    @classmethod
    def read(cls, f: Fields) -> Preprocessing:
        verdict = f.value("verdict", one_of("fast", "reference"), "reference")
        return cls(
            fast_vs_reference=f.part("fast_vs_reference", FastPathFigures.read),
            verdict="fast" if verdict == "fast" else "reference",
            reason=f.value("reason", text, ""),
        )


@dataclass(frozen=True)
class CamRecord:
    """Whether the model carries a class-activation-map output (the spec itself is in the ONNX
    metadata, `cam.CamSpec`), why or why not, and its heatmap colour scale."""

    available: bool
    detail: str
    scale: EvidenceScale | None = None

    def to_dict(self) -> dict[str, Any]:
        scale = {} if self.scale is None else {"scale": self.scale.to_dict()}
        return {"available": self.available, "detail": self.detail, **scale}

    @classmethod
    def read(cls, f: Fields) -> CamRecord:
        return cls(
            available=f.value("available", flag, False),
            detail=f.value("detail", text, ""),
            scale=f.optional("scale", _evidence_scale),
        )


@dataclass(frozen=True)
class TrainingImages:
    """The version's list of its training images: which file (also in `files`, with its
    sha256) and how many names it holds."""

    file: str
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "images": self.images}

    @classmethod
    def read(cls, f: Fields) -> TrainingImages:
        return cls(f.value("file", text, ""), f.value("images", count, 0))


@dataclass(frozen=True)
class CheckRecord:
    """One check the conversion ran (`skipped`: an optional variant that missed its gate)."""

    name: str
    passed: bool
    detail: str
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "skipped": self.skipped,
            "detail": self.detail,
        }

    @classmethod
    def read(cls, f: Fields) -> CheckRecord:
        return cls(
            name=f.value("name", text, ""),
            passed=f.value("passed", flag, False),
            detail=f.value("detail", text, ""),
            skipped=f.optional("skipped", flag) or False,  # written since variants could skip
        )


@dataclass(frozen=True)
class ProbeImages:
    """How many X-rays the conversion's gates ran on, and how many of them (spread over the
    set) served as parity probes and int8 calibration."""

    gates: int
    parity_and_calibration: int

    def to_dict(self) -> dict[str, Any]:
        return {"gates": self.gates, "parity_and_calibration": self.parity_and_calibration}

    @classmethod
    def read(cls, f: Fields) -> ProbeImages:
        return cls(f.value("gates", count, 0), f.value("parity_and_calibration", count, 0))


@dataclass(frozen=True)
class SkippedVariant:
    """An optional variant the conversion left out: why, and the gate figures it missed (None
    where it failed before it could be measured; `figures` then holds whatever was recorded)."""

    reason: str
    variant: VariantFigures | None = None
    figures: Figures = field(default_factory=dict)

    @classmethod
    def of(cls, reason: str, measured: Figures) -> SkippedVariant:
        """The record a writer makes of a skipped check's detail and figures."""
        return parse(cls.read, {"reason": reason, **measured}, "skipped variant")

    def to_dict(self) -> dict[str, Any]:
        gated = {} if self.variant is None else self.variant.to_dict()
        return {"reason": self.reason, **gated, **self.figures}

    @classmethod
    def read(cls, f: Fields) -> SkippedVariant:
        gated = VariantFigures.recorded_in(f.data)
        return cls(
            f.value("reason", text, ""),
            VariantFigures.read(f, besides=("reason",)) if gated else None,
            {} if gated else f.rest(("reason",)),
        )


def _source_digest(value: object) -> str:
    return "" if value == "" else sha256(value)


def _evidence_scale(value: object) -> EvidenceScale:
    if not isinstance(value, Mapping):
        raise Bad("a JSON object with floor, full and images")
    try:
        return EvidenceScale.from_dict(value)
    except (KeyError, TypeError, ValueError) as e:
        raise Bad(f"not a colour scale: {e}", whole=True) from e
