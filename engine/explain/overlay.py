"""Draw a heatmap over its X-ray with Pillow alone: colours, then a panel with the result and the
legend beside the X-ray.

The X-ray keeps its aspect ratio (long side DISPLAY_SIDE px); the panel sits to its right, so
the picture is wider than the X-ray and nothing is drawn over the lungs. Colours follow the
heatmap's scale, fixed per model (engine.explain.heatmap): no colour up to the scale's floor,
then yellow to red at its full value, so the same colour means the same evidence in every
picture of one model and a quiet map stays quiet. Evidence against PNEUMONIA (blue, the same
scale mirrored) is drawn only when asked (`negative=True`).

A class activation map shows where each location pushed the score, whatever the score became:
an X-ray the model calls NORMAL with P(PNEUMONIA) 0.009 can still hold a local patch above the
scale's floor, and a red patch there reads as a finding. So the evidence for the positive class
is drawn at P / threshold of its strength below the threshold (full strength only on images
called positive), and the evidence against it at (1 - P) / (1 - threshold) above; the panel says
when a map is drawn faded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import FileAccessError
from pneumo_onnx.engine.explain import DEFAULT_GRID
from pneumo_onnx.engine.explain.heatmap import Heatmap, compute, heatmap_for
from pneumo_onnx.engine.runtime.decoders import ImageSource
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.preprocess import display_picture
from pneumo_onnx.engine.runtime.results import Scored

DISPLAY_SIDE = 1024
MAX_ALPHA = 0.6
PANEL_BACKGROUND = (24, 24, 28)
BAR_GREYS = (40.0, 215.0)  # the colour bar's greys, left to right: lung to bone
# Colour ramps over the scale, from the floor (0) to the full value (1), interpolated.
_STOPS = np.array([0.0, 0.5, 1.0])
_POSITIVE = np.array([[255, 225, 60], [255, 140, 0], [220, 20, 20]], dtype=np.float64)
_NEGATIVE = np.array([[120, 220, 255], [40, 150, 255], [30, 60, 210]], dtype=np.float64)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def strength(values: np.ndarray, heatmap: Heatmap) -> np.ndarray:
    """Where `values` sit on the heatmap's scale: 0 at or below the floor, 1 at full and above."""
    floor, full = heatmap.scale.floor, heatmap.scale.full
    return np.clip((values - floor) / (full - floor), 0.0, 1.0)


def ramp(t: np.ndarray, negative: bool = False) -> np.ndarray:
    """Strengths in [0, 1] -> RGB floats 0..255 (shape + (3,))."""
    colours = _NEGATIVE if negative else _POSITIVE
    return np.stack([np.interp(t, _STOPS, colours[:, i]) for i in range(3)], axis=-1)


def weights(result: Scored) -> tuple[float, float]:
    """How strongly to draw the evidence for and against the positive class on this X-ray:
    full on the side the model called, faded by how far the score stayed from the threshold
    on the other."""
    p, t = result["raw_score"], result["threshold"]
    called = p > t
    towards = 1.0 if called or t <= 0.0 else p / t
    against = 1.0 if not called or t >= 1.0 else (1.0 - p) / (1.0 - t)
    return float(towards), float(against)


def blend(
    grey: np.ndarray,
    heatmap: Heatmap,
    negative: bool = False,
    weight: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """The grey X-ray (h, w) with the heatmap's colours, each side's opacity scaled by its
    `weight` (for, against): uint8 RGB (h, w, 3)."""
    height, width = grey.shape
    field = Image.fromarray(heatmap.values.astype(np.float32), "F")
    v = np.asarray(field.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    rgb = np.repeat(grey[..., None].astype(np.float64), 3, axis=2)
    rgb = paint(rgb, strength(v, heatmap), False, weight[0])
    if negative:
        rgb = paint(rgb, strength(-v, heatmap), True, weight[1])
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def paint(rgb: np.ndarray, t: np.ndarray, negative: bool, weight: float = 1.0) -> np.ndarray:
    """`rgb` (..., 3) with strengths `t` (...) of one side's colour laid over it: the one way
    colour is put on a picture, so the legend's bar shows what the X-ray shows."""
    alpha = (weight * MAX_ALPHA * t**0.8)[..., None]
    return rgb * (1.0 - alpha) + ramp(t, negative) * alpha


def render(
    image: ImageSource,
    heatmap: Heatmap,
    result: Scored,
    contract: Contract,
    side: int = DISPLAY_SIDE,
    negative: bool = False,
) -> Image.Image:
    """The X-ray with the heatmap blended in at (0, 0), the result and legend to its right."""
    shown = display_picture(image, side)
    size = shown.size
    grey = np.asarray(shown, dtype=np.uint8)
    weight = weights(result)
    xray = Image.fromarray(blend(grey, heatmap, negative, weight), "RGB")
    unit = max(14, round(side / 42))  # text readable when the picture is shown small
    panel = _panel(heatmap, result, contract, unit, negative, weight)
    picture = Image.new(
        "RGB", (size[0] + panel.width, max(size[1], panel.height)), PANEL_BACKGROUND
    )
    picture.paste(xray, (0, 0))
    picture.paste(panel, (size[0], 0))
    return picture


def to_png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def font(size: int) -> Font:
    """Pillow's bundled scalable font (Pillow >= 10.1 with FreeType), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


# A line of the panel: text and its style (title, text, note: secondary, smaller and dimmer).
Line = tuple[str, str]
# A mark beside the colour bar: words, the numbers (secondary), where on the bar (0 top, 1 bottom).
Mark = tuple[str, str, float]


def legend(
    heatmap: Heatmap,
    result: Scored,
    contract: Contract,
    negative: bool = False,
    weight: tuple[float, float] = (1.0, 1.0),
) -> tuple[list[Line], list[Line], list[Mark], list[Line]]:
    """The panel's words: (result, heading, marks beside the bar, below the bar). Said as a
    reader of X-rays asks it (which regions raised the score most); the numbers the colours
    stand for, in the map's unit, follow as secondary notes for those who want them."""
    pos, neg = contract.positive_label, contract.negative_label
    floor, full = f"{heatmap.scale.floor:.3g}", f"{heatmap.scale.full:.3g}"
    method = "class activation map" if heatmap.method == "cam" else "occlusion sensitivity"
    result_lines: list[Line] = [
        (result["prediction"], "title"),
        (f"P({pos}) {result['raw_score']:.3f}", "text"),
        (f"threshold {result['threshold']:g}", "text"),
        (method, "note"),
    ]
    if negative:
        heading: list[Line] = [
            ("regions that raised (red)", "text"),
            ("or lowered (blue) the", "text"),
            (f"{pos} score", "text"),
        ]
        marks: list[Mark] = [
            ("raised it most", f"+{full} and more", 0.0),
            ("uncoloured", f"within ±{floor}", 0.5),
            ("lowered it most", f"-{full} and less", 1.0),
        ]
    else:
        heading = [("regions that raised the", "text"), (f"{pos} score", "text")]
        marks = [("most", f"+{full} and more", 0.0), ("least shown", f"+{floor}", 1.0)]
    below: list[Line] = [
        ("uncoloured: no more than", "text"),
        (f"in {neg} X-rays", "text"),
        (f"numbers: {heatmap.unit},", "note"),
        ("on a scale fixed per model,", "note"),
        (heatmap.scale_source, "note"),
    ]
    if weight[0] < 1.0:
        below.append((f"{'red' if negative else 'colour'} drawn at {weight[0]:.0%}", "text"))
        below.append((f"strength: P({pos}) / threshold", "note"))
    if negative and weight[1] < 1.0:
        below.append((f"blue drawn at {weight[1]:.0%}", "text"))
        below.append(("strength: (1 - P) / (1 - threshold)", "note"))
    return result_lines, heading, marks, below


def _panel(
    heatmap: Heatmap,
    result: Scored,
    contract: Contract,
    unit: int,
    negative: bool,
    weight: tuple[float, float],
) -> Image.Image:
    """The result (label, score, threshold, method) above the legend (heading, bar and its
    marks, what no colour means, the numbers), as an image of its own: it never overlaps the
    X-ray."""
    top, heading, marks, below = legend(heatmap, result, contract, negative, weight)
    white, dim = (255, 255, 255), (170, 170, 170)
    fonts = {
        "title": font(int(unit * 1.6)),
        "text": font(unit),
        "note": font(max(11, int(unit * 0.75))),
    }
    colours = {
        "title": (255, 90, 70)
        if result["prediction"] == contract.positive_label
        else (110, 190, 255),
        "text": white,
        "note": dim,
    }
    pad = unit // 2
    bar_w, bar_h = unit * 2, unit * 10
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def box(text: str, style: str) -> tuple[int, int]:
        left, _, right, bottom_ = probe.textbbox((0, 0), text, font=fonts[style])
        return int(right - left), int(bottom_)

    lines = [*top, *heading, *below]
    widths = [box(t, style)[0] for t, style in lines]
    widths += [bar_w + pad * 2 + max(box(w, "text")[0], box(n, "note")[0]) for w, n, _ in marks]
    width = pad * 4 + max(widths)
    text_h, note_h = box("Ag", "text")[1], box("Ag", "note")[1]
    lines_h = sum(box(t, style)[1] + pad for t, style in lines)
    height = pad * 7 + lines_h + text_h + bar_h + note_h * 2
    panel = Image.new("RGB", (width, height), PANEL_BACKGROUND)
    draw = ImageDraw.Draw(panel)

    def write(y: int, block: list[Line]) -> int:
        for text, style in block:
            draw.text((pad * 2, y), text, font=fonts[style], fill=colours[style])
            y += box(text, style)[1] + pad
        return y

    y = write(pad * 2, top) + pad * 2  # a gap between the result and the legend
    y = write(y, heading) + text_h // 2
    bx = pad * 2
    panel.paste(_bar(bar_w, bar_h, negative), (bx, y))
    for words, numbers, at in marks:
        ty = y + round(at * (bar_h - 1))
        draw.line((bx + bar_w, ty, bx + bar_w + pad, ty), fill=white, width=max(1, unit // 10))
        wy = min(max(ty - text_h // 2, y - text_h // 2), y + bar_h - text_h)
        draw.text((bx + bar_w + pad * 2, wy), words, font=fonts["text"], fill=white)
        draw.text((bx + bar_w + pad * 2, wy + text_h + 2), numbers, font=fonts["note"], fill=dim)
    write(y + bar_h + note_h * 2 + pad, below)
    return panel


def _bar(width: int, height: int, negative: bool) -> Image.Image:
    """The colour bar painted as the X-ray is (paint), over greys from dark to light as in a
    chest X-ray: full at the top, the floor at the bottom, where the greys show through
    uncoloured as they do in the picture; with `negative`, mirrored below an uncoloured middle."""
    if negative:
        half = round(height * 0.45)
        t = np.concatenate(
            [np.linspace(1.0, 0.0, half), np.zeros(height - 2 * half), np.linspace(0.0, 1.0, half)]
        )
        side = np.arange(height) >= height - half
    else:
        t, side = np.linspace(1.0, 0.0, height), np.zeros(height, dtype=bool)
    greys = np.linspace(BAR_GREYS[0], BAR_GREYS[1], width)
    base = np.repeat(np.broadcast_to(greys, (height, width))[..., None], 3, axis=2)
    tt = np.repeat(t[:, None], width, axis=1)
    rgb = np.where(side[:, None, None], paint(base, tt, True), paint(base, tt, False))
    return Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), "RGB")


def overlay_png(
    engine: Engine,
    image: ImageSource,
    result: Scored | None = None,
    method: str = "cam",
    grid: int = DEFAULT_GRID,
    threshold: float | None = None,
    negative: bool = False,
) -> bytes:
    """PNG bytes of the X-ray with its heatmap overlaid, the label, score and legend beside it.

    `result` (from engine.predict on the same image) is printed if given; otherwise the
    result of the heatmap's own run is (the same score: one preprocessing, one model).
    `negative` also draws the evidence against PNEUMONIA, in blue.
    Raises ImageError for a bad image and UsageError for an unavailable method.
    """
    heatmap, own, data = heatmap_for(engine, image, method, grid, threshold)
    picture = render(data, heatmap, result or own, engine.contract, negative=negative)
    return to_png(picture)


def overlay_png_of(
    engine: Engine,
    x: np.ndarray,
    grey: np.ndarray,
    result: Scored | None = None,
    method: str = "cam",
    grid: int = DEFAULT_GRID,
    negative: bool = False,
) -> bytes:
    """`overlay_png` of an image already decoded elsewhere (a decode worker): its model
    tensor `x` and its `display_picture` `grey` (uint8, long side DISPLAY_SIDE). Nothing here
    parses the image's bytes."""
    heatmap = compute(engine, x, method, grid)
    own = engine.result(heatmap.score, engine.contract.threshold)
    picture = render(
        Image.fromarray(grey, "L"), heatmap, result or own, engine.contract, negative=negative
    )
    return to_png(picture)


def write_overlays(
    engine: Engine,
    items: list[tuple[str, Scored]],
    out_dir: Path,
    method: str = "cam",
    grid: int = DEFAULT_GRID,
    negative: bool = False,
) -> list[Path]:
    """One `<stem>.heatmap.png` per (image path, result) in `out_dir` (created); names made
    unique when two images share a stem."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileAccessError("create", out_dir, e) from e
    written: list[Path] = []
    used: set[str] = set()
    for image, result in items:
        stem = Path(image).stem
        name = f"{stem}.heatmap.png"
        n = 1
        while name in used:
            n += 1
            name = f"{stem}-{n}.heatmap.png"
        used.add(name)
        target = out_dir / name
        png = overlay_png(engine, image, result, method, grid, negative=negative)
        try:
            target.write_bytes(png)
        except OSError as e:
            raise FileAccessError("write", target, e) from e
        written.append(target)
    return written
