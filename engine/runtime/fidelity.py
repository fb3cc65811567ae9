"""Whether the `fast` preprocessing path may stand in for `reference` with one model: measured
per model, never assumed.

`pneumo convert` scores its probe X-rays through both paths with the converted model and records
the figures in the manifest (`preprocessing`); the engine's `auto` (the default everywhere)
re-reads them through the same rule (`verdict`), so the rule lives here only. A model without
figures (a plain .onnx file, a repository converted before this was measured) gets `reference`,
except where the fast path is the reference pipeline by construction (`is_exact`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.repository.manifest import Manifest
from pneumo_onnx.engine.repository.sections import FastOrReference, FastPathFigures
from pneumo_onnx.engine.runtime.choices import PREPROCESSING
from pneumo_onnx.engine.runtime.decoders import ImageSource
from pneumo_onnx.engine.runtime.preprocess import (
    fast_pixels,
    is_exact,
    reference_pixels,
    shortcut_side,
)

# The promise: every score within 0.02 of the user's own pipeline, and the same label wherever
# that score is 0.02 or more from the threshold.
MAX_SCORE_DIFF = 0.02
# The bound the probes must meet: half the promise, because the largest difference over a few
# dozen probes underestimates the largest over a user's whole set (the shipped model: 0.0057 on
# its 70 conversion probes, 0.0124 on 206 full-resolution X-rays).
PROBE_MAX_SCORE_DIFF = MAX_SCORE_DIFF / 2
# The fast path is trusted only on evidence: at least this many probe X-rays on which it took
# its shortcuts (large enough for a reduced-scale decode or a box pre-reduction).
MIN_SHORTCUT_IMAGES = 20


def measure(
    score: Callable[[np.ndarray], np.ndarray],
    images: Sequence[ImageSource],
    contract: Contract,
    batch_size: int = 16,
) -> FastPathFigures:
    """Score `images` through both paths with `score` (a batch -> P(positive)); the figures
    the verdict reads. Every image must be readable (they are the conversion's probes)."""
    if not images:
        raise UsageError("no X-rays to measure the fast preprocessing path on")
    fast, reference, shortcut = [], [], 0
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        a = np.stack([fast_pixels(p, contract) for p in chunk])
        b = np.stack([reference_pixels(p, contract) for p in chunk])
        shortcut += int(sum(not np.array_equal(x, y) for x, y in zip(a, b, strict=True)))
        fast.append(score(a))
        reference.append(score(b))
    f, r = np.concatenate(fast), np.concatenate(reference)
    diff = np.abs(f - r)
    t = contract.threshold
    changed = (f > t) != (r > t)
    away = np.abs(r - t) >= MAX_SCORE_DIFF
    return FastPathFigures(
        images=len(images),
        shortcut_images=shortcut,
        exact_by_construction=is_exact(contract.input),
        max_score_diff=float(diff.max(initial=0.0)),
        p99_score_diff=float(np.quantile(diff, 0.99)) if len(diff) else 0.0,
        mean_score_diff=float(diff.mean()) if len(diff) else 0.0,
        label_changes=int(changed.sum()),
        label_changes_away_from_threshold=int((changed & away).sum()),
        largest_threshold_distance_of_a_change=float(np.abs(r - t)[changed].max(initial=0.0)),
        threshold=t,
    )


def verdict(figures: FastPathFigures, contract: Contract) -> tuple[FastOrReference, str]:
    """('fast' | 'reference', why) for measured figures: fast only within PROBE_MAX_SCORE_DIFF
    with no label change away from the threshold, on enough full-size X-rays (or where exact)."""
    diff, n, shortcut = figures.max_score_diff, figures.images, figures.shortcut_images
    flips = figures.label_changes_away_from_threshold
    measured = f"max score diff {diff:.4f} on {n} probe X-rays"
    if diff > PROBE_MAX_SCORE_DIFF or flips:
        return "reference", (
            f"fast differs from reference by up to {diff:.4f} ({flips} label changes away from "
            f"the threshold) on {n} probe X-rays: over the {PROBE_MAX_SCORE_DIFF} bound"
        )
    if is_exact(contract.input):
        return "fast", (
            f"fast is exact for the {contract.input.resize_filter} filter (the full decode, "
            f"the same pixels); measured {measured}"
        )
    if shortcut < MIN_SHORTCUT_IMAGES:
        side = shortcut_side(contract.input)
        return "reference", (
            f"fast measured on too few large X-rays: it departs from the reference only on "
            f"images of {side} px or more on a side, and {shortcut} of the {n} probe X-rays "
            f"were ({MIN_SHORTCUT_IMAGES} needed; {measured}): convert with --images DIR "
            f"holding at least {MIN_SHORTCUT_IMAGES} X-rays that large to measure it"
        )
    return "fast", f"fast stays within {PROBE_MAX_SCORE_DIFF} of reference: {measured}"


def choose(requested: str, contract: Contract, manifest: Manifest | None) -> tuple[str, str]:
    """The path an engine runs ('fast' | 'reference') and why: `fast`/`reference` as asked;
    `auto` follows the figures in the model's manifest."""
    if requested not in PREPROCESSING:
        raise UsageError(
            f"preprocessing must be one of {', '.join(PREPROCESSING)}, got {requested!r}"
        )
    if requested != "auto":
        return requested, f"--preprocessing {requested} asked for"
    figures = manifest.fast_vs_reference if manifest else None
    if figures is not None:
        return verdict(figures, contract)
    if is_exact(contract.input):
        return "fast", (
            f"fast is exact for the {contract.input.resize_filter} filter (the full decode, "
            "the same pixels)"
        )
    source = "its manifest predates them" if manifest else "a plain ONNX file, no manifest"
    return "reference", (
        f"no measured fast-path figures ({source}): the reference pipeline, the faithful one "
        "(--preprocessing fast overrides)"
    )
