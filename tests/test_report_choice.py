"""Which images the batch report explains with a heatmap: the disagreements with the folders'
labels, then those nearest the threshold; never the certain ones first."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.explain.choice import choose, folder_label, has_labels
from pneumo_onnx.engine.runtime.samples import SAMPLES_DIR

LABELS = ("NORMAL", "PNEUMONIA")


def row(path: str, score: float | None, threshold: float = 0.71) -> dict[str, Any]:
    called = None if score is None else ("PNEUMONIA" if score > threshold else "NORMAL")
    return {"image_path": path, "raw_score": score, "prediction": called}


def test_nearest_the_threshold_without_labels() -> None:
    rows = [row(f"x/{i}.jpeg", s) for i, s in enumerate([1.0, 0.999, 0.70, 0.02, 0.75, 0.5])]
    rows.append(row("x/broken.jpeg", None))
    chosen = choose(rows, 0.71, 3, LABELS)
    assert [c.row["image_path"] for c in chosen] == ["x/2.jpeg", "x/4.jpeg", "x/5.jpeg"]
    assert {c.reason for c in chosen} == {"near"} and not has_labels(rows, LABELS)
    assert choose(rows, 0.71, 0, LABELS) == []


def test_disagreements_first_when_folders_name_labels() -> None:
    rows = [
        row("d/PNEUMONIA/a.jpeg", 1.0),
        row("d/PNEUMONIA/b.jpeg", 0.05),  # missed, confidently
        row("d/NORMAL/c.jpeg", 0.80),  # false alarm, near
        row("d/NORMAL/d.jpeg", 0.69),
        row("d/NORMAL/e.jpeg", 0.01),
    ]
    chosen = choose(rows, 0.71, 3, LABELS)
    assert [(Path(c.row["image_path"]).name, c.reason) for c in chosen] == [
        ("b.jpeg", "disagrees"),
        ("c.jpeg", "disagrees"),
        ("d.jpeg", "near"),
    ]
    assert chosen[0].label == "PNEUMONIA" and has_labels(rows, LABELS)
    assert folder_label("d/other/x.jpeg", LABELS) is None


@pytest.fixture(scope="module")
def labelled_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, str]]]:
    """A batch over the shipped samples laid out by label, with one NORMAL X-ray filed under
    PNEUMONIA/ (a disagreement the report must show first)."""
    folder = tmp_path_factory.mktemp("labelled")
    shutil.copytree(SAMPLES_DIR, folder, dirs_exist_ok=True)
    shutil.move(folder / "NORMAL" / "IM-0651-0001.jpeg", folder / "PNEUMONIA" / "IM-0651-0001.jpeg")
    csv_path, html_path = folder.parent / "r.csv", folder.parent / "r.html"
    args = ["batch", str(folder), "--recursive", "-o", str(csv_path), "--report", str(html_path)]
    assert main([*args, "--report-heatmaps", "3", "--threads", "2"]) == 0
    with csv_path.open() as f:
        return html_path.read_text(), list(csv.DictReader(f))


def test_report_shows_the_disagreement_then_the_nearest(
    labelled_report: tuple[str, list[dict[str, str]]],
) -> None:
    page, rows = labelled_report
    heading = "1 where the model disagrees with the folder&#x27;s label and the 2 nearest the"
    assert f"<h2>Where the model looked: {heading} threshold 0.71</h2>" in page
    captions = re.findall(r"<figcaption>([^:]+): <b>([A-Z]+)</b> ([0-9.]+) \(([^)]*)\)", page)
    assert captions[0][:2] == ("IM-0651-0001.jpeg", "NORMAL")
    assert captions[0][3] == "labelled PNEUMONIA, called NORMAL"
    rest = sorted(
        (r for r in rows if "IM-0651" not in r["image_path"]),
        key=lambda r: abs(float(r["raw_score"]) - 0.71),
    )
    assert [c[0] for c in captions[1:]] == [Path(r["image_path"]).name for r in rest[:2]]
    assert all(why.endswith("from the threshold") for *_, why in captions[1:])


def test_report_heatmaps_are_shown_at_their_own_size(
    labelled_report: tuple[str, list[dict[str, str]]],
) -> None:
    """Each heatmap is drawn with the legend at 14 px text and the page never scales it up
    or crops it: width and height attributes are the picture's own."""
    page = labelled_report[0]
    sizes = re.findall(r'<figure class="\w+"><img src="[^"]+" width="(\d+)" height="(\d+)"', page)
    assert len(sizes) == 3
    for width, height in sizes:
        assert 700 <= int(width) <= 1000 and int(height) >= 400
    assert "object-fit" not in page and "height:300px" not in page
