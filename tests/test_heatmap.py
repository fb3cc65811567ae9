"""Heatmaps on the shipped model and samples: CAM numerics, occlusion, the overlay picture, the
`--heatmap` CLI, the validator's CAM check. No TensorFlow."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from pneumo_onnx.convert.validate import validate_file
from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.explain.heatmap import cam_spec, compute, heatmap_for
from pneumo_onnx.engine.explain.overlay import DISPLAY_SIDE, blend, overlay_png, render, weights
from pneumo_onnx.engine.repository.cam import CAM_KEY, FEATURE_OUTPUT
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.preprocess import fit, grey_picture
from pneumo_onnx.engine.runtime.session import create_session, run_batched


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(threads=2)


def without_cam(target: Path) -> Path:
    """The shipped model with its feature-map output and pneumo.cam metadata removed."""
    model = onnx.load(default_model_dir() / "1" / "model.onnx")
    keep = [o for o in model.graph.output if o.name != FEATURE_OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    nodes = [n for n in model.graph.node if FEATURE_OUTPUT not in n.output]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    props = [p for p in model.metadata_props if p.key != CAM_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    target.write_bytes(model.SerializeToString())
    return target


def test_cam_rebuilds_the_engine_score(engine: Engine, samples: list[Path]) -> None:
    spec = cam_spec(engine)
    assert spec is not None and spec.layout == "NCHW" and spec.weights.shape == (128,)  # v2
    for path in samples:
        heatmap, result, _ = heatmap_for(engine, path)
        assert heatmap.method == "cam" and heatmap.values.shape == (16, 16)
        predicted = engine.predict(path)
        assert result == predicted  # same preprocessing, same run, same result
        rebuilt = float(spec.scores(heatmap.values[None])[0])
        assert rebuilt == pytest.approx(predicted["raw_score"], abs=1e-5)


def test_cam_highlights_differ_between_classes(engine: Engine, samples: list[Path]) -> None:
    """Mean CAM is the logit minus the bias: positive images have the larger mean."""
    means = {p.parent.name: [] for p in samples}
    for path in samples:
        means[path.parent.name].append(heatmap_for(engine, path)[0].values.mean())
    assert min(means["PNEUMONIA"]) > max(means["NORMAL"])


def test_scoring_fetches_only_the_score(engine: Engine) -> None:
    session = create_session(default_model_dir() / "1" / "model.onnx")
    assert [o.name for o in session.get_outputs()] == ["score", FEATURE_OUTPUT]
    out = run_batched(session, np.zeros((3, 128, 128, 3), np.float32), batch_size=2)
    assert out.shape == (3, 1)


def xray_size(data: bytes | Image.Image | np.ndarray) -> tuple[int, int]:
    """Where render puts the X-ray: (0, 0) to this size."""
    return fit(grey_picture(data, DISPLAY_SIDE).size, DISPLAY_SIDE)


def red_and_blue(picture: Image.Image, size: tuple[int, int]) -> tuple[float, float]:
    """Shares of strongly red and strongly blue pixels in the X-ray area (top left, `size`)."""
    x = np.asarray(picture.crop((0, 0, *size)), dtype=np.int16)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return float(((r - g > 60) & (r - b > 60)).mean()), float((b - r > 60).mean())


def warm(picture: Image.Image, size: tuple[int, int]) -> float:
    """Share of the X-ray area with any evidence colour at all (yellow to red over grey)."""
    x = np.asarray(picture.crop((0, 0, *size)), dtype=np.int16)
    return float((x[..., 0] - x[..., 2] > 30).mean())


@pytest.mark.parametrize("size", [(300, 600), (700, 350), (512, 512)], ids=str)
def test_overlay_keeps_the_aspect_ratio(engine: Engine, size: tuple[int, int]) -> None:
    width, height = size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width), dtype=np.uint8)
    png = overlay_png(engine, pixels)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.mode == "RGB"
    xray = fit(size, DISPLAY_SIDE)
    assert max(xray) == DISPLAY_SIDE
    assert xray[0] / xray[1] == pytest.approx(width / height, rel=0.01)
    assert picture.width > xray[0] + 200 and picture.height >= xray[1]  # the panel, beside


def test_label_and_legend_lie_outside_the_xray(engine: Engine, samples: list[Path]) -> None:
    """The X-ray area of the picture is exactly the X-ray with its colours: nothing drawn on it;
    the panel to its right holds the text and the colour bar."""
    heatmap, result, data = heatmap_for(engine, samples[3])
    for negative in (False, True):
        picture = render(data, heatmap, result, engine.contract, negative=negative)
        grey = grey_picture(data, DISPLAY_SIDE)
        size = fit(grey.size, DISPLAY_SIDE)
        expected = blend(np.asarray(grey.resize(size, Image.Resampling.LANCZOS)), heatmap, negative)
        assert np.array_equal(np.asarray(picture.crop((0, 0, *size))), expected)
        panel = np.asarray(picture.crop((size[0], 0, picture.width, picture.height)), np.int16)
        assert (panel.max(axis=2) > 200).sum() > 500  # white text
        assert (np.abs(panel[..., 0] - panel[..., 2]) > 60).sum() > 300  # the colour bar


def test_normal_sample_is_quiet_and_pneumonia_sample_is_red(
    engine: Engine, samples: list[Path]
) -> None:
    """On the model's fixed scale, the NORMAL samples (v2: P 0.009 to 0.033) show no colour at
    all, while every PNEUMONIA sample does (measured: 2.6% to 16% of the X-ray). Each NORMAL
    sample holds a patch above the scale's floor (its map peaks at 26 to 33 logit, the floor
    is about 25; a CAM peaks locally whatever the score): below the threshold the evidence for
    PNEUMONIA is drawn at P / threshold of its strength, so they stay quiet (a per-image scale
    painted 2.8% of v1's 0.008 one red)."""
    shares = {}
    for path in samples:
        heatmap, result, data = heatmap_for(engine, path)
        picture = render(data, heatmap, result, engine.contract)
        shares[path.name] = (result["raw_score"], warm(picture, xray_size(data)))
    quiet = [share for name, (_, share) in shares.items() if not name.startswith("person")]
    loud = [share for name, (_, share) in shares.items() if name.startswith("person")]
    assert len(quiet) == 3 and max(quiet) == 0.0, shares
    assert len(loud) == 3 and min(loud) > 0.01, shares


def test_evidence_is_faded_below_the_threshold(engine: Engine, samples: list[Path]) -> None:
    """The same map drawn for a score below the threshold is fainter, in proportion."""
    pneumonia = next(p for p in samples if p.name.startswith("person259"))
    heatmap, result, data = heatmap_for(engine, pneumonia)  # P ~ 1, its map the strongest
    assert weights(result)[0] == 1.0 and weights(result)[1] < 0.01  # P ~ 1: little against
    size = xray_size(data)
    full = red_and_blue(render(data, heatmap, result, engine.contract), size)[0]
    low = {**result, "raw_score": 0.1 * result["threshold"], "prediction": "NORMAL"}
    assert weights(low) == (pytest.approx(0.1), 1.0)
    faded = render(data, heatmap, low, engine.contract)  # type: ignore[arg-type]
    assert full > 0.01 and red_and_blue(faded, size)[0] < full / 4


def test_negative_evidence_only_when_asked(engine: Engine, samples: list[Path]) -> None:
    normal = samples[2]  # P(PNEUMONIA) 0.012: its map is mostly evidence against
    heatmap, result, data = heatmap_for(engine, normal)
    size = xray_size(data)
    plain = render(data, heatmap, result, engine.contract)
    both = render(data, heatmap, result, engine.contract, negative=True)
    assert red_and_blue(plain, size)[1] == 0.0
    assert red_and_blue(both, size)[1] > 0.001
    png = Image.open(io.BytesIO(overlay_png(engine, normal, negative=True)))
    assert np.array_equal(np.asarray(png), np.asarray(both))


def test_occlusion_on_a_model_without_cam(tmp_path: Path, samples: list[Path]) -> None:
    engine = Engine.load(without_cam(tmp_path / "plain.onnx"), threads=2)
    assert cam_spec(engine) is None
    x = engine.preprocess(samples[-1])
    with pytest.raises(UsageError, match=r"no class activation map output.*'occlusion'"):
        compute(engine, x, "cam")
    heatmap = compute(engine, x, "auto", grid=4)
    assert heatmap.method == "occlusion" and heatmap.values.shape == (4, 4)
    assert heatmap.score == pytest.approx(engine.predict(samples[-1])["raw_score"], abs=1e-6)
    assert np.abs(heatmap.values).max() > 0  # hiding parts of a real X-ray changes the score


def test_occlusion_cells_match_single_runs(engine: Engine, samples: list[Path]) -> None:
    """The batched occlusion equals hiding one cell by hand and scoring it alone."""
    x = engine.preprocess(samples[0])
    heatmap = compute(engine, x, "occlusion", grid=2)
    hidden = x.copy()
    hidden[:64, 64:] = x.mean(axis=(0, 1))
    p0, p1 = engine.scores(x[None])[0], engine.scores(hidden[None])[0]
    expected = np.log(p0 / (1 - p0)) - np.log(p1 / (1 - p1))
    assert heatmap.values[0, 1] == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("method", "grid", "message"),
    [
        ("gradcam", 8, "heatmap method must be one of cam, occlusion, auto, got 'gradcam'"),
        ("occlusion", 1, "occlusion grid must be between 2 and 16, got 1"),
        ("occlusion", 64, "occlusion grid must be between 2 and 16, got 64"),
    ],
)
def test_bad_heatmap_options(engine: Engine, method: str, grid: int, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        compute(engine, np.zeros((128, 128, 3), np.float32), method, grid)


def test_cli_predict_heatmap(
    tmp_path: Path, samples: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.jpeg"
    bad.write_text("not an image")
    out = tmp_path / "maps"
    code = main(["predict", str(samples[0]), str(samples[3]), str(bad), "--heatmap", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "error: notes.jpeg is not a supported image" in captured.err
    assert "wrote 2 heatmaps" in captured.err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{p.stem}.heatmap.png" for p in (samples[0], samples[3]))


def test_cli_predict_heatmap_needs_cam_or_occlusion(
    tmp_path: Path, samples: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    plain = without_cam(tmp_path / "plain.onnx")
    args = ["predict", str(samples[0]), "--model", str(plain), "--heatmap", str(tmp_path / "m")]
    assert main(args) == 2
    assert "has no class activation map output" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    assert main([*args, "--heatmap-method", "occlusion", "--occlusion-grid", "4"]) == 0
    assert len(list((tmp_path / "m").iterdir())) == 1


def test_validate_catches_wrong_cam_weights(tmp_path: Path) -> None:
    model = onnx.load(default_model_dir() / "1" / "model.onnx")
    for prop in model.metadata_props:
        if prop.key == CAM_KEY:
            data = json.loads(prop.value)
            data["weights"] = [w * 1.5 for w in data["weights"]]
            prop.value = json.dumps(data)
    path = tmp_path / "tampered.onnx"
    path.write_bytes(model.SerializeToString())
    checks = {c.name: c for c in validate_file(path).checks}
    assert not checks["class_activation_map"].passed
    assert "> tolerance 0.0001" in checks["class_activation_map"].detail
    shipped = {c.name: c for c in validate_file(default_model_dir() / "1" / "model.onnx").checks}
    assert shipped["class_activation_map"].passed and shipped["contract"].passed
