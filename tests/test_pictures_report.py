"""Evaluation plots and the batch HTML report, the report opened in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.errors import MissingExtraError
from pneumo_onnx.engine.explain.plots import DPI, FIGSIZE, PLOTS, figure, pyplot
from pneumo_onnx.engine.explain.report import write_report
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.metrics import calibration_bins, precision_recall_curve
from pneumo_onnx.engine.runtime.samples import SAMPLES_DIR

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_precision_recall_and_calibration_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.9])
    recall, precision, ap = precision_recall_curve(labels, scores)
    # thresholds 0.9, 0.6, 0.4, 0.1, -inf call 0, 1, 2, 3, 4 images positive
    assert recall.tolist() == [0.5, 0.5, 1.0, 1.0]
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    mean, positive, count, ece = calibration_bins(labels, scores, bins=2)
    assert count.tolist() == [2, 2]
    assert mean.tolist() == pytest.approx([0.25, 0.75])
    assert positive.tolist() == pytest.approx([0.5, 0.5])
    assert ece == pytest.approx(0.25)


def test_evaluate_plots_are_pngs_of_the_expected_size(tmp_path: Path) -> None:
    out = tmp_path / "plots"
    assert main(["evaluate", str(SAMPLES_DIR), "--plots", str(out), "--threads", "2"]) == 0
    expected = (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in PLOTS)
    for name in PLOTS:
        with Image.open(out / f"{name}.png") as img:
            img.verify()
        with Image.open(out / f"{name}.png") as img:
            assert img.format == "PNG" and img.size == expected
            assert np.asarray(img.convert("L")).std() > 10  # something was drawn


def test_plots_name_the_model_and_the_data(tmp_path: Path) -> None:
    """A PNG travels without its command line: each plot names the model (name, version,
    variant) and the data (folder, images per class), and the ROC AUC carries its interval."""
    out = tmp_path / "plots"
    args = ["evaluate", str(SAMPLES_DIR), "--plots", str(out), "--threads", "2"]
    assert main([*args, "--model", str(default_model_dir() / "1")]) == 0
    about = "model pneumonia v1 (fp32); data samples/: 3 NORMAL, 3 PNEUMONIA"
    for name in PLOTS:
        with Image.open(out / f"{name}.png") as png:
            assert png.text["Title"] == about
    labels, scores = np.array([0, 0, 1, 1, 1]), np.array([0.02, 0.5, 0.4, 0.97, 0.99])
    fig = figure("roc", labels, scores, 0.5, about=about)
    try:
        texts = [t.get_text() for t in fig.texts]
        curve = fig.axes[0].get_lines()[0].get_label()
    finally:
        pyplot().close(fig)
    assert texts == [about]
    assert " ".join(curve.split()) == "AUC 0.833 (95% CI 0.152 to 0.993, DeLong, logit scale)"


def test_operating_points_lie_on_top_and_inside(tmp_path: Path) -> None:
    """The threshold dot is drawn above the curve and above the recommended square (a smaller
    mark over a larger one, so both show when they coincide), and never clipped at an edge."""
    labels, scores = np.array([0, 0, 1, 1, 1]), np.array([0.02, 0.3, 0.4, 0.97, 0.99])
    for name in ("roc", "precision_recall"):
        fig = figure(name, labels, scores, 0.5, recommended=0.35)
        try:
            lines = {line.get_label().split()[0]: line for line in fig.axes[0].get_lines()}
            dot, square = lines["threshold"], lines["recommended"]
            curve = fig.axes[0].get_lines()[0]
            assert dot.get_zorder() > square.get_zorder() > curve.get_zorder()
            assert dot.get_markersize() < square.get_markersize()
            assert not dot.get_clip_on() and not square.get_clip_on()
        finally:
            pyplot().close(fig)


def test_histogram_counts_have_integer_ticks() -> None:
    fig = figure(
        "histogram", np.array([0, 0, 0, 1, 1, 1]), np.array([0.01, 0.02, 0.08, 1, 1, 1]), 0.5
    )
    try:
        ticks = fig.axes[0].get_yticks()
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)
    finally:
        pyplot().close(fig)


@pytest.mark.parametrize(
    "scores",
    [[0.03, 0.04, 0.05, 0.999, 0.999, 0.999], [0.97, 0.03, 0.5, 0.99, 0.02, 0.55]],
    ids=["corners", "edges"],
)
def test_calibration_counts_stay_inside_the_axes(scores: list[float]) -> None:
    fig = figure("calibration", np.array([0, 0, 0, 1, 1, 1]), np.array(scores), 0.5)
    try:
        fig.canvas.draw()
        box = fig.axes[0].get_window_extent()
        labels = [t for t in fig.axes[0].texts if t.get_text().startswith("n=")]
        assert labels
        for text in labels:
            extent = text.get_window_extent()
            assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
            assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
    finally:
        pyplot().close(fig)


def test_plots_carry_the_caveats_and_no_recommended_point() -> None:
    y, s = np.array([0, 1]), np.array([0.2, 0.8])
    fig = figure("roc", y, s, 0.5, recommended=0.3, caveats=["only 1 NORMAL"])
    try:
        notes = [t.get_text() for t in fig.texts]
        assert notes == ["No recommended threshold: only 1 NORMAL."]
        labels = [line.get_label() for line in fig.axes[0].get_lines()]
        assert not [label for label in labels if label.startswith("recommended")]
    finally:
        pyplot().close(fig)


def test_missing_matplotlib_is_a_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'pneumo-onnx\[report\]'"):
        pyplot()
    assert main(["evaluate", str(SAMPLES_DIR), "--plots", "/tmp/never"]) == 2
    assert not Path("/tmp/never").exists()


@pytest.fixture(scope="module")
def batch_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("xrays")
    shutil.copytree(SAMPLES_DIR, folder, dirs_exist_ok=True)
    (folder / "broken.jpeg").write_bytes(b"not an x-ray")
    csv_path, html_path = folder.parent / "results.csv", folder.parent / "report.html"
    args = ["batch", str(folder), "--recursive", "-o", str(csv_path), "--report", str(html_path)]
    assert main([*args, "--threads", "2"]) == 1  # one unreadable file
    return csv_path, html_path


def test_report_is_self_contained(batch_report: tuple[Path, Path]) -> None:
    page = batch_report[1].read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert not re.search(r"url\(", page)
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/") for src in images)
    assert len(images) == 1 + 6 + 6  # histogram, 6 heatmaps, 6 thumbnails (not the broken file)
    assert "broken.jpeg is not a supported image" in page
    assert page.count("<tr>") == 1 + 7


def test_report_maps_the_images_nearest_the_threshold(batch_report: tuple[Path, Path]) -> None:
    """The samples' folders name their labels and the model agrees with all six: the report
    maps them nearest the threshold first, those called NORMAL as well (tests/
    test_report_choice.py has the choice itself)."""
    page = batch_report[1].read_text()
    assert "<h2>Where the model looked: the 6 nearest the threshold 0.71</h2>" in page
    captions = re.findall(r"<figcaption>([^:]+): <b>([A-Z]+)</b>", page)
    assert sorted(name for name, _ in captions) == sorted(p.name for p in SAMPLES_DIR.glob("*/*"))
    assert {label for _, label in captions} == {"NORMAL", "PNEUMONIA"}
    assert "images called NORMAL are drawn faded" in page


def test_report_maps_a_folder_called_normal(tmp_path: Path) -> None:
    csv_path, html_path = tmp_path / "normal.csv", tmp_path / "normal.html"
    args = ["batch", str(SAMPLES_DIR / "NORMAL"), "-o", str(csv_path), "--report", str(html_path)]
    assert main([*args, "--threads", "2"]) == 0
    page = html_path.read_text()
    assert "<h2>Where the model looked: the 3 nearest the threshold 0.71</h2>" in page
    assert page.count("<figure ") == 3
    assert main([*args, "--overwrite", "--report-heatmaps", "0"]) == 0
    assert "Where the model looked" not in html_path.read_text()  # none asked for: no section


def test_report_caps_thumbnails_and_heatmaps(
    batch_report: tuple[Path, Path], tmp_path: Path
) -> None:
    csv_path = batch_report[0]
    lines = csv_path.read_text().splitlines()
    many = tmp_path / "many.csv"
    many.write_text("\n".join([lines[0], *(lines[1:] * 300)]) + "\n")  # 2100 rows
    held = write_report(
        Engine.load(threads=2), many, tmp_path / "r.html", heatmaps=2, max_thumbnails=20
    )
    assert held["rows"] == 2100 and held["thumbnails"] == 20 and held["heatmaps"] == 2
    assert held["bytes"] < 3_000_000


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium is not installed: the HTML report test needs it. Run `make setup` "
            "(installs the Debian packages chromium and chromium-driver as root) or "
            "apt-get install chromium chromium-driver"
        )
    return found


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_report_renders_in_headless_chromium(
    batch_report: tuple[Path, Path], tmp_path: Path
) -> None:
    url = batch_report[1].as_uri()
    shot = tmp_path / "shot.png"
    run = _run_chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", url)
    assert shot.is_file(), f"chromium wrote no screenshot: {run.stderr[-2000:]}"
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == (1280, 1600)
        grey = np.asarray(img.convert("L"), dtype=np.float64)
    assert grey.std() > 20, "the screenshot is blank"
    # The heatmaps band is colourful: a page that failed to show images would be grey/white.
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 80).mean() > 0.002  # 6 maps, 3 of them faded

    dom = _run_chromium(tmp_path, "--dump-dom", url).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attrs["images"] == "13" and attrs["images-ok"] == "13"  # every image decoded
    assert attrs["rows"] == "7"

    # The table's script sorts: by file name, ascending, from the URL.
    sorted_dom = _run_chromium(tmp_path, "--dump-dom", url + "#sort=file").stdout
    assert 'data-sorted-by="file:asc"' in sorted_dom
    files = re.findall(r'<td class="file" data-v="([^"]+)"', sorted_dom)
    assert len(files) == 7 and files == sorted(files)
    by_score = re.findall(r'<td class="file" data-v="([^"]+)"', dom)
    assert by_score != files  # the page's own order is by score


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray"], "--report works on local runs only, not with --ray"),
        (["--report-heatmaps", "-1"], "--report-heatmaps must be 0-100, got -1"),
    ],
)
def test_report_option_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "r.csv"
    args = ["batch", str(SAMPLES_DIR), "-o", str(out), "--report", str(tmp_path / "r.html")]
    assert main([*args, *extra]) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not out.exists()
