"""The heatmap's legend says what the colours mean in a reader's words (which regions raised the
PNEUMONIA score most), keeps the numbers as secondary notes, and its colour bar is painted as
the X-ray is: uncoloured greys at the bottom, as the picture shows no colour there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_onnx.engine.explain.heatmap import heatmap_for
from pneumo_onnx.engine.explain.overlay import BAR_GREYS, _bar, legend, paint, render, weights
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.samples import SAMPLES_DIR

PNEUMONIA = SAMPLES_DIR / "PNEUMONIA" / "person586_bacteria_2417.jpeg"
NORMAL = SAMPLES_DIR / "NORMAL" / "IM-0651-0001.jpeg"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(threads=2)


def words(engine: Engine, image: Path, negative: bool = False) -> tuple[list, list, list, list]:
    heatmap, result, _ = heatmap_for(engine, image)
    return legend(heatmap, result, engine.contract, negative, weights(result))


def test_legend_speaks_of_regions_and_keeps_the_numbers_secondary(engine: Engine) -> None:
    """The default model's scale (floor 24.7, full 37 logit, stored at conversion)."""
    top, heading, marks, below = words(engine, PNEUMONIA)
    assert [t for t, _ in top[:1]] == ["PNEUMONIA"]
    assert " ".join(t for t, _ in heading) == "regions that raised the PNEUMONIA score"
    assert marks == [("most", "+37 and more", 0.0), ("least shown", "+24.7", 1.0)]
    text = {t: style for t, style in below}
    assert text["uncoloured: no more than"] == "text" and text["in NORMAL X-rays"] == "text"
    assert text["numbers: logit (class activation),"] == "note"  # the unit: secondary
    assert text["from 70 X-rays at conversion"] == "note"
    every = [t for block in (top, heading, below) for t, _ in block]
    every += [t for m in marks for t in m[:2]]
    assert not any("logit" in t for t in [t for t, _ in heading] + [m[0] for m in marks])
    assert not any("+-" in t for t in every)


def test_negative_legend_says_raised_and_lowered_with_a_plus_minus(engine: Engine) -> None:
    _, heading, marks, below = words(engine, PNEUMONIA, negative=True)
    assert " ".join(t for t, _ in heading) == (
        "regions that raised (red) or lowered (blue) the PNEUMONIA score"
    )
    assert marks == [
        ("raised it most", "+37 and more", 0.0),
        ("uncoloured", "within ±24.7", 0.5),
        ("lowered it most", "-37 and less", 1.0),
    ]
    assert ("blue drawn at 0%", "text") in below  # P = 1.000: nothing speaks against it


def test_faded_map_says_so(engine: Engine) -> None:
    _, _, _, below = words(engine, NORMAL)  # P 0.033 at threshold 0.71: 5% strength
    assert ("colour drawn at 5%", "text") in below
    assert ("strength: P(PNEUMONIA) / threshold", "note") in below


@pytest.mark.parametrize("negative", [False, True], ids=["positive", "both"])
def test_bar_is_painted_as_the_xray(negative: bool) -> None:
    """Where the picture has no colour (the floor, and the middle of a two-sided bar) the bar
    shows plain greys, dark to light, not a grey swatch; its top is the overlay's colour over
    those same greys."""
    bar = np.asarray(_bar(28, 140, negative), dtype=np.float64)
    greys = np.linspace(*BAR_GREYS, 28)
    uncoloured = bar[70] if negative else bar[-1]
    assert np.abs(uncoloured - greys[:, None]).max() <= 0.5  # R = G = B = the grey beneath
    assert uncoloured[0, 0] < 60 and uncoloured[-1, 0] > 200
    base = np.repeat(greys[:, None], 3, axis=1)
    top = paint(base, np.ones(28), False)
    assert np.abs(bar[0] - top).max() <= 0.5
    assert (bar[0, :, 0] - bar[0, :, 2] > 60).all()  # red on the darkest grey and the lightest


def test_panel_stays_narrow_and_readable(engine: Engine) -> None:
    """The words fit a panel about as wide as before (280-370 px beside a 1024 px X-ray)."""
    heatmap, result, data = heatmap_for(engine, PNEUMONIA)
    picture = render(data, heatmap, result, engine.contract, negative=True)
    with Image.open(PNEUMONIA) as xray:
        shown = round(1024 * xray.width / max(xray.size))
    assert 280 <= picture.width - shown <= 400
