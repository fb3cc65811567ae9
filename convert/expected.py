"""The check against the user's own application: scores it computed, in a CSV, against the
scores the engine gives the same image files with its default settings.

A conversion can be faithful to the graph and still give other answers than the application:
a step the application runs before the model that nobody stated (a gain and clip, an
equalisation, a crop) moves every score while the graph parity and even a labelled AUC pass.
Only the application's own outputs catch that, whatever the step is. The CSV has a header with
the columns `image` (a file name, or a path relative to the images folder) and `score` (the
application's P(positive class)); other columns are ignored.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo_onnx.convert.report import CheckFailed, Figures, Report
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.fidelity import MAX_SCORE_DIFF
from pneumo_onnx.engine.runtime.listing import IMAGE_SUFFIXES

MAX_ROWS = 1_000_000  # a CSV beyond this is not a list of X-rays
WORST_SHOWN = 5  # images named in the summary line


@dataclass(frozen=True)
class Expected:
    """One row of the CSV: the image file, how the CSV named it, the application's score."""

    path: Path
    name: str
    score: float
    line: int


@dataclass(frozen=True)
class ExpectedScores:
    rows: tuple[Expected, ...]
    source: Path
    sha256: str


def read_expected(csv_path: str | Path, folders: Sequence[str | Path] = ()) -> ExpectedScores:
    """Parse and resolve the CSV: every row names one existing image file and a score in
    [0, 1]. Image names resolve against `folders` (the --images folders; the CSV's own folder
    when none), first as a relative path, then as a file name found once below them."""
    source = Path(csv_path)
    try:
        data = source.read_bytes()
    except OSError as e:
        raise UsageError(f"--expected-scores {csv_path}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"--expected-scores {source.name}: not UTF-8 text ({e.reason})") from e
    roots = [Path(f) for f in folders] or [source.parent]
    find = _Finder(roots)
    rows: list[Expected] = []
    seen: dict[Path, int] = {}
    reader = csv.DictReader(text.splitlines())
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
    if "image" not in columns or "score" not in columns:
        raise UsageError(
            f"--expected-scores {source.name}: needs a header with the columns 'image' and "
            f"'score', found {', '.join(repr(c) for c in columns) or 'no header'}"
        )
    where = f"--expected-scores {source.name}"
    for record in reader:
        line = reader.line_num
        if len(rows) >= MAX_ROWS:
            raise UsageError(f"{where}: more than {MAX_ROWS} rows")
        name = (record.get(columns["image"]) or "").strip()
        raw = (record.get(columns["score"]) or "").strip()
        if not name and not raw:
            continue  # a blank line
        score = _score(raw, f"{where} line {line}")
        path = find(name, f"{where} line {line}")
        if path in seen:
            raise UsageError(f"{where} line {line}: {name} is listed twice (line {seen[path]})")
        seen[path] = line
        rows.append(Expected(path, name, score, line))
    if not rows:
        raise UsageError(f"{where}: no rows under its header")
    return ExpectedScores(tuple(rows), source, hashlib.sha256(data).hexdigest())


def expected_scores_check(
    report: Report, model: Path, expected: ExpectedScores, preprocessing: str = "auto"
) -> None:
    """The `expected_scores` check: the engine, as it will run the model (`preprocessing`, the
    contract's threshold), scores every image; one failing row per image whose score is more
    than MAX_SCORE_DIFF from the application's, or whose label differs where the application's
    score is that far from the threshold, or that the engine cannot read."""
    engine = Engine.load(model, preprocessing=preprocessing)
    ours, errors = _scores(engine, expected.rows)
    t = engine.contract.threshold
    theirs = np.array([r.score for r in expected.rows])
    diff = np.abs(ours - theirs)  # NaN where the engine could not read the image
    flips = ((ours > t) != (theirs > t)) & (np.abs(theirs - t) >= MAX_SCORE_DIFF)
    bad = ~(diff <= MAX_SCORE_DIFF) | flips
    for index in np.flatnonzero(bad):
        row = expected.rows[index]
        check = _row_check(row, ours[index], t, errors.get(int(index), ""))
        report.run(f"expected_score {row.name}", check, row=True)
    report.run("expected_scores", lambda: _summary(engine, expected, ours, theirs, bad, flips))


def _row_check(
    row: Expected, ours: float, t: float, error: str
) -> Callable[[], tuple[str, Figures]]:
    def check() -> tuple[str, Figures]:
        figures: Figures = {"image": row.name, "line": row.line, "expected": row.score}
        if math.isnan(ours):
            raise CheckFailed(f"the engine could not read {row.path}: {error}", figures)
        figures.update(score=float(ours), diff=abs(float(ours) - row.score))
        flip = (ours > t) != (row.score > t)
        raise CheckFailed(
            f"score {ours:.4f}, your application's {row.score:.4f} (line {row.line}): "
            f"differs by {abs(ours - row.score):.4f} > {MAX_SCORE_DIFF}"
            + (f", and the label at threshold {t:g} differs" if flip else ""),
            figures,
        )

    return check


def _summary(
    engine: Engine,
    expected: ExpectedScores,
    ours: np.ndarray,
    theirs: np.ndarray,
    bad: np.ndarray,
    flips: np.ndarray,
) -> tuple[str, Figures]:
    readable = ~np.isnan(ours)
    diff = np.abs(ours - theirs)[readable]
    figures: Figures = {
        "csv": str(expected.source),
        "csv_sha256": expected.sha256,
        "images": len(expected.rows),
        "unreadable": int((~readable).sum()),
        "max_score_diff": float(diff.max()) if diff.size else None,
        "p99_score_diff": float(np.percentile(diff, 99)) if diff.size else None,
        "mean_score_diff": float(diff.mean()) if diff.size else None,
        "over_bound": int(bad.sum()),
        "label_changes_away": int(flips.sum()),
        "bound": MAX_SCORE_DIFF,
        "preprocessing": engine.preprocessing,
        "pipeline": engine.contract.input.describe(),
    }
    text = (
        f"{_count(len(expected.rows), 'image')} of {expected.source.name} through the engine's "
        f"{engine.preprocessing} preprocessing ({engine.contract.input.describe()})"
    )
    if diff.size:
        text += f": max score diff {diff.max():.4f}, p99 {figures['p99_score_diff']:.4f}"
    if not bad.any():
        return f"{text}, all within {MAX_SCORE_DIFF} of your application's", figures
    worst = np.argsort(-np.nan_to_num(np.abs(ours - theirs), nan=np.inf))[:WORST_SHOWN]
    named = ", ".join(expected.rows[i].name for i in worst if bad[i])
    raise CheckFailed(
        f"{text}; {int(bad.sum())} of them differ from your application's by more than "
        f"{MAX_SCORE_DIFF} or change label ({_count(int(flips.sum()), 'label change')} away "
        f"from the threshold; worst: {named}). {_advice(int(bad.sum()), len(ours))}",
        figures,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _advice(bad: int, total: int) -> str:
    if bad < max(2, total // 10):
        return (
            f"{bad} of {total} images only: look at what is special about them (size, format, "
            "bit depth, colour)"
        )
    return (
        f"{bad} of {total} images: your application likely prepares images differently from "
        "the pipeline this model was converted with. Compare each step of your code with it: "
        "the colour, the resize filter and mode, the scaling, and any step before the resize "
        "(a gain, an equalisation, CLAHE); state the one that differs (--preset, the pipeline "
        "flags, --pre-resize) and convert again"
    )


def _scores(engine: Engine, rows: Sequence[Expected]) -> tuple[np.ndarray, dict[int, str]]:
    """Each image's score as the engine gives it (NaN where it cannot), and those errors."""
    scores, errors = np.full(len(rows), np.nan), {}
    for index, result in engine.stream([r.path for r in rows]):
        if "error" in result:
            errors[index] = str(result["error"])
        else:
            scores[index] = result["raw_score"]
    return scores, errors


def _score(raw: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{where}: score {raw!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UsageError(f"{where}: score {raw} is not a probability in [0, 1]")
    return value


class _Finder:
    """Image names to files: a path relative to one of the roots, or a file name that occurs
    exactly once below them (indexed on first need)."""

    def __init__(self, roots: list[Path]) -> None:
        for root in roots:
            if not root.is_dir():
                raise UsageError(f"--images {root}: no such folder")
        self.roots = roots
        self._by_name: dict[str, list[Path]] | None = None

    def __call__(self, name: str, where: str) -> Path:
        if not name:
            raise UsageError(f"{where}: the image column is empty")
        given = Path(name)
        if given.is_absolute():
            if given.is_file():
                return given
            raise UsageError(f"{where}: {name}: no such file")
        found = [root / given for root in self.roots if (root / given).is_file()]
        if not found and len(given.parts) == 1:
            found = self.by_name().get(given.name, [])
        if len(found) == 1:
            return found[0]
        folders = ", ".join(str(r) for r in self.roots)
        if not found:
            raise UsageError(f"{where}: {name}: no such image in {folders}")
        raise UsageError(
            f"{where}: {name} names {len(found)} files ({found[0]}, {found[1]}...): give its "
            f"path relative to {folders}"
        )

    def by_name(self) -> dict[str, list[Path]]:
        if self._by_name is None:
            index: dict[str, list[Path]] = defaultdict(list)
            for root in self.roots:
                for p in root.rglob("*"):
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                        index[p.name].append(p)
            self._by_name = dict(index)
        return self._by_name
