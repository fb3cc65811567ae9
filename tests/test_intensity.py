"""Intensity steps against the libraries they reproduce: cv2 (opencv-python-headless, a dev-only
dependency: the engine never imports it) and Pillow, compared bit-exactly on real X-rays (the
full-resolution set of ../shared when present, else the shipped samples), on synthetic images
(gradients, constant and tiny images, sizes the tile grid does not divide) and at parameter edges;
then the steps' dict form and command-line spelling, and each of their error messages.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from pneumo_onnx.engine.errors import ContractError, ImageError, UsageError
from pneumo_onnx.engine.intensity_spelling import parse_step, spelling
from pneumo_onnx.engine.intensity_steps import (
    Autocontrast,
    Clahe,
    EqualizeHist,
    EqualizePil,
    GammaCv2,
    GammaPil,
    Invert,
    ScaleAbs,
    Step,
    steps_from_list,
)
from pneumo_onnx.engine.runtime import intensity
from pneumo_onnx.engine.runtime.intensity import apply_steps
from pneumo_onnx.engine.runtime.samples import sample_images

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the 'dev' extra) is missing")

SHARED_FULLRES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fullres"
X86 = platform.machine().lower() in ("x86_64", "amd64")
# cv2.convertScaleAbs fuses its multiply-add where OpenCV dispatches AVX2 code (x86-64), and
# always on ARM64 (NEON's v_fma); '?' in the features line marks a feature this CPU lacks.
CV2_FUSES = not X86 or re.search(r"\*AVX2(?!\?)", cv2.getCPUFeaturesLine()) is not None
CLAHE_PARAMS = [(2.0, (8, 8)), (3.0, (16, 16)), (1.0, (4, 4)), (40.0, (8, 8)), (0.0, (8, 8))]
CLAHE_PARAMS += [(2.5, (5, 3)), (0.01, (2, 7))]


def _ids(params: list) -> list[str]:
    return [f"{clip}-{grid[0]}x{grid[1]}" for clip, grid in params]


@pytest.fixture(scope="module")
def xray_paths() -> list[Path]:
    """12 real X-rays, half of each class, or the 6 shipped samples."""
    if not SHARED_FULLRES.is_dir():
        return sample_images()
    return [
        p for c in ("NORMAL", "PNEUMONIA") for p in sorted((SHARED_FULLRES / c).glob("*"))[::17][:6]
    ]


@pytest.fixture(scope="module")
def xrays(xray_paths: list[Path]) -> list[np.ndarray]:
    """Each X-ray 500 px wide (Pillow's bicubic), and half of them 317 px wide too: heights and
    widths that no tile grid here divides, and some it does."""
    out = []
    for i, path in enumerate(xray_paths):
        img = Image.open(path).convert("L")
        for width in (500, 317) if i % 2 else (500,):
            out.append(np.asarray(img.resize((width, round(width * img.height / img.width)))))
    return out


def synthetic() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    ramp = np.linspace(0, 255, 48).astype(np.uint8)
    return [
        np.tile(ramp, (64, 1)),  # horizontal gradient
        np.tile(np.linspace(0, 255, 97).astype(np.uint8)[:, None], (1, 203)),
        (np.add.outer(np.arange(100), np.arange(100)) * 1.27).astype(np.uint8),
        np.zeros((50, 50), np.uint8),
        np.full((50, 50), 255, np.uint8),
        np.full((33, 17), 77, np.uint8),
        np.full((1, 1), 200, np.uint8),
        np.zeros((1, 1), np.uint8),
        rng.integers(0, 256, (2, 3), dtype=np.uint8),
        rng.integers(0, 256, (7, 300), dtype=np.uint8),
        rng.integers(0, 256, (300, 7), dtype=np.uint8),
        rng.integers(0, 256, (129, 131), dtype=np.uint8),
        (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8),  # two levels
        rng.integers(100, 104, (80, 90), dtype=np.uint8),  # a narrow range
        np.tile(np.arange(256, dtype=np.uint8), (2, 1)),  # every level once per row
    ]


SYNTHETIC = synthetic()
SYN_IDS = [f"{i}-{a.shape[0]}x{a.shape[1]}" for i, a in enumerate(SYNTHETIC)]


def _same(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.uint8, what
    assert not diff.any(), f"{what}: {np.count_nonzero(diff)} pixels differ, max {diff.max()}"


# --- OpenCV ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("clip", "grid"), CLAHE_PARAMS, ids=_ids(CLAHE_PARAMS))
def test_clahe_equals_cv2_on_xrays(xrays: list[np.ndarray], clip: float, grid: tuple) -> None:
    for img in xrays:
        theirs = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid).apply(img)
        _same(intensity.clahe(img, clip, grid), theirs, f"{img.shape}")


def test_clahe_equals_cv2_at_full_size(xray_paths: list[Path]) -> None:
    img = np.asarray(Image.open(max(xray_paths, key=lambda p: p.stat().st_size)).convert("L"))
    for clip, grid in CLAHE_PARAMS[:4]:
        theirs = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid).apply(img)
        _same(intensity.clahe(img, clip, grid), theirs, f"{img.shape} {clip} {grid}")


@pytest.mark.parametrize(("clip", "grid"), CLAHE_PARAMS, ids=_ids(CLAHE_PARAMS))
def test_clahe_equals_cv2_on_synthetic_images(clip: float, grid: tuple) -> None:
    for img in SYNTHETIC:
        theirs = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid).apply(img)
        _same(intensity.clahe(img, clip, grid), theirs, f"{img.shape}")


def test_clahe_equals_cv2_on_random_sizes_grids_and_limits() -> None:
    """Grids larger than the image (the border reflected again), 1xN grids, odd sizes."""
    rng = np.random.default_rng(11)
    for _ in range(250):
        h, w, cols, rows = (
            int(v) for v in rng.integers(1, 90, 2).tolist() + rng.integers(1, 20, 2).tolist()
        )
        clip = float(rng.choice([0.0, 0.001, 1.0, 2.0, 3.5, 40.0, 1e4, rng.uniform(0, 10)]))
        img = rng.integers(0, 256, (h, w), dtype=np.uint8) // int(rng.choice([1, 16, 64]))
        theirs = cv2.createCLAHE(clipLimit=clip, tileGridSize=(cols, rows)).apply(img)
        _same(intensity.clahe(img, clip, (cols, rows)), theirs, f"{img.shape} {clip} {cols}x{rows}")


@pytest.mark.skipif(not X86, reason="an out-of-range float -> int cast is x86's integer indefinite")
def test_clahe_clip_limit_beyond_int_range_clips_at_one_as_cv2_does() -> None:
    img = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    theirs = cv2.createCLAHE(clipLimit=1e10, tileGridSize=(2, 2)).apply(img)
    _same(intensity.clahe(img, 1e10, (2, 2)), theirs, "clip 1e10")
    assert not np.array_equal(theirs, intensity.clahe(img, 0.0, (2, 2)))


def test_equalize_hist_equals_cv2(xrays: list[np.ndarray]) -> None:
    rng = np.random.default_rng(3)
    randoms = []
    for _ in range(200):
        low, high = sorted(rng.integers(0, 256, 2).tolist())
        randoms.append(rng.integers(low, high + 1, tuple(rng.integers(1, 70, 2)), dtype=np.uint8))
    for img in [*xrays, *SYNTHETIC, *randoms]:
        _same(intensity.equalize_hist_cv2(img), cv2.equalizeHist(img), f"{img.shape}")


def _scale_abs_params() -> list[tuple[float, float]]:
    rng = np.random.default_rng(0)
    params = list(
        zip(rng.uniform(-3, 3, 300).tolist(), rng.uniform(-300, 300, 300).tolist(), strict=True)
    )
    params += [
        (int(a) / 4, int(b) / 2)
        for a, b in zip(rng.integers(-8, 9, 100), rng.integers(-40, 40, 100), strict=True)
    ]
    params += [
        (1 / int(n), int(b) + 0.5)
        for n, b in zip(rng.integers(1, 20, 100), rng.integers(-10, 10, 100), strict=True)
    ]
    params += [(1.3, 0.0), (1.0, 0.5), (0.5, 0.0), (0.0, 127.5), (0.0, -0.5), (-1.0, 0.0)]
    params += [(1e8, 0.0), (1e30, 5.0), (-1e30, 0.0), (3e38, 3e38), (1e-30, 2.5), (1.0, 1e-8)]
    # 3 * alpha is a float32 midpoint, beta too small for float64 to keep: only exact
    # arithmetic rounds 3 * alpha + beta to the float32 above it, as one FMA does (-> 3, not 2).
    params.append((6990507 / 2**23, 2.0**-60))
    return params


def test_scale_abs_equals_cv2_on_this_cpu(xrays: list[np.ndarray]) -> None:
    levels = np.tile(np.arange(256, dtype=np.uint8), (2, 1))
    narrow = levels[:, :7].copy()  # narrower than one SIMD vector: OpenCV's scalar loop
    for alpha, beta in _scale_abs_params():
        for img in (levels, narrow):
            theirs = cv2.convertScaleAbs(img, alpha=alpha, beta=beta)
            _same(intensity.scale_abs(img, alpha, beta, CV2_FUSES), theirs, f"{alpha}, {beta}")
    rgb = np.stack([xrays[0], 255 - xrays[0], xrays[0] // 3], -1)
    for img in (xrays[1], rgb):
        theirs = cv2.convertScaleAbs(img, alpha=1.7, beta=-20.5)
        _same(intensity.scale_abs(img, 1.7, -20.5, CV2_FUSES), theirs, f"{img.shape}")


@pytest.mark.skipif(not X86, reason="ARM64's baseline NEON fuses even when unoptimized")
def test_scale_abs_without_fma_equals_unoptimized_cv2() -> None:
    levels = np.tile(np.arange(256, dtype=np.uint8), (2, 1))
    cv2.setUseOptimized(False)  # baseline SSE code: multiply, then add
    try:
        for alpha, beta in _scale_abs_params():
            theirs = cv2.convertScaleAbs(levels, alpha=alpha, beta=beta)
            _same(intensity.scale_abs(levels, alpha, beta, fma=False), theirs, f"{alpha}, {beta}")
    finally:
        cv2.setUseOptimized(True)
    fused = intensity.scale_abs(levels, 0.1, 3.7, fma=True)
    assert np.count_nonzero(fused != intensity.scale_abs(levels, 0.1, 3.7, fma=False)) > 0


# --- Pillow, and the LUT recipes ------------------------------------------------------------


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.stack([img, 255 - img, img // 2 + 64], -1)


def test_equalize_pil_equals_pillow(xrays: list[np.ndarray]) -> None:
    for img in [*xrays, *SYNTHETIC, _rgb(xrays[0]), _rgb(SYNTHETIC[13])]:
        theirs = np.asarray(ImageOps.equalize(Image.fromarray(img)))
        _same(intensity.equalize_pil(img), theirs, f"{img.shape}")


AUTOCONTRAST = [
    (0, None), (2, None), ((1, 5), None), (0.7, 0), (49.9, None), (50, None), (100, None),
    ((0, 100), None), (3, [0, 255]), (0, list(range(256))), (1.5, 77), ((0.3, 0), [10, 11, 12]),
]  # fmt: skip


@pytest.mark.parametrize(("cutoff", "ignore"), AUTOCONTRAST, ids=[str(p) for p in AUTOCONTRAST])
def test_autocontrast_pil_equals_pillow(
    xrays: list[np.ndarray], cutoff: float | tuple[float, float], ignore: int | list[int] | None
) -> None:
    for img in [*xrays, *SYNTHETIC, _rgb(xrays[2])]:
        theirs = np.asarray(ImageOps.autocontrast(Image.fromarray(img), cutoff, ignore))
        _same(intensity.autocontrast_pil(img, cutoff, ignore), theirs, f"{img.shape}")


def test_invert_equals_pillow_and_cv2(xrays: list[np.ndarray]) -> None:
    four = np.stack([xrays[0]] * 4, -1)
    for img in [xrays[0], _rgb(xrays[0]), SYNTHETIC[6]]:
        _same(intensity.invert(img), np.asarray(ImageOps.invert(Image.fromarray(img))), "PIL")
    for img in [xrays[0], _rgb(xrays[0]), four]:
        _same(intensity.invert(img), cv2.bitwise_not(img), f"cv2 {img.shape}")


def _exponents() -> list[float]:
    rng = np.random.default_rng(9)
    return [1 / 1.5, 1 / 2.2, 1 / 0.5, 2.2, 0.5, 1.0, 1 / 3, *rng.uniform(0.05, 5, 40).tolist()]


def test_gamma_cv2_equals_the_lut_recipe(xrays: list[np.ndarray]) -> None:
    for e in _exponents():
        recipe = np.array([((i / 255.0) ** e) * 255 for i in np.arange(0, 256)]).astype("uint8")
        vectorised = ((np.arange(256) / 255.0) ** e * 255).astype("uint8")
        np.testing.assert_array_equal(recipe, vectorised)  # numpy's pow agrees after truncation
        for img in (xrays[3], _rgb(xrays[3])):
            _same(intensity.gamma(img, e, "cv2"), cv2.LUT(img, recipe), f"{e} {img.shape}")


def _pil_gamma(img: np.ndarray, e: float) -> np.ndarray:
    """The common Pillow gamma: a float-returning function, which Image.point rounds."""
    return np.asarray(Image.fromarray(img).point(lambda p: 255 * (p / 255) ** e))


def test_gamma_pil_equals_image_point(xrays: list[np.ndarray]) -> None:
    for e in _exponents():
        for img in (xrays[4], _rgb(xrays[4]), SYNTHETIC[14]):
            theirs = _pil_gamma(img, e)
            _same(intensity.gamma(img, e, "pil"), theirs, f"{e} {img.shape}")


IMAGE_ERRORS = [
    (intensity.clahe, (4, 4, 3), np.uint8, "CLAHE (cv2) takes {} HxW, got uint8 (4, 4, 3)"),
    (
        intensity.equalize_hist_cv2,
        (4, 4),
        "f4",
        "cv2.equalizeHist takes {} HxW, got float32 (4, 4)",
    ),
    (
        intensity.equalize_pil,
        (4, 4, 4),
        np.uint8,
        "PIL ImageOps.equalize takes {} HxW or HxWx3, got uint8 (4, 4, 4)",
    ),
    (intensity.invert, (0, 4), np.uint8, "invert takes {} HxW or HxWxC, got uint8 (0, 4)"),
]


@pytest.mark.parametrize(("step", "shape", "dtype", "message"), IMAGE_ERRORS, ids=range(4))
def test_steps_refuse_images_their_library_refuses(
    step: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...], dtype: Any, message: str
) -> None:
    with pytest.raises(ImageError) as e:
        step(np.zeros(shape, dtype))
    assert e.value.message == message.format("a non-empty uint8 image")


# --- the declarative form -------------------------------------------------------------------

ALL_STEPS: list[Step] = [
    ScaleAbs(1.3, -10.5),
    ScaleAbs(alpha=0.5, beta=2.0, fma=False),
    EqualizeHist(),
    Clahe(2.0, (8, 8)),
    Clahe(0.0, (16, 4)),
    EqualizePil(),
    Autocontrast((2.0, 2.0)),
    Autocontrast((1.0, 5.0), (0, 255)),
    Invert(),
    GammaCv2(1.5, inverse=True),
    GammaPil(0.5),
    GammaPil(2.2, inverse=True),
]


def test_steps_round_trip_through_json() -> None:
    data = json.loads(json.dumps([step.to_dict() for step in ALL_STEPS]))
    assert steps_from_list(data) == tuple(ALL_STEPS)
    for step in ALL_STEPS:
        back = Step.from_dict(step.to_dict())
        assert back == step and type(back) is type(step)


@pytest.mark.parametrize(
    ("step", "data"),
    [
        (Clahe(2.0, (8, 8)), {"name": "clahe", "clip_limit": 2.0, "tile_grid": [8, 8]}),
        (ScaleAbs(1.3), {"name": "scale-abs", "alpha": 1.3, "beta": 0.0, "fma": True}),
        (Autocontrast((2, 3), (0,)), {"name": "autocontrast", "cutoff": [2.0, 3.0], "ignore": [0]}),
        (GammaCv2(2.2, inverse=True), {"name": "gamma-cv2", "gamma": 2.2, "inverse": True}),
        (EqualizeHist(), {"name": "equalize-hist"}),
    ],
    ids=lambda v: v.name if isinstance(v, Step) else "",
)
def test_dict_form(step: Step, data: dict) -> None:
    assert step.to_dict() == data


def test_left_out_parameters_take_the_library_defaults_and_json_numbers_normalise() -> None:
    assert Step.from_dict({"name": "clahe"}) == Clahe(40.0, (8, 8))  # cv2.createCLAHE()
    assert Step.from_dict({"name": "scale-abs"}) == ScaleAbs(1.0, 0.0, fma=True)
    assert Step.from_dict({"name": "autocontrast"}) == Autocontrast((0.0, 0.0), ())
    step = Step.from_dict({"name": "clahe", "clip_limit": 2, "tile_grid": [16, 8]})
    assert isinstance(step, Clahe)
    assert type(step.clip_limit) is float and step.tile_grid == (16, 8)
    shorthand = Step.from_dict({"name": "autocontrast", "cutoff": 2, "ignore": 0})  # Pillow's
    assert shorthand == Autocontrast((2.0, 2.0), (0,))


SPELLINGS = [
    ("clahe:2.0:8x8", Clahe(2.0, (8, 8))),
    ("clahe", Clahe(40.0, (8, 8))),
    ("clahe:3", Clahe(3.0)),
    ("clahe:2:16x4", Clahe(2.0, (16, 4))),
    ("scale-abs:1.3:0", ScaleAbs(1.3, 0.0)),
    ("scale-abs:1.3", ScaleAbs(1.3)),
    ("scale-abs:2:-0.5:no-fma", ScaleAbs(2.0, -0.5, fma=False)),
    ("equalize-hist", EqualizeHist()),
    ("equalize-pil", EqualizePil()),
    ("autocontrast", Autocontrast()),
    ("autocontrast:0", Autocontrast((0.0, 0.0))),
    ("autocontrast:1,5:0,255", Autocontrast((1.0, 5.0), (0, 255))),
    ("invert", Invert()),
    (" invert ", Invert()),
    ("gamma-cv2:1/1.5", GammaCv2(1.5, inverse=True)),
    ("gamma-cv2:0.5", GammaCv2(0.5)),
    ("gamma-pil:1/2.2", GammaPil(2.2, inverse=True)),
]


@pytest.mark.parametrize(("text", "step"), SPELLINGS, ids=[t for t, _ in SPELLINGS])
def test_parse_step(text: str, step: Step) -> None:
    assert parse_step(text) == step


def test_spelling_reads_back_as_the_same_step() -> None:
    for step in ALL_STEPS:
        assert parse_step(spelling(step)) == step
    assert spelling(Clahe(2.0, (8, 4))) == "clahe:2.0:8x4"
    assert spelling(GammaCv2(1.5, inverse=True)) == "gamma-cv2:1/1.5"
    assert spelling(Autocontrast((1.0, 5.0), (0, 255))) == "autocontrast:1.0,5.0:0,255"
    assert spelling(ScaleAbs(0.1, 3.7, fma=False)) == "scale-abs:0.1:3.7:no-fma"


@pytest.mark.parametrize(
    ("step", "text"),
    [
        (Clahe(2.0, (8, 8)), "CLAHE clip 2.0, tiles 8x8 (cv2)"),
        (Clahe(0.0, (16, 4)), "CLAHE no clip limit, tiles 16x4 (cv2)"),
        (ScaleAbs(1.3, 0.0), "cv2.convertScaleAbs alpha 1.3, beta 0.0"),
        (ScaleAbs(1.3, 2.5, fma=False), "cv2.convertScaleAbs alpha 1.3, beta 2.5, without FMA"),
        (EqualizeHist(), "histogram equalisation (cv2.equalizeHist)"),
        (EqualizePil(), "histogram equalisation (PIL ImageOps.equalize)"),
        (Autocontrast((2.0, 2.0)), "autocontrast cutoff 2.0% (PIL ImageOps.autocontrast)"),
        (
            Autocontrast((1.0, 5.0), (0, 255)),
            "autocontrast cutoff 1.0% low, 5.0% high, ignoring 0, 255 (PIL ImageOps.autocontrast)",
        ),
        (Invert(), "inverted (255 - x)"),
        (GammaCv2(1.5, True), "gamma (x / 255) ** (1 / 1.5) * 255, truncated (cv2 LUT recipe)"),
        (GammaPil(0.5), "gamma 255 * (x / 255) ** 0.5, rounded (PIL Image.point)"),
    ],
    ids=lambda v: v.name if isinstance(v, Step) else "",
)
def test_describe(step: Step, text: str) -> None:
    assert step.describe() == text


def test_a_gamma_exponent_is_computed_as_the_users_code_computes_it() -> None:
    assert GammaCv2(2.2, inverse=True).exponent == 1.0 / 2.2
    assert GammaPil(0.5).exponent == 0.5


def test_apply_steps_equals_the_libraries_in_order(xrays: list[np.ndarray]) -> None:
    img = xrays[0]
    before = img.copy()
    table = np.array([((i / 255.0) ** (1 / 1.5)) * 255 for i in range(256)]).astype("uint8")
    theirs = cv2.bitwise_not(cv2.LUT(cv2.createCLAHE(2.0, (8, 8)).apply(img), table))
    steps = [parse_step(s) for s in ("clahe:2.0:8x8", "gamma-cv2:1/1.5", "invert")]
    _same(apply_steps(img, steps), theirs, "cv2 chain")
    pil = ImageOps.equalize(ImageOps.autocontrast(Image.fromarray(img), 2))
    pil = pil.point(lambda p: 255 * (p / 255) ** 0.5)
    steps = [parse_step(s) for s in ("autocontrast:2", "equalize-pil", "gamma-pil:0.5")]
    _same(apply_steps(img, steps), np.asarray(pil), "PIL chain")
    theirs = cv2.equalizeHist(cv2.convertScaleAbs(img, alpha=1.3, beta=-12.5))
    _same(apply_steps(img, [ScaleAbs(1.3, -12.5, CV2_FUSES), EqualizeHist()]), theirs, "cv2")
    np.testing.assert_array_equal(img, before)
    assert apply_steps(img, []) is img


NAMES = (
    "('scale-abs', 'equalize-hist', 'clahe', 'equalize-pil', 'autocontrast', 'invert', "
    "'gamma-cv2', 'gamma-pil')"
)
NUMBER32 = "a finite number within float32's range (cv2 casts it to float)"
CLIP = "clip_limit must be a finite number >= 0 (0: no clipping)"
GRID = "tile_grid must be [columns, rows], two integers >= 1"
CUTOFF = "cutoff must be a percentage in [0, 100] or a pair [low, high] of them"
GAMMA = "gamma must be a finite number > 0"


def _invalid(name: str, *problems: str) -> str:
    return f"invalid pre-resize step {name!r}: " + "; ".join(problems)


FROM_DICT_ERRORS = [
    (5, "a pre-resize step is an object with a 'name', got 5"),
    ({"clip_limit": 2}, f"pre-resize step name must be one of {NAMES}, got None"),
    ({"name": "sharpen"}, f"pre-resize step name must be one of {NAMES}, got 'sharpen'"),
    (
        {"name": "invert", "amount": 1},
        _invalid("invert", "unknown field 'amount' (invert has no parameters)"),
    ),
    ({"name": "gamma-cv2"}, _invalid("gamma-cv2", "missing field 'gamma'")),
    (
        {"name": "scale-abs", "alpha": "1.3", "beta": float("nan"), "fma": 1},
        _invalid(
            "scale-abs",
            f"alpha must be {NUMBER32}, got '1.3'",
            f"beta must be {NUMBER32}, got nan",
            "fma must be true or false, got 1",
        ),
    ),
    (
        {"name": "scale-abs", "alpha": 1e39},
        _invalid("scale-abs", f"alpha must be {NUMBER32}, got 1e+39"),
    ),
    (
        {"name": "clahe", "clip_limit": -1, "tile_grid": [8, 0], "tiles": 8},
        _invalid(
            "clahe",
            "unknown field 'tiles' (clahe has clip_limit, tile_grid)",
            f"{CLIP}, got -1",
            f"{GRID}, got [8, 0]",
        ),
    ),
    (
        {"name": "clahe", "clip_limit": True, "tile_grid": [8.0, 8]},
        _invalid("clahe", f"{CLIP}, got True", f"{GRID}, got [8.0, 8]"),
    ),
    ({"name": "clahe", "tile_grid": "8x8"}, _invalid("clahe", f"{GRID}, got '8x8'")),
    (
        {"name": "autocontrast", "cutoff": [1, 2, 3], "ignore": [0, 256]},
        _invalid(
            "autocontrast",
            f"{CUTOFF}, got [1, 2, 3]",
            "ignore must be levels in 0..255, got [0, 256]",
        ),
    ),
    ({"name": "autocontrast", "cutoff": -1}, _invalid("autocontrast", f"{CUTOFF}, got -1")),
    (
        {"name": "gamma-pil", "gamma": 0, "inverse": "yes"},
        _invalid("gamma-pil", f"{GAMMA}, got 0", "inverse must be true or false, got 'yes'"),
    ),
]


@pytest.mark.parametrize(("data", "message"), FROM_DICT_ERRORS, ids=range(len(FROM_DICT_ERRORS)))
def test_from_dict_reports_every_problem_at_once(data: object, message: str) -> None:
    with pytest.raises(ContractError) as e:
        Step.from_dict(data)
    assert e.value.message == message


def test_an_invalid_step_cannot_be_constructed() -> None:
    with pytest.raises(ContractError) as e:
        Clahe(clip_limit=-1.0)
    assert e.value.message == f"invalid pre-resize step 'clahe': {CLIP}, got -1.0"
    with pytest.raises(ContractError) as e:
        GammaCv2(float("inf"))
    assert (
        e.value.message
        == "invalid pre-resize step 'gamma-cv2': gamma must be a finite number > 0, got inf"
    )


def test_steps_from_list_reports_each_step_by_position() -> None:
    with pytest.raises(ContractError) as e:
        steps_from_list(
            [{"name": "invert"}, {"name": "clahe", "clip_limit": "a"}, {"name": "blur"}]
        )
    assert e.value.message == (
        f"step 2: invalid pre-resize step 'clahe': {CLIP}, got 'a'; "
        f"step 3: pre-resize step name must be one of {NAMES}, got 'blur'"
    )
    with pytest.raises(ContractError) as e:
        steps_from_list({"name": "invert"})
    assert e.value.message == "pre-resize steps must be a list of steps, got {'name': 'invert'}"


FORM = {
    "scale-abs": "scale-abs:ALPHA[:BETA[:no-fma]]",
    "clahe": "clahe[:CLIP[:COLSxROWS]]",
    "autocontrast": "autocontrast[:CUTOFF|LOW,HIGH[:LEVEL,...]]",
    "gamma-cv2": "gamma-cv2:EXPONENT|1/GAMMA",
}
ALL_FORMS = (
    f"{FORM['scale-abs']}, equalize-hist, {FORM['clahe']}, equalize-pil, {FORM['autocontrast']}"
    f", invert, {FORM['gamma-cv2']}, gamma-pil:EXPONENT|1/GAMMA"
)
SCALE_ABS_ARGS = "scale-abs takes ALPHA, then optionally BETA, then optionally 'no-fma'"
# (spelling, the message after "pre-resize step '<spelling>': ", the form it names or None)
PARSE_ERRORS = [
    ("clahe:two", "'two' is not a number", "clahe"),
    ("clahe:2:8", "the tile grid is COLSxROWS, e.g. 8x8, got '8'", "clahe"),
    ("clahe:2:8x8:1", "clahe takes at most 2 parameters, got 3", "clahe"),
    ("clahe:-2:0x8", f"{CLIP}, got -2.0; {GRID}, got (0, 8)", None),
    ("clahe:nan", f"{CLIP}, got nan", None),
    ("invert:1", "this step takes no parameters", "invert"),
    ("equalize-hist:", "this step takes no parameters", "equalize-hist"),
    ("scale-abs", SCALE_ABS_ARGS, "scale-abs"),
    ("scale-abs:1:2:fast", SCALE_ABS_ARGS, "scale-abs"),
    ("scale-abs:1:2:no-fma:3", "scale-abs takes at most 3 parameters, got 4", "scale-abs"),
    ("scale-abs:1e39", f"alpha must be {NUMBER32}, got 1e+39", None),
    ("autocontrast:1,2,3", f"{CUTOFF}, got (1.0, 2.0, 3.0)", None),
    ("autocontrast:0:0,x", "the levels to ignore are like 0 or 0,255, got '0,x'", "autocontrast"),
    ("autocontrast:0:256", "ignore must be levels in 0..255, got (256,)", None),
    ("gamma-cv2", "a gamma takes one exponent, EXPONENT or 1/GAMMA", "gamma-cv2"),
    ("gamma-cv2:1/x", "'x' is not a number", "gamma-cv2"),
    ("gamma-pil:1/0", f"{GAMMA}, got 0.0", None),
    ("gamma-pil:-1", f"{GAMMA}, got -1.0", None),
]


@pytest.mark.parametrize("text", ["sharpen:2", "", "CLAHE:2"])
def test_parse_step_names_every_form_for_an_unknown_step(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_step(text)
    assert e.value.message == f"unknown pre-resize step {text!r}: the steps are {ALL_FORMS}"


@pytest.mark.parametrize(
    ("text", "message", "form"), PARSE_ERRORS, ids=[t for t, *_ in PARSE_ERRORS]
)
def test_parse_step_errors_name_the_form(text: str, message: str, form: str | None) -> None:
    with pytest.raises(UsageError) as e:
        parse_step(text)
    named = "" if form is None else f" (the form is {FORM.get(form, form)})"
    assert e.value.message == f"pre-resize step {text!r}: {message}{named}"


def test_apply_steps_refuses_what_is_not_a_step() -> None:
    with pytest.raises(TypeError, match=r"not an intensity step: 'clahe'"):
        apply_steps(np.zeros((4, 4), np.uint8), ["clahe"])  # type: ignore[list-item]
