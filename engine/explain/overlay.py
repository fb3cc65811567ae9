"""Draw a heatmap over its X-ray with Pillow alone: colour map, legend, label and score.

The picture keeps the X-ray's aspect ratio (long side DISPLAY_SIDE px); everything drawn on it
(legend, text) sits inside the image. Colours: red for evidence of the positive class, blue for
the negative one, transparent near zero, on the X-ray in grey. The scale is symmetric around
zero and per image; the legend says its range and unit.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.contract import Contract
from engine.errors import FileAccessError
from engine.explain import DEFAULT_GRID
from engine.explain.heatmap import Heatmap, heatmap_for
from engine.runtime.decoders import ImageSource
from engine.runtime.engine import Engine
from engine.runtime.preprocess import grey_picture
from engine.runtime.results import Scored

DISPLAY_SIDE = 1024
MAX_ALPHA = 0.6
# Diverging colour map: -1 (negative class) .. 0 .. +1 (positive class), interpolated.
_STOPS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
_COLOURS = np.array(
    [[30, 70, 220], [40, 170, 255], [255, 255, 255], [255, 190, 0], [230, 20, 20]],
    dtype=np.float64,
)


def colourise(v: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] -> RGB floats 0..255 (shape + (3,))."""
    v = np.clip(v, -1.0, 1.0)
    return np.stack([np.interp(v, _STOPS, _COLOURS[:, i]) for i in range(3)], axis=-1)


def render(
    image: ImageSource,
    heatmap: Heatmap,
    result: Scored,
    contract: Contract,
    side: int = DISPLAY_SIDE,
) -> Image.Image:
    """The X-ray (grey) with the heatmap blended in, a legend and the result, as RGB."""
    base = grey_picture(image, side)
    scale = side / max(base.size)
    size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
    grey = np.asarray(base.resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    limit = float(np.max(np.abs(heatmap.values))) or 1.0
    field = Image.fromarray((heatmap.values / limit).astype(np.float32), "F")
    v = np.asarray(field.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    alpha = (MAX_ALPHA * np.clip(np.abs(v), 0.0, 1.0) ** 0.8)[..., None]
    rgb = grey[..., None] * (1.0 - alpha) + colourise(v) * alpha
    picture = Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture, "RGBA")
    unit = max(14, round(max(size) / 42))  # text readable when the picture is shown small
    _result_box(draw, result, contract, heatmap, unit)
    _legend(picture, draw, heatmap, limit, contract, unit)
    return picture


def to_png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font (Pillow >= 10.1 with FreeType), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _result_box(
    draw: ImageDraw.ImageDraw,
    result: Scored,
    contract: Contract,
    heatmap: Heatmap,
    unit: int,
) -> None:
    positive = result["prediction"] == contract.positive_label
    lines = [
        (
            result["prediction"],
            font(int(unit * 1.6)),
            (255, 90, 70) if positive else (110, 190, 255),
        ),
        (
            f"P({contract.positive_label}) {result['raw_score']:.3f}"
            f"  threshold {result['threshold']:g}",
            font(unit),
            (255, 255, 255),
        ),
        (
            "class activation map" if heatmap.method == "cam" else "occlusion sensitivity",
            font(int(unit * 0.85)),
            (210, 210, 210),
        ),
    ]
    pad = unit // 2
    widths = [draw.textbbox((0, 0), text, font=f)[2] for text, f, _ in lines]
    heights = [draw.textbbox((0, 0), text, font=f)[3] for text, f, _ in lines]
    box = (pad, pad, pad * 3 + max(widths), pad * 2 + sum(heights) + pad * (len(lines) - 1) + pad)
    draw.rounded_rectangle(box, radius=pad, fill=(0, 0, 0, 170))
    y: float = pad * 2
    for (text, f, colour), h in zip(lines, heights, strict=True):
        draw.text((pad * 2, y), text, font=f, fill=colour)
        y += h + pad


def _legend(
    picture: Image.Image,
    draw: ImageDraw.ImageDraw,
    heatmap: Heatmap,
    limit: float,
    contract: Contract,
    unit: int,
) -> None:
    """A vertical colour bar with its range and meaning, bottom right."""
    small = font(int(unit * 0.8))
    pad = unit // 2
    bar_w, bar_h = unit, min(picture.height // 3, unit * 10)
    labels = [
        f"+{limit:.2g} {contract.positive_label}",
        "0",
        f"-{limit:.2g} {contract.negative_label}",
    ]
    title = heatmap.unit
    text_w = int(max(draw.textbbox((0, 0), t, font=small)[2] for t in [*labels, title]))
    line_h = int(draw.textbbox((0, 0), "Ag", font=small)[3])
    width = pad * 3 + bar_w + text_w
    height = pad * 3 + line_h + bar_h + line_h // 2
    x0, y0 = picture.width - width - pad, picture.height - height - pad
    draw.rounded_rectangle((x0, y0, x0 + width, y0 + height), radius=pad, fill=(0, 0, 0, 170))
    draw.text((x0 + pad, y0 + pad), title, font=small, fill=(230, 230, 230))
    bx, by = x0 + pad, y0 + pad * 2 + line_h
    ramp = colourise(np.linspace(1.0, -1.0, bar_h))  # top: positive
    bar = np.repeat(ramp[:, None, :], bar_w, axis=1).round().astype(np.uint8)
    picture.paste(Image.fromarray(bar, "RGB"), (bx, by))
    for i, text in enumerate(labels):
        ty = by + round(i * (bar_h - 1) / 2) - line_h // 2
        draw.line((bx + bar_w, ty + line_h // 2, bx + bar_w + pad // 2, ty + line_h // 2))
        draw.text((bx + bar_w + pad, ty), text, font=small, fill=(255, 255, 255))


def overlay_png(
    engine: Engine,
    image: ImageSource,
    result: Scored | None = None,
    method: str = "cam",
    grid: int = DEFAULT_GRID,
    threshold: float | None = None,
) -> bytes:
    """PNG bytes of the X-ray with its heatmap overlaid, label and score in the corner.

    `result` (from engine.predict on the same image) is printed if given; otherwise the
    result of the heatmap's own run is (the same score: one preprocessing, one model).
    Raises ImageError for a bad image and UsageError for an unavailable method.
    """
    heatmap, own, data = heatmap_for(engine, image, method, grid, threshold)
    picture = render(data, heatmap, result or own, engine.contract)
    return to_png(picture)


def write_overlays(
    engine: Engine,
    items: list[tuple[str, Scored]],
    out_dir: Path,
    method: str = "cam",
    grid: int = DEFAULT_GRID,
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
        png = overlay_png(engine, image, result, method, grid)
        try:
            target.write_bytes(png)
        except OSError as e:
            raise FileAccessError("write", target, e) from e
        written.append(target)
    return written
