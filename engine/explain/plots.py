"""Evaluation plots with matplotlib (the 'report' extra), headless: ROC, precision-recall,
confusion matrix, reliability diagram, score histograms per class.

matplotlib is imported inside `pyplot()` only, with the Agg backend, so the engine never needs
it, a server never opens a display, and a missing extra is one clear MissingExtraError. Every
figure is FIGSIZE at DPI (600 x 500 px), saved without tight cropping so sizes are fixed.

Figures on data that cannot choose a threshold (too few images, training images: `caveats`)
carry the reasons as a footnote on every plot, and in the PNG's Description; no "recommended"
point is drawn then. Operating points sit on top of the curves, never hidden behind them.
Every plot names what it measured (`about`: model and version, data folder and images per
class) in its top line, since a PNG travels without its command line; the ROC AUC carries its
95% interval (metrics.roc_auc_interval) at three decimals.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pneumo_onnx.engine.errors import FileAccessError, MissingExtraError
from pneumo_onnx.engine.runtime.metrics import (
    auc_phrase,
    calibration_bins,
    confusion,
    metrics_at,
    precision_recall_curve,
    roc_auc,
    roc_auc_interval,
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
    caveats: Sequence[str] = (),
    about: str = "",
) -> list[Path]:
    """Write the five plots as PNGs into `out_dir` (created); return their paths. `about`:
    the model and data, printed atop each (offline.evaluate.caption)."""
    plt = pyplot()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileAccessError("create", out_dir, e) from e
    written = []
    for name in PLOTS:
        fig = figure(name, labels, scores, threshold, names, recommended, caveats, about)
        try:
            path = out_dir / f"{name}.png"
            meta = _metadata(caveats) | ({"Title": about} if about else {})
            try:
                fig.savefig(path, dpi=DPI, format="png", metadata=meta)
            except OSError as e:
                raise FileAccessError("write", path, e) from e
            written.append(path)
        finally:
            plt.close(fig)
    return written


def figure(
    name: str,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    names: tuple[str, str] = ("NORMAL", "PNEUMONIA"),
    recommended: float | None = None,
    caveats: Sequence[str] = (),
    about: str = "",
) -> Any:
    """One of the PLOTS as a matplotlib figure (the caller closes it)."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    points = [("threshold", threshold)]
    if caveats:
        recommended = None  # these data choose no threshold: the footnote says why
    if recommended is not None and math.isfinite(recommended) and recommended != threshold:
        points.insert(0, ("recommended", recommended))  # drawn first: the threshold on top
    drawers = {
        "roc": lambda ax: _roc(ax, y, s, points),
        "precision_recall": lambda ax: _pr(ax, y, s, points),
        "confusion": lambda ax: _confusion(ax, y, s, threshold, names),
        "calibration": lambda ax: _calibration(ax, y, s),
        "histogram": lambda ax: _histogram(ax, s, y, threshold, names),
    }
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    try:
        drawers[name](ax)
        top = 1.0
        if about:
            head = "\n".join(textwrap.wrap(about, 100))
            fig.text(0.01, 0.995, head, fontsize=8, color="#2d3748", va="top", ha="left")
            top -= 0.012 + (head.count("\n") + 1) * 0.032
        note = _note(caveats)
        bottom = 0.0
        if note:
            lines = note.count("\n") + 1
            fig.text(0.01, 0.01, note, fontsize=8, color="#9b2c2c", va="bottom", ha="left")
            bottom = 0.012 + lines * 0.032
        fig.tight_layout(rect=(0.0, bottom, 1.0, top))
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _note(caveats: Sequence[str]) -> str:
    """The footnote of a plot on data that chose no threshold ('' when there is none)."""
    if not caveats:
        return ""
    text = "No recommended threshold: " + "; ".join(caveats) + "."
    return "\n".join(textwrap.wrap(text, 92))


def _metadata(caveats: Sequence[str]) -> dict[str, str]:
    return {"Description": " ".join(_note(caveats).split())} if caveats else {}


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
    auc = auc_phrase(roc_auc(y, s), roc_auc_interval(y, s)).replace("ROC AUC", "AUC", 1)
    ax.plot(fpr, tpr, color=POSITIVE_COLOUR, lw=2, label="\n".join(textwrap.wrap(auc, 38)))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    for name, t in points:
        m = metrics_at(y, s, t)
        _point(
            ax,
            1 - m["specificity"],
            m["sensitivity"],
            name,
            f"{name} {t:.3g}: sens {m['sensitivity']:.3f}, spec {m['specificity']:.3f}",
        )
    _axes(ax, "False positive rate (1 - specificity)", "True positive rate (sensitivity)")
    ax.set_title("ROC curve")
    ax.legend(loc="lower right", fontsize=9)


def _pr(ax: Any, y: np.ndarray, s: np.ndarray, points: list[tuple[str, float]]) -> None:
    recall, precision, ap = precision_recall_curve(y, s)
    ax.step(recall, precision, where="post", color=POSITIVE_COLOUR, lw=2, label=f"AP {ap:.3f}")
    ax.axhline(y.mean(), ls="--", color="grey", lw=1, label=f"prevalence {y.mean():.3f}")
    for name, t in points:
        m = metrics_at(y, s, t)
        if m["precision"] is not None:
            _point(ax, m["sensitivity"], m["precision"], name, f"{name} {t:.3g}")
    _axes(ax, "Recall (sensitivity)", "Precision")
    ax.set_title("Precision-recall curve")
    ax.legend(loc="lower left", fontsize=9)


def _point(ax: Any, x: float, y: float, name: str, label: str) -> None:
    """An operating point above every curve and unclipped at the axes' edge: the threshold a
    filled dot, the recommended one a larger open square, so both show where they coincide."""
    recommended = name == "recommended"
    ax.plot(
        x,
        y,
        "s" if recommended else "o",
        ms=12 if recommended else 8,
        mew=1.5,
        color="black",
        mfc="white" if recommended else "black",
        zorder=6 if recommended else 7,
        clip_on=False,
        label=label,
    )


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
        dx, dy, ha, va = _label_place(x, f)
        ax.annotate(
            f"n={n}", (x, f), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=8
        )
    _axes(ax, "Mean predicted P(positive) in bin", "Fraction truly positive")
    ax.set_title("Reliability diagram (10 bins)")
    ax.legend(loc="upper left", fontsize=9)


def _label_place(x: float, f: float) -> tuple[int, int, str, str]:
    """Offset and alignment of a count label at (x, f) of the reliability diagram: off the
    diagonal on the point's own side (above-left or below-right), the other side where that
    would leave the axes, beside the point in a corner: never outside the axes."""
    above = (-6, 6, "right", "bottom")
    below = (6, -6, "left", "top")
    fits = {above: f < 0.9 and x > 0.1, below: f > 0.1 and x < 0.85}
    for place in (above, below) if f >= x else (below, above):
        if fits[place]:
            return place
    right, top = x > 0.5, f > 0.5  # a corner: beside the point, clear of the diagonal
    return (
        -14 if right else 14,
        -1 if top else 1,
        "right" if right else "left",
        "top" if top else "bottom",
    )


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
    from matplotlib.ticker import MaxNLocator  # matplotlib is loaded: pyplot() made the axes

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
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
