"""The labelled sanity gate: the converted model, as the engine runs it, on X-rays whose class
is known.

Parity proves the ONNX graph equals the Keras model; it cannot see a wrong contract. A label
order read the wrong way round turns a good classifier into an inverted one (ROC AUC 0.10
instead of 0.90) and a wrong input scaling collapses its specificity, while every parity figure
stays perfect. When an `--images` folder holds one subfolder per label of the model
(`NORMAL/`, `PNEUMONIA/`), `pneumo convert` and `pneumo validate` score those images through
the engine's own preprocessing and fail below ROC AUC 0.5 (or `--min-auc`), saying which label
order or input scaling would score clearly better.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_onnx.convert.report import CheckFailed, Figures, Report
from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import ContractError, UsageError
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.listing import list_images
from pneumo_onnx.engine.runtime.metrics import metrics_at, roc_auc
from pneumo_onnx.engine.scaling import SCALINGS

log = logging.getLogger(__name__)

# A model "useful" on the labelled images reaches this ROC AUC: below 0.5 with a useful swap is
# "labels look inverted"; another input scaling is suggested only if it is useful too.
USEFUL_AUC = 0.7
ALTERNATIVE_IMAGES = 64  # per class: images each alternative input scaling is tried on
# "Clearly better" (and useful): ROC AUC higher by BETTER_AUC, or balanced accuracy at the
# model's threshold higher by BETTER_BALANCED with an AUC no more than BETTER_AUC lower.
BETTER_AUC = 0.05
BETTER_BALANCED = 0.10


def labelled_images(
    folders: Sequence[str | Path], contract: Contract
) -> tuple[list[Path], np.ndarray] | None:
    """Images under every folder (the given ones, or any folder inside them, as in
    chest_xray/train/ and chest_xray/test/) that holds one subfolder per label of the model,
    with 0 (negative label) or 1 (positive label) each; None when there are none of both."""
    paths: list[Path] = []
    labels: list[int] = []
    for folder in map(Path, folders):
        groups = [d for d in (folder, *sorted(folder.rglob("*"))) if _holds_labels(d, contract)]
        if not groups:
            _say_if_labelled_otherwise(folder, contract)
        for group in groups:
            for label, name in enumerate((contract.negative_label, contract.positive_label)):
                found = list_images(group / name)
                paths += found
                labels += [label] * len(found)
    y = np.array(labels, dtype=int)
    if not paths or y.all() or not y.any():
        return None
    return paths, y


def _holds_labels(folder: Path, contract: Contract) -> bool:
    return all((folder / n).is_dir() for n in (contract.negative_label, contract.positive_label))


def labelled_check(
    report: Report,
    model: Path,
    contract: Contract,
    folders: Sequence[str | Path],
    min_auc: float | None = None,
    preprocessing: str = "auto",
) -> None:
    """Run the `labelled_auc` check on the model file `model` (whose contract is `contract`)
    when `folders` hold labelled images; `min_auc` without them is a usage error.
    `preprocessing`: the path the deployed model will take (a conversion knows it before the
    manifest that tells `auto` exists)."""
    found = labelled_images(folders, contract)
    if found is None:
        if min_auc is not None:
            raise UsageError(
                f"--min-auc needs labelled images: --images DIR where DIR holds "
                f"{contract.negative_label}/ and {contract.positive_label}/ subfolders, each "
                "with images"
            )
        return
    paths, labels = found
    engine = Engine.load(model, preprocessing=preprocessing)
    report.run("labelled_auc", lambda: _judge(engine, paths, labels, min_auc))


def _judge(
    engine: Engine, paths: list[Path], labels: np.ndarray, min_auc: float | None
) -> tuple[str, Figures]:
    c = engine.contract
    scores, ok = _scores(engine, paths)
    y = labels[ok]
    if y.all() or not y.any():
        raise CheckFailed(f"only one class of the labelled images could be read ({ok.sum()})")
    auc = roc_auc(y, scores)
    at = metrics_at(y, scores, c.threshold)
    figures: Figures = {
        "images": int(y.size),
        c.negative_label: int((y == 0).sum()),
        c.positive_label: int(y.sum()),
        "unreadable": int((~ok).sum()),
        "roc_auc": auc,
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
        "threshold": c.threshold,
        "preprocessing": engine.preprocessing,
    }
    text = (
        f"ROC AUC {auc:.3f} on {y.size} labelled images ({figures[c.negative_label]} "
        f"{c.negative_label}, {figures[c.positive_label]} {c.positive_label}; "
        f"{engine.preprocessing} preprocessing, as the engine runs it); sensitivity "
        f"{at['sensitivity']:.3f}, specificity {at['specificity']:.3f} at {c.threshold:g}"
    )
    hints = _better_scalings(
        engine, [p for p, good in zip(paths, ok, strict=True) if good], y, scores
    )
    figures["better_scalings"] = hints
    advice = "".join(f"; {h['advice']}" for h in hints)
    if auc < 0.5:
        if hints and max(h["with_it"]["roc_auc"] for h in hints) >= 1 - auc + BETTER_AUC:
            # Another scaling puts the classes right way round clearly better than swapping the
            # labels would: the scaling, not the label order, is what looks wrong. On a tie the
            # label order is blamed: it is the simpler mistake (an inverted model ranks the
            # classes perfectly the wrong way round; some other scaling may too, by chance).
            raise CheckFailed(f"input scaling looks wrong: {text}{advice}", figures)
        swapped = f"--labels {_swapped_labels(c)}"
        if 1 - auc >= USEFUL_AUC:
            raise CheckFailed(
                f"labels look inverted: {text}; with the labels the other way round it would "
                f"be {1 - auc:.3f}: did you mean {swapped}?",
                figures,
            )
        raise CheckFailed(
            f"{text}: no better than chance (below 0.5; {swapped} would give {1 - auc:.3f}): "
            f"check the model's labels, input scaling and resize filter{advice}",
            figures,
        )
    if min_auc is not None and auc < min_auc:
        raise CheckFailed(f"{text}: below --min-auc {min_auc:g}{advice}", figures)
    if hints:
        log.warning("%s%s", text, advice)
    return text + advice, figures


def _scores(engine: Engine, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Every image's score as the engine gives it; unreadable images masked out."""
    scores = np.full(len(paths), np.nan)
    for index, result in engine.stream(paths):
        if "error" not in result:
            scores[index] = result["raw_score"]
    ok = ~np.isnan(scores)
    return scores[ok], ok


def _better_scalings(
    engine: Engine, paths: list[Path], y: np.ndarray, scores: np.ndarray
) -> list[dict[str, Any]]:
    """Each other input scaling that scores clearly better on a balanced subset."""
    c = engine.contract
    pick = np.concatenate([_spread(np.flatnonzero(y == k), ALTERNATIVE_IMAGES) for k in (0, 1)])
    subset = [paths[i] for i in pick]
    now = _quality(y[pick], scores[pick], c.threshold)
    hints = []
    for scaling in SCALINGS:
        if scaling == c.input.scaling:
            continue
        try:
            other = replace(c, input=replace(c.input, scaling=scaling))
        except ContractError:  # a scaling this contract cannot combine with
            continue
        alt = Engine(engine.session, other, engine.model, engine.device, engine.preprocessing)
        alt_scores, ok = _scores(alt, subset)
        if not ok.all():
            continue
        then = _quality(y[pick], alt_scores, c.threshold)
        clearly = then["roc_auc"] >= USEFUL_AUC and (
            then["roc_auc"] >= now["roc_auc"] + BETTER_AUC
            or (
                then["balanced_accuracy"] >= now["balanced_accuracy"] + BETTER_BALANCED
                and then["roc_auc"] >= now["roc_auc"] - BETTER_AUC
            )
        )
        if clearly:
            hints.append(
                {
                    "scaling": scaling,
                    "images": len(subset),
                    "now": now,
                    "with_it": then,
                    "advice": (
                        f"input scaling '{scaling}' scores clearly better on {len(subset)} of "
                        f"these images (ROC AUC {then['roc_auc']:.3f} vs {now['roc_auc']:.3f}, "
                        f"balanced accuracy {then['balanced_accuracy']:.3f} vs "
                        f"{now['balanced_accuracy']:.3f}): did you mean --input-scaling {scaling}?"
                    ),
                }
            )
    return hints


def _quality(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    at = metrics_at(y, scores, threshold)
    return {
        "roc_auc": roc_auc(y, scores),
        "balanced_accuracy": (at["sensitivity"] + at["specificity"]) / 2,
    }


def _spread(indices: np.ndarray, limit: int) -> np.ndarray:
    if len(indices) <= limit:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, limit).round().astype(int))]


def _swapped_labels(c: Contract) -> str:
    """The `--labels` value that reads the model's output the other way round: for one
    sigmoid unit NEGATIVE,POSITIVE swapped; for two units, output order with the other
    unit positive (which is the current output order, reversed)."""
    if c.output.kind == "sigmoid":
        return f"{c.positive_label},{c.negative_label}"
    order = [c.negative_label, c.negative_label]
    order[c.output.positive_index] = c.positive_label
    return ",".join(reversed(order))


def _say_if_labelled_otherwise(folder: Path, contract: Contract) -> None:
    """A folder of class subfolders whose names are not the model's labels gets no labelled
    check: say so, since the user may have expected one."""
    if not folder.is_dir():
        return
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and list_images(p))
    if len(subfolders) >= 2:
        log.warning(
            "--images %s has subfolders %s but the model's labels are %s and %s: "
            "no labelled check on it (it needs subfolders named after the labels)",
            folder,
            ", ".join(subfolders),
            contract.negative_label,
            contract.positive_label,
        )
