"""Which instances the model is for: frontal chest radiographs (CR or DX, BodyPartExamined
CHEST, ViewPosition PA or AP), as it was trained on. Anything else is skipped with the reason,
unless the user says to score every view; what holds no image at all (reports, key objects,
presentation states: our own SRs among them) is skipped either way."""

from __future__ import annotations

from typing import Any

from pneumo_onnx.engine.offline.dicomweb.client import value

MODALITY, BODY_PART, VIEW = "00080060", "00180015", "00185101"
MODALITIES = ("CR", "DX")
BODY_PARTS = ("CHEST",)
VIEWS = ("PA", "AP")
# Modalities of instances without pixels to score (PS3.3 C.7.3.1.1.1).
NOT_IMAGES = ("SR", "KO", "PR", "DOC", "SEG", "REG", "RWV", "FID", "PLAN", "RTSTRUCT", "RTPLAN")
ASKED = (MODALITY, BODY_PART, VIEW)


def incomplete(attributes: dict[str, Any]) -> bool:
    """True when a search answer lacks an attribute the decision needs (not asked for, or
    left out by the server): the instance's metadata must be read instead."""
    return any(tag not in attributes for tag in ASKED)


def skip_reason(attributes: dict[str, Any], any_view: bool = False) -> str | None:
    """Why an instance is not scored: not an image, or (unless `any_view`) not a frontal chest
    radiograph; None when it is scored."""
    modality = (value(attributes, MODALITY) or "").strip().upper()
    if modality in NOT_IMAGES:
        return f"not an image: Modality is {modality}"
    if any_view:
        return None
    checks = (
        (MODALITY, "Modality", MODALITIES),
        (BODY_PART, "BodyPartExamined", BODY_PARTS),
        (VIEW, "ViewPosition", VIEWS),
    )
    for tag, keyword, accepted in checks:
        found = (value(attributes, tag) or "").strip().upper()
        if found not in accepted:
            return (
                f"not a frontal chest radiograph: {keyword} is {found or 'empty'}, expected "
                f"{' or '.join(accepted)} (--any-view scores it anyway)"
            )
    return None
