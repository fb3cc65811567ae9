"""`pneumo evaluate`: score a labelled folder (NORMAL/, PNEUMONIA/) and report the metrics.

Figures on few images, or on the model's own training images, do not say how the model does on
new X-rays: the evaluation says so (`caveats`) and then chooses no threshold. Training images
are those the model's version lists (engine.repository.manifest.training_list), matched by file
name: Kermany's names carry the patient id and are unique in its train split (5216 names); a
renamed copy is not recognised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.repository.manifest import training_list
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.listing import find_images
from pneumo_onnx.engine.runtime.metrics import evaluate, too_few


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    errors: list[tuple[str, str]] = field(default_factory=list)
    labels: np.ndarray | None = None  # 0/1 per scored image (for plots)
    scores: np.ndarray | None = None  # P(positive) per scored image

    def to_dict(self) -> dict[str, Any]:
        return {**self.metrics, "errors": [{"image_path": p, "error": e} for p, e in self.errors]}


def evaluate_folder(
    engine: Engine,
    folder: Path,
    threshold: float | None = None,
    target_sensitivity: float = 0.95,
    batch_size: int = 32,
) -> Evaluation:
    """Labels come from the subfolder names, which must be the model's two labels."""
    c = engine.contract
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    subfolders = [folder / c.negative_label, folder / c.positive_label]
    missing = [p.name for p in subfolders if not p.is_dir()]
    if missing:
        raise UsageError(
            f"{folder} needs subfolders {c.negative_label}/ and {c.positive_label}/ "
            f"(missing: {', '.join(missing)})"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, sub in enumerate(subfolders):
        found = find_images(sub)
        paths += found
        labels += [label] * len(found)
    t = engine.contract.threshold if threshold is None else threshold
    scores = np.full(len(paths), np.nan)
    errors = []
    for index, result in engine.stream(paths, t, batch_size):
        if "error" in result:
            errors.append((str(paths[index]), result["error"]))
        else:
            scores[index] = result["raw_score"]
    ok = ~np.isnan(scores)
    y = np.array(labels)[ok]
    seen = training_matches(engine, [p for p, good in zip(paths, ok, strict=True) if good])
    caveats = [
        reason
        for reason in (too_few(y, (c.negative_label, c.positive_label)), _seen_note(seen))
        if reason
    ]
    metrics = evaluate(y, scores[ok], t, target_sensitivity, caveats)
    metrics["training_images"] = seen
    metrics["model"] = str(engine.model.path)
    return Evaluation(metrics, errors, y, scores[ok])


def training_matches(engine: Engine, paths: list[Path]) -> dict[str, int] | None:
    """How many of `paths` the model's version lists as training images (by file name), and
    how many it lists; None when it lists none."""
    manifest = engine.model.manifest
    names = training_list(engine.model.path.parent, manifest) if manifest else None
    if names is None:
        return None
    listed = {Path(name).name for name in names}
    matched = sum(1 for p in paths if p.name in listed)
    return {"listed": len(names), "evaluated": len(paths), "matched": matched}


def _seen_note(seen: dict[str, int] | None) -> str | None:
    if not seen or not seen["matched"]:
        return None
    return (
        f"{seen['matched']} of {seen['evaluated']} images are listed as this model's training "
        "images (figures on them say nothing about X-rays it has not seen)"
    )


def report_lines(e: Evaluation) -> list[str]:
    m = e.metrics
    lines = [
        f"{m['n']} images ({m['negatives']} negative, {m['positives']} positive): "
        f"ROC AUC {m['roc_auc']:.4f}, Brier {m['brier']:.4f}"
    ]
    lines += [f"note: {reason}" for reason in m["caveats"]]
    seen = m["training_images"]
    if seen is not None and not seen["matched"]:
        lines.append(
            f"none of these images is among the {seen['listed']} training images this model "
            "lists (by file name)"
        )
    for key in ("at_threshold", "at_recommended"):
        a = m[key]
        if a is None:
            lines.append("no recommended threshold (see the notes above)")
            continue
        cm = a["confusion"]
        precision = "-" if a["precision"] is None else f"{a['precision']:.3f}"
        lines.append(
            f"threshold {a['threshold']:.4f}: accuracy {a['accuracy']:.3f}, sensitivity "
            f"{a['sensitivity']:.3f}, specificity {a['specificity']:.3f}, precision {precision}, "
            f"F1 {a['f1']:.3f}; TP {cm['tp']} FP {cm['fp']} TN {cm['tn']} FN {cm['fn']}"
        )
    if m["at_recommended"] is not None:
        lines[-1] += f"  (highest threshold with sensitivity >= {m['target_sensitivity']})"
    lines += [f"  unreadable: {p}: {err}" for p, err in e.errors]
    return lines
