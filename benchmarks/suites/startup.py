"""`startup`: what a user waits for and pays before the first answer.

- cold process start to first prediction on one full-resolution X-ray, whole process: `pneumo
  predict` vs the seed guide's script shape (import Keras, load the model, PIL + predict one
  image; benchmarks.pipelines keras-loop on a one-image folder); median of the repeats, peak RSS;
- installed size: the files of every distribution the TensorFlow-free engine needs (the
  dependency closure of `pneumo-onnx` without extras, as installed in this environment) vs the
  same plus TensorFlow's closure (what the seed deployment needs). A fresh `pip install .`
  venv, interpreter and pip included, is measured by tests/test_install.py.
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.suites import NO_KERAS, Context, has
from benchmarks.timing import ProcessFailed, ratio, run_process

BASELINE = "keras-script"


def closure(roots: list[str]) -> set[str]:
    """Normalised names of the installed distributions `roots` need, extras not followed."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def installed_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        for f in md.distribution(name).files or []:
            path = Path(str(f.locate()))
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return round(total / 1e6, 1)


def sizes() -> dict[str, Any]:
    if not has("packaging"):
        return {"skipped": "reading requirements needs packaging: pip install packaging"}
    engine = closure(["pneumo-onnx"])
    if not engine:
        return {"skipped": "pneumo-onnx is not installed here (pip install -e .)"}
    out: dict[str, Any] = {
        "tensorflow_free": {"mb": installed_mb(engine), "distributions": len(engine)},
        "method": "sum of the RECORD files of the installed dependency closure",
    }
    tf_name = next((n for n in ("tensorflow-cpu", "tensorflow") if has_dist(n)), None)
    if tf_name is None:
        out["with_tensorflow"] = f"skipped: {NO_KERAS}"
        return out
    with_tf = engine | closure([tf_name])
    out["with_tensorflow"] = {
        "mb": installed_mb(with_tf),
        "distributions": len(with_tf),
        "root": tf_name,
    }
    out["with_tensorflow_over_tensorflow_free"] = ratio(
        out["with_tensorflow"]["mb"], out["tensorflow_free"]["mb"]
    )
    return out


def has_dist(name: str) -> bool:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True


def cold(argv: list[str], runs: int, name: str) -> dict[str, Any]:
    walls, rss = [], []
    for _ in range(runs):
        proc = run_process(argv)
        walls.append(proc["wall_seconds"])
        rss.append(proc["peak_rss_mb"])
    return {
        "name": name,
        "runs": runs,
        "seconds_median": round(statistics.median(walls), 3),
        "seconds_min": round(min(walls), 3),
        "peak_rss_mb": max(rss),
    }


def run(ctx: Context) -> dict[str, Any]:
    image = max(ctx.images, key=lambda p: p.stat().st_size)
    one = ctx.workdir / "one-image"
    one.mkdir(exist_ok=True)
    shutil.copy(image, one / image.name)
    rows, skipped = [], []
    runs = max(1, ctx.repeats)
    rows.append(
        cold(
            [sys.executable, "-m", "pneumo_onnx.engine.cli", "predict", str(image)],
            runs,
            "pneumo-predict",
        )
    )
    if has("keras") and has("tensorflow"):
        argv = [sys.executable, "-m", "benchmarks.pipelines", "keras-loop", str(one)]
        try:
            rows.append(cold([*argv, "--repeats=0"], runs, BASELINE))
        except ProcessFailed as e:
            skipped.append({"name": BASELINE, "reason": str(e)})
    else:
        skipped.append({"name": BASELINE, "reason": NO_KERAS})
    base = next((r["seconds_median"] for r in rows if r["name"] == BASELINE), None)
    for row in rows:  # a ratio of times: bigger is faster
        row["ratio_to_baseline"] = ratio(base, row["seconds_median"])
    return {
        "baseline": BASELINE,
        "image": {"name": image.name, "bytes": image.stat().st_size},
        "rows": rows,
        "skipped": skipped,
        "installed_size": sizes(),
    }
