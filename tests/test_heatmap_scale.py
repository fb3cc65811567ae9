"""The heatmap colour scale, fixed per model: how it is measured, stored in `pneumo.cam` and read
back (older metadata without it included), and which scale each heatmap uses. No TensorFlow."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.errors import ContractError
from pneumo_onnx.engine.explain.heatmap import cam_spec, compute, heatmap_for, samples_scale
from pneumo_onnx.engine.explain.overlay import DISPLAY_SIDE
from pneumo_onnx.engine.repository.cam import CAM_KEY, CamSpec, EvidenceScale, measure_scale
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.preprocess import fit, grey_picture

SHIPPED = default_model_dir() / "1" / "model.onnx"


def with_cam_metadata(target: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """The shipped model with its pneumo.cam JSON changed by `change`."""
    model = onnx.load(SHIPPED)
    for prop in model.metadata_props:
        if prop.key == CAM_KEY:
            data = json.loads(prop.value)
            change(data)
            prop.value = json.dumps(data)
    target.write_bytes(model.SerializeToString())
    return target


def test_measure_scale_by_hand() -> None:
    # Two X-rays called NORMAL (scores <= 0.5) and two called PNEUMONIA, 2x2 maps each.
    maps = np.array(
        [
            [[-4.0, 1.0], [2.0, -8.0]],
            [[3.0, -1.0], [0.0, -2.0]],
            [[6.0, 9.0], [10.0, -1.0]],
            [[4.0, 5.0], [7.0, 8.0]],
        ]
    )
    scale = measure_scale(maps, np.array([0.1, 0.5, 0.9, 0.99]), threshold=0.5)
    normal = maps[:2].ravel()
    assert scale.floor == pytest.approx(np.percentile(normal, 99), abs=1e-4)  # 2.97
    assert scale.full == pytest.approx(np.percentile(maps[maps > 0], 99), abs=1e-4)  # 9.88
    assert scale.images == 4


@pytest.mark.parametrize(
    ("maps", "scores", "expected"),
    [
        ([[[1.0, 3.0]], [[2.0, 5.0]]], [0.9, 0.8], (0.0, 4.94)),  # none called NORMAL: no floor
        ([[[9.0, 1.0]], [[2.0, 1.0]]], [0.1, 0.9], (0.0, 8.79)),  # NORMAL maps reach as high
        ([[[-2.0, -4.0]]], [0.1], (0.0, 3.98)),  # nothing positive: absolute values
        ([[[0.0, 0.0]]], [0.1], (0.0, 1.0)),  # all zero: any scale will do
    ],
    ids=["no-normal", "no-separation", "no-positive", "all-zero"],
)
def test_measure_scale_edge_cases(
    maps: list[Any], scores: list[float], expected: tuple[float, float]
) -> None:
    scale = measure_scale(np.array(maps), np.array(scores), threshold=0.5)
    assert (scale.floor, scale.full) == pytest.approx(expected, abs=1e-4)


def test_measure_scale_needs_one_score_per_map() -> None:
    with pytest.raises(ValueError, match="one score per map, got 2 and 1"):
        measure_scale(np.zeros((2, 2, 2)), np.array([0.1]), 0.5)


def test_older_metadata_without_a_scale_still_reads() -> None:
    """The shipped version 1 was converted before scales were stored."""
    engine = Engine.load(default_model_dir() / "1", threads=2)
    spec = cam_spec(engine)
    assert spec is not None and spec.scale is None
    raw = json.loads(engine.session.get_modelmeta().custom_metadata_map[CAM_KEY])
    assert "scale" not in raw and raw["schema"] == 1
    again = CamSpec.from_metadata(spec.to_metadata())
    assert again is not None and again.scale is None and again.layer == spec.layer


def test_a_stored_scale_round_trips() -> None:
    spec = CamSpec("feature_map", "NHWC", np.ones(3), 0.5, "conv", EvidenceScale(2.5, 9.0, 70))
    data = json.loads(spec.to_metadata()[CAM_KEY])
    assert data["scale"] == {"floor": 2.5, "full": 9.0, "images": 70} and data["schema"] == 1
    again = CamSpec.from_metadata(spec.to_metadata())
    assert again is not None and again.scale == EvidenceScale(2.5, 9.0, 70)


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        ({"floor": 5.0, "full": 2.0, "images": 6}, "0 <= floor < full (finite)"),
        ({"floor": -1.0, "full": 2.0, "images": 6}, "got floor -1.0, full 2.0, images 6"),
        ({"floor": 0.0, "full": "inf", "images": 6}, "got floor 0.0, full inf"),
        ({"floor": 0.0, "full": 2.0, "images": 0}, "images >= 1"),
        ({"floor": 0.0, "full": 2.0}, "'images'"),
    ],
    ids=["floor-above-full", "negative-floor", "infinite", "no-images", "missing-key"],
)
def test_malformed_scales_are_contract_errors(
    tmp_path: Path, scale: dict[str, Any], message: str
) -> None:
    path = with_cam_metadata(tmp_path / "bad.onnx", lambda data: data.update(scale=scale))
    engine = Engine.load(path, threads=2)
    with pytest.raises(ContractError, match=r"model metadata 'pneumo\.cam' is malformed") as e:
        cam_spec(engine)
    assert message in e.value.message


def test_a_stored_scale_is_the_one_used(tmp_path: Path, samples: list[Path]) -> None:
    scale = {"floor": 10.0, "full": 20.0, "images": 70}
    engine = Engine.load(
        with_cam_metadata(tmp_path / "scaled.onnx", lambda data: data.update(scale=scale)),
        threads=2,
    )
    heatmap, _, _ = heatmap_for(engine, samples[3])
    assert heatmap.scale == EvidenceScale(10.0, 20.0, 70)
    assert heatmap.scale_source == "from 70 X-rays at conversion"


def test_without_a_stored_scale_the_samples_give_it(samples: list[Path]) -> None:
    """The fallback: the same rule on the 6 shipped samples, once per engine; for v1 about
    +24 to +36 logit (the validation split gives +21 to +37)."""
    engine = Engine.load(default_model_dir() / "1", threads=2)
    heatmap, _, _ = heatmap_for(engine, samples[0])
    assert heatmap.scale_source == "from 6 sample X-rays (none stored)"
    assert heatmap.unit == "logit (class activation)"
    assert 15.0 < heatmap.scale.floor < heatmap.scale.full < 50.0
    assert samples_scale(engine, "cam") is heatmap.scale  # measured once


def test_occlusion_scale_comes_from_the_samples_per_grid(samples: list[Path]) -> None:
    engine = Engine.load(threads=2)
    x = engine.preprocess(samples[4])
    heatmap = compute(engine, x, "occlusion", grid=4)
    assert heatmap.scale_source == "from 6 sample X-rays, grid 4"
    assert heatmap.unit == "logit drop when hidden"
    assert heatmap.scale == samples_scale(engine, "occlusion", 4)
    assert 0.0 <= heatmap.scale.floor < heatmap.scale.full
    assert samples_scale(engine, "occlusion", 2) != heatmap.scale


def test_cli_heatmap_negative(
    tmp_path: Path, samples: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    normal = samples[2]
    for flag, name in (([], "plain"), (["--heatmap-negative"], "negative")):
        code = main(["predict", str(normal), "--heatmap", str(tmp_path / name), *flag])
        assert code == 0 and "wrote 1 heatmaps" in capsys.readouterr().err
    width, height = fit(grey_picture(normal, DISPLAY_SIDE).size, DISPLAY_SIDE)
    blue = []
    for name in ("plain", "negative"):
        with Image.open(tmp_path / name / f"{normal.stem}.heatmap.png") as picture:
            xray = np.asarray(picture.crop((0, 0, width, height)), dtype=np.int16)
        blue.append(int((xray[..., 2] - xray[..., 0] > 60).sum()))
    assert blue[0] == 0 and blue[1] > 1000  # evidence against PNEUMONIA only when asked


def test_scores_from_saturated_maps_are_0_and_1_without_overflow() -> None:
    """A model fed out of its input range gives huge logits: the score rebuilt from its CAM is
    still 0 or 1, and numpy does not warn (warnings are errors in the tests)."""
    spec = CamSpec("feature_map", "NHWC", np.ones(2), 0.0)
    maps = np.stack([np.full((2, 2), -1e4), np.zeros((2, 2)), np.full((2, 2), 1e4)])
    np.testing.assert_array_equal(spec.scores(maps), [0.0, 0.5, 1.0])
