"""`pneumo batch --report report.html`: one self-contained HTML page people can look at.

Summary counts and positive rate, the score histogram, heatmaps where they inform (the
disagreements with the folders' labels when the batch is a labelled folder, then the images
nearest the threshold: engine.explain.choice), each at a size where its legend reads at 1:1,
and a sortable table (thumbnail, file, label, score, error). Everything is
inlined (images as data URIs, CSS and a few lines of script); a Content-Security-Policy forbids
any network fetch, so the file opens the same offline, from a mail attachment or an archive.

Size stays bounded for large folders: thumbnails (small JPEGs) only for the first
`max_thumbnails` rows in score order, heatmaps for at most `heatmaps` images.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from pneumo_onnx.engine.errors import FileAccessError, PneumoError
from pneumo_onnx.engine.explain.choice import Choice, choose
from pneumo_onnx.engine.explain.heatmap import cam_spec, heatmap_for
from pneumo_onnx.engine.explain.overlay import render
from pneumo_onnx.engine.explain.plots import histogram_png
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.preprocess import grey_picture

THUMB_SIDE = 96
HEATMAP_SIDE = 588  # X-ray's long side: legend text 14 px, shown 1:1 (no downscaling)
DEFAULT_HEATMAPS = 12
DEFAULT_THUMBNAILS = 500


def read_rows(results: Path) -> list[dict[str, Any]]:
    """The rows of a pneumo results file (.csv or .jsonl), scores as floats."""
    try:
        text = results.read_text(encoding="utf-8")
    except OSError as e:
        raise FileAccessError("read", results, e) from e
    if results.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        score = row.get("raw_score")
        row["raw_score"] = float(score) if score not in (None, "") else None
        row["error"] = row.get("error") or ""
    return rows


def write_report(
    engine: Engine,
    results: Path,
    report: Path,
    heatmaps: int = DEFAULT_HEATMAPS,
    max_thumbnails: int = DEFAULT_THUMBNAILS,
    seconds: float | None = None,
    workers: int | None = None,
) -> dict[str, int]:
    """Write the report for a results file; returns what it holds (rows, thumbnails,
    heatmaps, bytes). Needs matplotlib (the 'report' extra) for the histogram."""
    rows = read_rows(results)
    scored = sorted(
        (r for r in rows if r["raw_score"] is not None), key=lambda r: -float(r["raw_score"])
    )
    failed = [r for r in rows if r["raw_score"] is None]
    ordered = scored + failed
    c = engine.contract
    threshold = float(scored[0]["threshold"]) if scored else c.threshold
    counts = Counter(r["prediction"] for r in scored)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        thumbs = list(pool.map(_thumbnail, [r["image_path"] for r in ordered[:max_thumbnails]]))
    maps = _heatmaps(engine, choose(scored, threshold, heatmaps, _names(c)), threshold)
    shows_maps = heatmaps > 0 and cam_spec(engine) is not None
    histogram = ""
    if scored:
        png = histogram_png([float(r["raw_score"]) for r in scored], threshold, names=_names(c))
        histogram = _uri(png, "image/png")
    page = _page(
        rows=ordered,
        thumbs=thumbs,
        maps=maps if shows_maps else None,
        histogram=histogram,
        counts=counts,
        errors=len(failed),
        threshold=threshold,
        engine=engine,
        results=results,
        seconds=seconds,
    )
    try:
        report.write_text(page, encoding="utf-8")
    except OSError as e:
        raise FileAccessError("write", report, e) from e
    return {
        "rows": len(rows),
        "thumbnails": sum(1 for t in thumbs if t),
        "heatmaps": len(maps),
        "bytes": len(page.encode()),
    }


def _names(c: Any) -> tuple[str, str]:
    return (c.negative_label, c.positive_label)


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _jpeg(img: Image.Image, side: int, quality: int) -> str:
    img = img.copy()
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.convert("RGB").save(out, format="JPEG", quality=quality, optimize=True)
    return _uri(out.getvalue(), "image/jpeg")


def _thumbnail(path: str) -> str:
    """A small JPEG data URI, or '' for a file that cannot be shown (its row says why)."""
    try:
        return _jpeg(grey_picture(path, THUMB_SIDE), THUMB_SIDE, 70)
    except PneumoError:
        return ""


def _heatmaps(engine: Engine, chosen: list[Choice], threshold: float) -> list[dict[str, str]]:
    """Overlays of the chosen rows (CAM only: occlusion would multiply the batch's cost), at
    their own size: the page shows them 1:1, so the legend stays readable."""
    if not chosen or cam_spec(engine) is None:
        return []
    out = []
    for choice in chosen:
        try:
            heatmap, result, data = heatmap_for(
                engine, choice.row["image_path"], "cam", 8, threshold
            )
        except PneumoError:  # the file changed since it was scored: leave it out
            continue
        picture = render(data, heatmap, result, engine.contract, side=HEATMAP_SIDE)
        why = (
            f"labelled {choice.label}, called {result['prediction']}"
            if choice.reason == "disagrees"
            else f"{abs(result['raw_score'] - threshold):.3f} from the threshold"
        )
        out.append(
            {
                "src": _jpeg(picture, max(picture.size), 85),
                "width": str(picture.width),
                "height": str(picture.height),
                "name": Path(choice.row["image_path"]).name,
                "score": f"{result['raw_score']:.3f}",
                "label": result["prediction"],
                "reason": choice.reason,
                "why": why,
            }
        )
    return out


def _maps_section(maps: list[dict[str, str]], positive: str, threshold: float) -> list[str]:
    """The heatmaps' heading, what they are and why these, and the figures."""
    e = html.escape
    if not maps:
        return [
            "<h2>Where the model looked</h2>",
            '<p class="meta" id="no-maps">No image could be mapped: no heatmaps.</p>',
        ]
    wrong = sum(1 for m in maps if m["reason"] == "disagrees")
    near = len(maps) - wrong
    parts = [f"{wrong} where the model disagrees with the folder's label"] if wrong else []
    parts += [f"the {near} nearest the threshold {threshold:g}"] if near else []
    return [
        f"<h2>Where the model looked: {e(' and '.join(parts))}</h2>",
        f'<p class="meta" id="maps-note">Heatmaps are shown where they inform: where the call '
        "went against the folder's label, and where it could have gone either way (an image "
        f"far from the threshold looks like every other one). Colour marks the regions that "
        f"raised the {e(positive)} score most, on one scale for all images (the legend beside "
        "each; images called NORMAL are drawn faded).</p>",
        '<div class="maps">',
        *(
            f'<figure class="{m["reason"]}"><img src="{m["src"]}" width="{m["width"]}" '
            f'height="{m["height"]}" alt="heatmap of {e(m["name"])}">'
            f"<figcaption>{e(m['name'])}: <b>{e(m['label'])}</b> {e(m['score'])} "
            f"({e(m['why'])})</figcaption></figure>"
            for m in maps
        ),
        "</div>",
    ]


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1a202c;
background:#f7fafc}h1{margin:0 0 4px}h2{margin-top:32px}.meta{color:#4a5568;font-size:14px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}.card{background:#fff;border:1px solid
#e2e8f0;border-radius:8px;padding:12px 18px;min-width:120px}.card b{display:block;font-size:26px}
.pos{color:#c53030}.neg{color:#2b6cb0}.err{color:#975a16}
.maps{display:flex;flex-wrap:wrap;gap:12px}
.maps figure{margin:0;background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:6px;
max-width:100%}.maps img{max-width:100%;height:auto;background:#1a202c;display:block}
.maps figcaption{font-size:13px;padding-top:4px;
overflow-wrap:anywhere}table{border-collapse:collapse;background:#fff;width:100%;font-size:14px}
th,td{border-bottom:1px solid #e2e8f0;padding:4px 8px;text-align:left;vertical-align:middle}
th{cursor:pointer;background:#edf2f7;position:sticky;top:0;user-select:none}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.thumb{width:100px;height:70px}td.thumb img{max-width:96px;max-height:96px;display:block}
td.num{font-variant-numeric:tabular-nums}td.file{overflow-wrap:anywhere}
"""

# Click a header to sort; `#sort=<column>` (optionally `-` first for descending) sorts on load.
# After load, body[data-images-ok] counts images that decoded, for headless checks.
_JS = """
(function(){
const table=document.getElementById('results');const body=table.tBodies[0];
const heads=[...table.tHead.rows[0].cells];
function sortBy(key,desc){const idx=heads.findIndex(h=>h.dataset.key===key);if(idx<0)return;
const num=heads[idx].dataset.type==='num';
const rows=[...body.rows];rows.sort((a,b)=>{let x=a.cells[idx].dataset.v,y=b.cells[idx].dataset.v;
if(num){x=x===''?-Infinity:parseFloat(x);y=y===''?-Infinity:parseFloat(y);return desc?y-x:x-y}
const c=x<y?-1:x>y?1:0;return desc?-c:c});rows.forEach(r=>body.appendChild(r));
heads.forEach(h=>h.classList.remove('sorted-asc','sorted-desc'));
heads[idx].classList.add(desc?'sorted-desc':'sorted-asc');table.dataset.sortedBy=key+(desc?':desc':':asc')}
heads.forEach(h=>{if(!h.dataset.key)return;h.addEventListener('click',()=>{
const desc=h.classList.contains('sorted-asc')?true:h.classList.contains('sorted-desc')?false
:h.dataset.type==='num';sortBy(h.dataset.key,desc)})});
const m=/sort=(-?)([a-z_]+)/.exec(location.hash);if(m)sortBy(m[2],m[1]==='-');
window.addEventListener('load',()=>{const imgs=[...document.images];
document.body.dataset.imagesOk=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;
document.body.dataset.images=imgs.length;document.body.dataset.rows=body.rows.length});
})();
"""


def _page(
    *,
    rows: list[dict[str, Any]],
    thumbs: list[str],
    maps: list[dict[str, str]] | None,
    histogram: str,
    counts: Counter[str],
    errors: int,
    threshold: float,
    engine: Engine,
    results: Path,
    seconds: float | None,
) -> str:
    e = html.escape
    c = engine.contract
    total = len(rows)
    scored = total - errors
    positive = counts.get(c.positive_label, 0)
    rate = f"{positive / scored:.1%}" if scored else "-"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    speed = f", scored in {seconds:.1f} s" if seconds else ""
    model = f"{engine.model.name or engine.model.path.name} v{engine.model.version or '-'}"
    cards = [
        ("images", str(total), ""),
        (c.positive_label, str(positive), "pos"),
        (c.negative_label, str(counts.get(c.negative_label, 0)), "neg"),
        (f"{c.positive_label} rate", rate, "pos"),
        ("errors", str(errors), "err"),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>pneumo batch report: {e(results.name)}</title><style>{_CSS}</style></head>",
        "<body>",
        "<h1>Chest X-ray batch report</h1>",
        f'<div class="meta">{e(results.name)} &middot; model {e(model)} ({e(engine.model.variant)})'
        f" &middot; threshold {threshold:g} &middot; {e(when)}{e(speed)} &middot; "
        "research software, not a medical device</div>",
        '<div class="cards">',
        *(f'<div class="card"><b class="{cls}">{e(v)}</b>{e(k)}</div>' for k, v, cls in cards),
        "</div>",
    ]
    if histogram:
        out += [
            "<h2>Scores</h2>",
            f'<img id="histogram" src="{histogram}" alt="score histogram" width="600" '
            'height="320">',
        ]
    if maps is not None:
        out += _maps_section(maps, c.positive_label, threshold)
    shown = sum(1 for t in thumbs if t)
    note = f" (thumbnails for the first {len(thumbs)} rows by score)" if len(thumbs) < total else ""
    out += [
        f"<h2>All images ({total}){e(note)}</h2>",
        f'<p class="meta">Click a column to sort. {shown} thumbnails.</p>',
        '<table id="results"><thead><tr><th>image</th>'
        '<th data-key="file" data-type="text">file</th>'
        '<th data-key="prediction" data-type="text">prediction</th>'
        f'<th data-key="score" data-type="num">P({e(c.positive_label)})</th>'
        '<th data-key="confidence" data-type="num">confidence</th>'
        '<th data-key="error" data-type="text">error</th></tr></thead><tbody>',
    ]
    for i, row in enumerate(rows):
        thumb = thumbs[i] if i < len(thumbs) else ""
        img = f'<img src="{thumb}" alt="" loading="eager">' if thumb else ""
        score = row["raw_score"]
        label = row.get("prediction") or ""
        cls = "pos" if label == c.positive_label else "neg" if label else "err"
        confidence = row.get("confidence") or ""
        out.append(
            f'<tr><td class="thumb">{img}</td>'
            f'<td class="file" data-v="{e(row["image_path"])}">{e(row["image_path"])}</td>'
            f'<td class="{cls}" data-v="{e(label)}">{e(label)}</td>'
            f'<td class="num" data-v="{"" if score is None else score}">'
            f"{'' if score is None else f'{score:.4f}'}</td>"
            f'<td class="num" data-v="{e(str(confidence))}">'
            f"{'' if confidence == '' else f'{float(confidence):.3f}'}</td>"
            f'<td class="err" data-v="{e(row["error"])}">{e(row["error"])}</td></tr>'
        )
    out += ["</tbody></table>", f"<script>{_JS}</script>", "</body></html>"]
    return "\n".join(out)
