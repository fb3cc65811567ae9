"""What a version's manifest records of each variant it kept or skipped: the figures its gate
judged (`engine.runtime.metrics.score_agreement` against its reference on the probe images)
and, for reduced-precision variants (int8, fp16), how it was built: the nodes kept in fp32,
the share of the multiply-adds they do, and, where it missed its gate, the nodes that lose its
fidelity (convert/precision.py measures them).

Typed here so readers (pneumo info, tests, benchmarks) do not dig through dicts; any figure a
newer conversion adds that this code does not know is kept as written (`rest`) and written back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pneumo_onnx.engine.repository.fields import (
    Bad,
    Fields,
    count,
    figures,
    number,
    parse,
    text,
)

Figures = Mapping[str, Any]


@dataclass(frozen=True)
class WorstNode:
    """One node at the variant's precision, everything else fp32: what that alone costs."""

    node: str
    op: str
    alone_p99_score_diff: float
    reduced: str  # what its reduction is ("input uint8 in steps of 3.9 over [0, 1e+03]")

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op": self.op,
            "alone_p99_score_diff": self.alone_p99_score_diff,
            "reduced": self.reduced,
        }

    @classmethod
    def read(cls, f: Fields) -> WorstNode:
        return cls(
            node=f.value("node", text, ""),
            op=f.value("op", text, ""),
            alone_p99_score_diff=f.value("alone_p99_score_diff", number, 0.0),
            reduced=f.value("reduced", text, ""),
        )


PRECISION_KEYS = (
    "calibration_images",
    "target_p99_score_diff",
    "fp32_nodes",
    "attempts",
    "fp32_mac_share",
    "worst_nodes",
    "fp32_half_grey_level_p99_score_diff",
)


@dataclass(frozen=True)
class Precision:
    """How a reduced-precision variant was built: the nodes nearest the input kept in fp32 (in
    graph order), the share of the multiply-adds per image they do (what they cost in speed),
    each build attempt's calibration figures, and, only where the variant missed its gate,
    the nodes whose reduction alone moves the score most and the fp32 model's own noise floor
    (its p99 score change under half a grey level of pixel noise)."""

    fp32_nodes: tuple[str, ...]
    fp32_mac_share: float
    calibration_images: int
    target_p99_score_diff: float
    attempts: tuple[Figures, ...] = ()
    worst_nodes: tuple[WorstNode, ...] | None = None
    fp32_half_grey_level_p99_score_diff: float | None = None
    rest: Figures = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calibration_images": self.calibration_images,
            "target_p99_score_diff": self.target_p99_score_diff,
            "fp32_nodes": list(self.fp32_nodes),
            "attempts": [dict(a) for a in self.attempts],
            "fp32_mac_share": self.fp32_mac_share,
        }
        if self.worst_nodes is not None:
            out["worst_nodes"] = [w.to_dict() for w in self.worst_nodes]
        if self.fp32_half_grey_level_p99_score_diff is not None:
            out["fp32_half_grey_level_p99_score_diff"] = self.fp32_half_grey_level_p99_score_diff
        return {**out, **self.rest}

    @classmethod
    def read(cls, f: Fields) -> Precision:
        worst = f.optional("worst_nodes", _objects)
        return cls(
            fp32_nodes=tuple(f.value("fp32_nodes", _names, [])),
            fp32_mac_share=f.value("fp32_mac_share", _share, 0.0),
            calibration_images=f.value("calibration_images", count, 0),
            target_p99_score_diff=f.value("target_p99_score_diff", number, 0.0),
            attempts=tuple(f.optional("attempts", _objects) or ()),
            worst_nodes=None
            if worst is None
            else tuple(
                WorstNode.read(Fields(w, f"{f.path('worst_nodes')}[{i}]", f.problems))
                for i, w in enumerate(worst)
            ),
            fp32_half_grey_level_p99_score_diff=f.optional(
                "fp32_half_grey_level_p99_score_diff", number
            ),
            rest=f.rest(PRECISION_KEYS),
        )


VARIANT_KEYS = (
    "images",
    "near_threshold",
    "label_agreement",
    "agreement_lower_95",
    "median_score_diff",
    "p99_score_diff",
    "max_score_diff",
    "reference",
    "about",
    "gate",
    "precision",
)


@dataclass(frozen=True)
class VariantFigures:
    """A variant against its reference (fp32 ONNX, or Keras for TFLite) on the probe images,
    as its gate judged them. Conversions before the p99 gates (version 1 of the shipped
    model) recorded only agreement, max diff, images, reference and `about`: the rest is
    None there. `precision` only for reduced-precision builds since they keep fp32 layers."""

    images: int
    label_agreement: float
    max_score_diff: float
    reference: str
    about: str
    near_threshold: int | None = None
    agreement_lower_95: float | None = None
    median_score_diff: float | None = None
    p99_score_diff: float | None = None
    gate: str | None = None  # the gate it was judged by, in words
    precision: Precision | None = None
    rest: Figures = field(default_factory=dict)  # figures this code does not know, as written

    @property
    def fp32_mac_share(self) -> float | None:
        """The share of the multiply-adds its fp32 layers do; None where none was recorded."""
        return self.precision.fp32_mac_share if self.precision else None

    @classmethod
    def from_dict(cls, data: object) -> VariantFigures:
        """The figures `build_and_check` measured (a plain dict), typed."""
        return parse(cls.read, data, "variant figures")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, keys in the order `convert` writes them; what `Gate.misses` reads."""
        optional = {
            "near_threshold": self.near_threshold,
            "agreement_lower_95": self.agreement_lower_95,
            "median_score_diff": self.median_score_diff,
            "p99_score_diff": self.p99_score_diff,
        }
        out: dict[str, Any] = {"images": self.images}
        out.update({k: v for k, v in optional.items() if v is not None})
        out.update(
            label_agreement=self.label_agreement,
            max_score_diff=self.max_score_diff,
            reference=self.reference,
            about=self.about,
        )
        if self.gate is not None:
            out["gate"] = self.gate
        if self.precision is not None:
            out["precision"] = self.precision.to_dict()
        return {**out, **self.rest}

    @classmethod
    def read(cls, f: Fields, besides: Collection[str] = ()) -> VariantFigures:
        """The figures in `f`, whose fields `besides` belong to what holds them (a file entry's
        sha256, a skipped variant's reason)."""
        return cls(
            images=f.value("images", count, 0),
            label_agreement=f.value("label_agreement", _share, 0.0),
            max_score_diff=f.value("max_score_diff", number, 0.0),
            reference=f.value("reference", text, ""),
            about=f.value("about", text, ""),
            near_threshold=f.optional("near_threshold", count),
            agreement_lower_95=f.optional("agreement_lower_95", _share),
            median_score_diff=f.optional("median_score_diff", number),
            p99_score_diff=f.optional("p99_score_diff", number),
            gate=f.optional("gate", text),
            precision=f.section("precision", Precision.read),
            rest=f.rest((*VARIANT_KEYS, *besides)),
        )

    @staticmethod
    def recorded_in(data: Mapping[str, Any]) -> bool:
        """Whether `data` (a file entry's or a skipped variant's fields) holds gate figures: a
        variant that failed to build has none."""
        return "label_agreement" in data


def _share(value: object) -> float:
    share = number(value)
    if not 0.0 <= share <= 1.0:
        raise Bad("a share in [0, 1]")
    return share


def _names(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Bad("a JSON list of node names")
    return list(value)


def _objects(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise Bad("a JSON list of objects")
    try:
        return [figures(v) for v in value]
    except Bad as e:
        raise Bad("a JSON list of objects") from e
