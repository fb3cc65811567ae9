"""Which images of a batch the HTML report explains with a heatmap.

A heatmap informs where the call could have gone the other way, or went the wrong way: an image
at P = 1.000 looks like every other at P = 1.000, and twelve of them say less than one image
near the threshold. So the report shows, up to its limit, first the images whose folder names a
label the model disagreed with (when the batch is a labelled folder, NORMAL/ and PNEUMONIA/, as
`pneumo evaluate` reads it), most confident mistakes first, then the images nearest the
threshold, on either side of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Reason = Literal["disagrees", "near"]


@dataclass(frozen=True)
class Choice:
    row: dict[str, Any]  # a results row (image_path, raw_score, prediction, ...)
    reason: Reason
    label: str | None  # the folder's label, where the folder names one


def folder_label(image_path: str, labels: tuple[str, str]) -> str | None:
    """The label the image's folder names (NORMAL/x.jpeg -> NORMAL), or None."""
    parent = Path(image_path).parent.name
    return parent if parent in labels else None


def choose(
    rows: list[dict[str, Any]], threshold: float, limit: int, labels: tuple[str, str]
) -> list[Choice]:
    """Up to `limit` scored rows worth a heatmap: disagreements with the folder's label
    (farthest from the threshold first), then the rest nearest the threshold. Rows without a
    score (errors) are never chosen."""
    if limit <= 0:
        return []
    scored = [r for r in rows if r.get("raw_score") is not None]

    def distance(row: dict[str, Any]) -> float:
        return abs(float(row["raw_score"]) - threshold)

    wrong = [
        Choice(r, "disagrees", label)
        for r in scored
        if (label := folder_label(str(r["image_path"]), labels)) is not None
        and label != r["prediction"]
    ]
    wrong.sort(key=lambda c: -distance(c.row))
    taken = {id(c.row) for c in wrong[:limit]}
    near = [
        Choice(r, "near", folder_label(str(r["image_path"]), labels))
        for r in sorted(scored, key=distance)
        if id(r) not in taken
    ]
    return (wrong + near)[:limit]


def has_labels(rows: list[dict[str, Any]], labels: tuple[str, str]) -> bool:
    """Whether the folders name a label for every scored row (a labelled batch)."""
    scored = [r for r in rows if r.get("raw_score") is not None]
    return bool(scored) and all(folder_label(str(r["image_path"]), labels) for r in scored)
