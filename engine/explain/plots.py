"""Evaluation plots with matplotlib (the 'report' extra), headless: ROC, precision-recall,
confusion matrix, reliability diagram, score histograms per class.

matplotlib is imported inside `pyplot()` only, with the Agg backend, so the engine never needs
it, a server never opens a display, and a missing extra is one clear MissingExtraError. Every
figure is FIGSIZE at DPI (600 x 500 px), saved without tight cropping so sizes are fixed.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from engine.errors import FileAccessError, MissingExtraError
from engine.runtime.metrics import (
    calibration_bins,
    confusion,
    metrics_at,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)

FIGSIZE = (6.0, 5.0)
DPI = 100
NEGATIVE_COLOUR = "#2b6cb0"
POSITIVE_COLOUR = "#c53030"
PLOTS = ("roc", "precision_recall", "confusion", "calibration", "histogram")


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or MissingExtraError('report')."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingExtraError("report", "plots and HTML reports", "matplotlib") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def evaluation_plots(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    out_dir: Path,
    names: tuple[str, str] = ("NORMAL", "PNEUMONIA"),
    recommended: float | None = None,
) -> list[Path]:
    """Write the five plots as PNGs into `out_dir` (created); return their paths."""
    plt = pyplot()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileAccessError("create", out_dir, e) from e
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    points = [("threshold", threshold)]
    if recommended is not None and math.isfinite(recommended) and recommended != threshold:
        points.append(("recommended", recommended))
    drawers = {
        "roc": lambda ax: _roc(ax, y, s, points),
        "precision_recall": lambda ax: _pr(ax, y, s, points),
        "confusion": lambda ax: _confusion(ax, y, s, threshold, names),
        "calibration": lambda ax: _calibration(ax, y, s),
        "histogram": lambda ax: _histogram(ax, s, y, threshold, names),
    }
    written = []
    for name in PLOTS:
        fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
        try:
            drawers[name](ax)
            fig.tight_layout()
            path = out_dir / f"{name}.png"
            try:
                fig.savefig(path, dpi=DPI, format="png")
            except OSError as e:
                raise FileAccessError("write", path, e) from e
            written.append(path)
        finally:
            plt.close(fig)
    return written


def histogram_png(
    scores: ArrayLike,
    threshold: float,
    labels: np.ndarray | None = None,
    names: tuple[str, str] = ("NORMAL", "PNEUMONIA"),
    figsize: tuple[float, float] = (6.0, 3.2),
) -> bytes:
    """Score histogram as PNG bytes (for the HTML report); per class when labels are known."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=figsize, dpi=DPI)
    try:
        _histogram(ax, np.asarray(scores, dtype=np.float64), labels, threshold, names)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, dpi=DPI, format="png")
        return out.getvalue()
    finally:
        plt.close(fig)


# --- the plots ---------------------------------------------------------------------------------


def _roc(ax: Any, y: np.ndarray, s: np.ndarray, points: list[tuple[str, float]]) -> None:
    fpr, tpr, _ = roc_curve(y, s)
    ax.plot(fpr, tpr, color=POSITIVE_COLOUR, lw=2, label=f"ROC (AUC {roc_auc(y, s):.4f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    for (name, t), marker in zip(points, ("o", "s"), strict=False):
        m = metrics_at(y, s, t)
        ax.plot(
            1 - m["specificity"],
            m["sensitivity"],
            marker,
            ms=9,
            color="black",
            mfc="white" if name == "recommended" else "black",
            label=f"{name} {t:.3g}: sens {m['sensitivity']:.3f}, spec {m['specificity']:.3f}",
        )
    _axes(ax, "False positive rate (1 - specificity)", "True positive rate (sensitivity)")
    ax.set_title("ROC curve")
    ax.legend(loc="lower right", fontsize=9)


def _pr(ax: Any, y: np.ndarray, s: np.ndarray, points: list[tuple[str, float]]) -> None:
    recall, precision, ap = precision_recall_curve(y, s)
    ax.step(recall, precision, where="post", color=POSITIVE_COLOUR, lw=2, label=f"AP {ap:.4f}")
    ax.axhline(y.mean(), ls="--", color="grey", lw=1, label=f"prevalence {y.mean():.3f}")
    for (name, t), marker in zip(points, ("o", "s"), strict=False):
        m = metrics_at(y, s, t)
        if m["precision"] is not None:
            ax.plot(
                m["sensitivity"],
                m["precision"],
                marker,
                ms=9,
                color="black",
                mfc="white" if name == "recommended" else "black",
                label=f"{name} {t:.3g}",
            )
    _axes(ax, "Recall (sensitivity)", "Precision")
    ax.set_title("Precision-recall curve")
    ax.legend(loc="lower left", fontsize=9)


def _confusion(
    ax: Any, y: np.ndarray, s: np.ndarray, threshold: float, names: tuple[str, str]
) -> None:
    c = confusion(y, s, threshold)
    grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(1, grid.max()))
    rows = grid.sum(axis=1, keepdims=True)
    for i in range(2):
        for j in range(2):
            share = grid[i, j] / rows[i, 0] if rows[i, 0] else 0.0
            dark = grid[i, j] > grid.max() / 2
            ax.text(
                j,
                i,
                f"{grid[i, j]}\n{share:.1%} of row",
                ha="center",
                va="center",
                fontsize=13,
                color="white" if dark else "black",
            )
    ax.set_xticks([0, 1], [f"called {n}" for n in names])
    ax.set_yticks([0, 1], [f"truly {n}" for n in names], rotation=90, va="center")
    ax.set_title(f"Confusion matrix at threshold {threshold:.3g} ({len(y)} images)")


def _calibration(ax: Any, y: np.ndarray, s: np.ndarray) -> None:
    mean_score, positive, count, ece = calibration_bins(y, s)
    filled = count > 0
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(
        mean_score[filled],
        positive[filled],
        "o-",
        color=POSITIVE_COLOUR,
        lw=2,
        label=f"model (ECE {ece:.3f})",
    )
    for x, f, n in zip(mean_score[filled], positive[filled], count[filled], strict=True):
        below = -13 if f > 0.5 else 6  # keep the count inside the axes
        ax.annotate(f"n={n}", (x, f), textcoords="offset points", xytext=(3, below), fontsize=8)
    _axes(ax, "Mean predicted P(positive) in bin", "Fraction truly positive")
    ax.set_title("Reliability diagram (10 bins)")
    ax.legend(loc="upper left", fontsize=9)


def _histogram(
    ax: Any,
    s: np.ndarray,
    y: np.ndarray | None,
    threshold: float,
    names: tuple[str, str],
) -> None:
    bins = np.linspace(0.0, 1.0, 21)
    if y is None:
        ax.hist(s, bins=bins, color="#4a5568", label=f"all ({len(s)})")
    else:
        y = np.asarray(y).astype(bool)
        for mask, name, colour in ((~y, names[0], NEGATIVE_COLOUR), (y, names[1], POSITIVE_COLOUR)):
            ax.hist(s[mask], bins=bins, color=colour, alpha=0.6, label=f"{name} ({mask.sum()})")
    ax.axvline(threshold, color="black", ls="--", lw=1.5, label=f"threshold {threshold:.3g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"P({names[1]})")
    ax.set_ylabel("Images")
    ax.set_title("Score histogram" + (" per class" if y is not None else ""))
    ax.legend(loc="upper center", fontsize=9)
    ax.grid(alpha=0.3)


def _axes(ax: Any, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_aspect("equal")
