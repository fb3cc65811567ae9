"""What scoring one image gives, as one type for every front door.

`Engine` returns a `Result` per image: a `Scored` dict (the deployment guide's four fields) or
a `Failed` one (`error`: why that image could not be scored). Files, tables and databases hold
it as a `Row`, one schema for the CLI, `pneumo batch`, Ray, the server's jobs and reports:
`image_path, prediction, confidence, raw_score, threshold, error`.
"""

from __future__ import annotations

from typing import Final, TypedDict, final

from pneumo_onnx.engine.contract import Contract


@final
class Scored(TypedDict):
    prediction: str  # the contract's label: NORMAL or PNEUMONIA
    confidence: float  # probability of that label
    raw_score: float  # P(positive class)
    threshold: float  # the threshold the label was decided with


@final
class Failed(TypedDict):
    error: str  # a message for the user: what was expected and what arrived


Result = Scored | Failed


class Row(TypedDict):
    image_path: str
    prediction: str | None
    confidence: float | None
    raw_score: float | None
    threshold: float | None
    error: str | None


# Scored's keys, in order, read off the type (a field added there is added here too).
SCORED_FIELDS: Final[tuple[str, ...]] = tuple(Scored.__annotations__)
# Row's, spelled out so that mypy sees each as a key of Row (a test compares the two).
ROW_COLUMNS: Final = ("image_path", "prediction", "confidence", "raw_score", "threshold", "error")


def scored(contract: Contract, score: float, threshold: float) -> Scored:
    """The result of one score, labelled by the contract's one decision rule."""
    label, confidence = contract.decide(score, threshold)
    return {
        "prediction": label,
        "confidence": confidence,
        "raw_score": float(score),
        "threshold": float(threshold),
    }


def failed(message: str) -> Failed:
    return {"error": message}


def to_row(image_path: str, result: Result) -> Row:
    """A result as the one row schema (None in the columns that do not apply)."""
    if "error" in result:
        return Row(
            image_path=image_path,
            prediction=None,
            confidence=None,
            raw_score=None,
            threshold=None,
            error=result["error"],
        )
    return Row(image_path=image_path, error=None, **result)
