"""End to end, as a user meets it: a model trained on one of the pipelines people use, converted
with only the flags (or presets) that state that pipeline, then `pneumo batch` with default
settings on full-size X-rays, against the user's own pipeline written here with PIL, Keras and
TensorFlow (not with our code). The promise: every score within 0.02, and the same label
wherever the score is 0.02 or more from the threshold.

Random weights make insensitive models (every X-ray scores alike, and any pipeline "matches"):
each model's BatchNormalization statistics and head are set from real X-rays through its own
pipeline, so its scores spread over (0, 1); the test asserts that spread, and that the pipeline
pneumo assumes by default would have missed the bound (the comparison can fail).

PNEUMO_MATRIX_EVAL=all scores every X-ray of ../shared not used as a probe (default 40);
PNEUMO_MATRIX_REPORT=path.json writes the figures.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image, ImageOps

from parity_tests.conftest import NEEDS_FULLRES, SHARED_FULLRES
from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.repository.manifest import read_manifest
from pneumo_onnx.engine.runtime.preprocess import reference_batch
from pneumo_onnx.engine.runtime.samples import sample_images

L = keras.layers
apps = keras.applications
PROBES, EVAL = 32, os.environ.get("PNEUMO_MATRIX_EVAL", "40")
BOUND = 0.02
FIGURES: dict[str, dict[str, Any]] = {}
Pipeline = Callable[[list[Path]], np.ndarray]


# --- the users' own pipelines ----------------------------------------------------------------


def load_img(size: int, then: Callable[[np.ndarray], np.ndarray], **options: Any) -> Pipeline:
    """keras.utils.load_img (ImageDataGenerator.flow_from_directory's loader), then `then`."""

    def run(paths: list[Path]) -> np.ndarray:
        return np.stack(
            [
                then(
                    keras.utils.img_to_array(
                        keras.utils.load_img(p, target_size=(size, size), **options)
                    )
                )
                for p in paths
            ]
        )

    return run


def image_dataset(size: int, then: Callable[[np.ndarray], np.ndarray], **options: Any) -> Pipeline:
    """keras.utils.image_dataset_from_directory over the images' folder, then `then`."""

    def run(paths: list[Path]) -> np.ndarray:
        ds = keras.utils.image_dataset_from_directory(
            paths[0].parent, labels=None, image_size=(size, size), shuffle=False, **options
        )
        images = np.concatenate([batch.numpy() for batch in ds])
        by_name = {Path(f).name: x for f, x in zip(ds.file_paths, images, strict=True)}
        return np.stack([then(by_name[p.name]) for p in paths])

    return run


def pil_resize(size: int, then: Callable[[np.ndarray], np.ndarray]) -> Pipeline:
    """Image.open(...).convert('RGB').resize(size): PIL's default filter, bicubic."""
    return lambda paths: np.stack(
        [
            then(np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32))
            for p in paths
        ]
    )


def pil_gray(
    size: int,
    steps: Callable[[Image.Image], Image.Image],
    then: Callable[[np.ndarray], np.ndarray],
    resample: Image.Resampling = Image.Resampling.BICUBIC,
    channels: int = 3,
) -> Pipeline:
    """Image.open(p).convert("L"), `steps` (PIL.ImageOps and point tables on the full-size
    image), resize, then RGB for a 3-channel model."""

    def one(p: Path) -> np.ndarray:
        image = steps(Image.open(p).convert("L")).resize((size, size), resample)
        x = np.asarray(image.convert("RGB") if channels == 3 else image, np.float32)
        return then(x if channels == 3 else x[:, :, None])

    return lambda paths: np.stack([one(p) for p in paths])


def teachable_machine(paths: list[Path]) -> np.ndarray:
    """The snippet Teachable Machine ships with its Keras export."""
    out = []
    for p in paths:
        image = ImageOps.fit(Image.open(p).convert("RGB"), (96, 96), Image.Resampling.LANCZOS)
        out.append((np.asarray(image).astype(np.float32) / 127.5) - 1)
    return np.stack(out)


def rescale(x: np.ndarray) -> np.ndarray:
    return x * (1.0 / 255)  # ImageDataGenerator(rescale=1./255)


def raw(x: np.ndarray) -> np.ndarray:
    return x


# --- the models --------------------------------------------------------------------------------


def small_cnn(
    size: int, channels: int = 3, rescaling: bool = False, units: int = 1, activation: str = ""
) -> keras.Model:
    inputs = keras.Input((size, size, channels))
    x = L.Rescaling(1 / 255)(inputs) if rescaling else inputs
    for filters in (16, 32, 32):
        x = L.Conv2D(filters, 3, strides=2, activation="relu")(x)
        x = L.BatchNormalization()(x)
    return _with_head(inputs, x, units, activation)


def application(
    base: Callable[..., keras.Model], size: int, units: int = 1, inside: Any = None, **kw: Any
) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    x = inside(inputs) if inside is not None else inputs
    features = base(include_top=False, weights=None, input_shape=(size, size, 3), **kw)(x)
    return _with_head(inputs, features, units)


def _with_head(inputs: Any, x: Any, units: int, activation: str = "") -> keras.Model:
    x = L.GlobalAveragePooling2D()(x)
    activation = activation or ("sigmoid" if units == 1 else "softmax")
    return keras.Model(inputs, L.Dense(units, activation=activation, name="head")(x))


def positive_unit(outputs: np.ndarray, positive_index: int) -> np.ndarray:
    """What most authors read: P(positive) is the positive unit's output."""
    return outputs[:, positive_index]


def normalised_two_sigmoids(outputs: np.ndarray, positive_index: int) -> np.ndarray:
    """The score the contract gives a Dense(2, sigmoid) head read by argmax."""
    return outputs[:, positive_index] / outputs.sum(axis=1)


def argmax_of_two_sigmoids(outputs: np.ndarray, positive_index: int) -> np.ndarray:
    """An author of a Dense(2, sigmoid) head reads `argmax`: 1.0 where it picks the positive
    unit, else 0.0 (the test compares labels away from a tie; scores are compared to the
    normalised o_pos / (o_0 + o_1) separately)."""
    return (np.argmax(outputs, axis=1) == positive_index).astype(np.float64)


@dataclass(frozen=True)
class Case:
    model: Callable[[], keras.Model]
    user: Pipeline  # the user's own preprocessing, file -> model input
    flags: tuple[str, ...]  # what `pneumo convert` is told: only the pipeline the user had
    size: int
    channels: int = 3
    # A plausible mistake, as InputSpec fields over pneumo's defaults (bicubic, stretched,
    # [0, 1]): the comparison must be able to catch it.
    wrong: tuple[tuple[str, str], ...] = ()
    # The score the engine must reproduce, from the model's outputs and the positive unit.
    score: Callable[[np.ndarray, int], np.ndarray] = positive_unit
    # Where the author's application decides by something other than that score > 0.5.
    decide: Callable[[np.ndarray, int], np.ndarray] | None = None


RAW = (("scaling", "raw"),)  # models that rescale inside: pneumo detects 0-255 by itself


CASES = {
    "keras-load-img": Case(
        lambda: small_cnn(128), load_img(128, rescale), ("--preset", "keras-load-img"), 128
    ),
    "load-img-keep-aspect-ratio": Case(
        lambda: small_cnn(96, rescaling=True),
        load_img(96, raw, keep_aspect_ratio=True),
        ("--preset", "keras-load-img", "--resize-mode", "center-crop"),
        96,
        wrong=RAW,
    ),
    "pil-bicubic-64": Case(
        lambda: small_cnn(64),
        pil_resize(64, rescale),
        (),
        64,
        wrong=(("resize_filter", "nearest"),),
    ),
    "keras-image-dataset": Case(
        lambda: small_cnn(128, rescaling=True),
        image_dataset(128, raw),
        ("--preset", "keras-image-dataset"),
        128,
        wrong=RAW,
    ),
    "image-dataset-crop-grayscale": Case(
        lambda: small_cnn(64, channels=1, rescaling=True),
        image_dataset(64, raw, color_mode="grayscale", crop_to_aspect_ratio=True),
        ("--preset", "keras-image-dataset", "--resize-mode", "center-crop"),
        64,
        channels=1,
        wrong=RAW,
    ),
    "image-dataset-pad-resnet50": Case(
        lambda: small_cnn(64),
        image_dataset(64, apps.resnet50.preprocess_input, pad_to_aspect_ratio=True),
        ("--preset", "keras-image-dataset", "--preset", "resnet50", "--resize-mode", "pad"),
        64,
    ),
    "two-sigmoids-argmax-label-0-pneumonia": Case(
        lambda: small_cnn(96, units=2, activation="sigmoid"),
        load_img(96, rescale),
        ("--preset", "keras-load-img", "--labels", "PNEUMONIA,NORMAL"),
        96,
        wrong=(("resize_filter", "bicubic"),),
        score=normalised_two_sigmoids,
        decide=argmax_of_two_sigmoids,
    ),
    "pil-autocontrast-equalize": Case(
        lambda: small_cnn(96),
        pil_gray(96, lambda im: ImageOps.equalize(ImageOps.autocontrast(im, cutoff=1)), rescale),
        ("--color", "grayscale", "--pre-resize", "autocontrast:1", "--pre-resize", "equalize-pil"),
        96,
        wrong=(("color", "grayscale"),),
    ),
    "pil-invert-gamma-bilinear-gray": Case(
        lambda: small_cnn(64, channels=1),
        pil_gray(
            64,
            lambda im: ImageOps.invert(im).point(lambda v: 255 * (v / 255) ** 0.8),
            rescale,
            Image.Resampling.BILINEAR,
            channels=1,
        ),
        ("--resize-filter", "bilinear", "--pre-resize", "invert", "--pre-resize", "gamma-pil:0.8"),
        64,
        channels=1,
        wrong=(("resize_filter", "bilinear"),),
    ),
    "teachable-machine": Case(
        lambda: application(apps.MobileNet, 96, units=2, alpha=0.25),
        teachable_machine,
        ("--preset", "teachable-machine", "--labels", "NORMAL,PNEUMONIA"),
        96,
    ),
    "vgg16": Case(
        lambda: application(apps.VGG16, 64),
        pil_resize(64, apps.vgg16.preprocess_input),
        ("--preset", "vgg16"),
        64,
    ),
    "mobilenet-v2": Case(
        lambda: application(apps.MobileNetV2, 96, alpha=0.35),
        load_img(96, apps.mobilenet_v2.preprocess_input, interpolation="bilinear"),
        ("--preset", "mobilenet-v2", "--resize-filter", "bilinear"),
        96,
    ),
    "densenet": Case(
        lambda: application(apps.DenseNet121, 64),
        load_img(64, apps.densenet.preprocess_input),
        ("--preset", "keras-load-img", "--preset", "densenet"),
        64,
    ),
    "efficientnet": Case(
        lambda: application(apps.EfficientNetB0, 64),
        load_img(64, raw),
        ("--preset", "keras-load-img", "--preset", "efficientnet"),
        64,
        wrong=RAW,
    ),
    "preprocess-input-inside": Case(
        lambda: application(
            apps.MobileNetV2, 96, inside=apps.mobilenet_v2.preprocess_input, alpha=0.35
        ),
        load_img(96, raw),
        ("--preset", "keras-load-img"),
        96,
        wrong=RAW,
    ),
}


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Probe X-rays for the conversion (--images) and other X-rays to score, copied flat, both
    classes in each; the samples alone when ../shared is not there."""
    probes, scored = tmp_path_factory.mktemp("probes"), tmp_path_factory.mktemp("scored")
    if SHARED_FULLRES.is_dir():
        images = sorted(SHARED_FULLRES.rglob("*.jpeg"))
        order = np.random.default_rng(13).permutation(len(images))
        chosen = [images[i] for i in order]
        count = len(images) - PROBES if EVAL == "all" else int(EVAL)
        probe_set, scored_set = chosen[:PROBES], chosen[PROBES : PROBES + count]
    else:
        probe_set = scored_set = sample_images()
    for folder, paths in ((probes, probe_set), (scored, scored_set)):
        for p in paths:
            shutil.copy(p, folder / f"{p.parent.name}-{p.name}")
    return probes, scored


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    yield
    lines = [f"{'case':30} {'max diff':>9} {'flips':>5} {'spread':>7} {'wrong':>7}  path"]
    for name, f in FIGURES.items():
        lines.append(
            f"{name:30} {f['max_score_diff']:9.4f} {f['label_changes_away']:5d} "
            f"{f['score_std']:7.3f} {f['wrong_pipeline_max_diff']:7.3f}  {f['verdict']}"
        )
    print("\n" + "\n".join(lines))
    target = os.environ.get("PNEUMO_MATRIX_REPORT")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2) + "\n")


def calibrate(
    model: keras.Model, x: np.ndarray, positive_index: int, norms_from: np.ndarray | None = None
) -> None:
    """Data-dependent init on real X-rays: BatchNormalization statistics from this batch (or
    from `norms_from`: a base whose statistics are another domain's, as a frozen ImageNet base
    has), then a head whose logit has mean 0 and std 1.5 over the X-rays, so scores spread
    around the threshold."""
    norms = [layer for layer in all_layers(model) if isinstance(layer, L.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(x if norms_from is None else norms_from, training=True)
    for layer in norms:
        layer.momentum = 0.99
    head = model.get_layer("head")
    features = keras.Model(model.inputs, head.input)(x, training=False).numpy().astype(np.float64)
    # The direction the X-rays' features vary most along: the least amplification of float32
    # rounding (a random direction can need a gain that breaks the 1e-5 parity gate).
    direction = np.linalg.svd(features - features.mean(axis=0), full_matrices=False)[2][0]
    projection = features @ direction
    k = 1.5 / max(float(projection.std()), 1e-12)
    kernel, bias = head.get_weights()
    kernel[:] = 0.0
    bias[:] = 0.0
    sign = 1.0 if kernel.shape[1] == 1 else 0.5
    kernel[:, positive_index] = sign * k * direction
    bias[positive_index] = -sign * k * projection.mean()
    if kernel.shape[1] == 2:
        kernel[:, 1 - positive_index] = -kernel[:, positive_index]
        bias[1 - positive_index] = -bias[positive_index]
        if head.activation.__name__ == "sigmoid":  # two independent units: not summing to 1
            kernel[:, 1 - positive_index] *= 0.6
            bias[1 - positive_index] = 0.6 * bias[1 - positive_index] + 0.3
    head.set_weights([kernel, bias])


def all_layers(model: keras.Model) -> list[Any]:
    """Every layer, those of nested models (a keras.applications base) included."""
    out = []
    for layer in model.layers:
        out.extend(all_layers(layer) if hasattr(layer, "layers") else [layer])
    return out


def keras_outputs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [np.asarray(model(x[i : i + 32], training=False)) for i in range(0, len(x), 32)]
    )


# Cases whose wrong-pipeline control needs more than the 6 samples to show its margin.
MANY_IMAGES = {"two-sigmoids-argmax-label-0-pneumonia"}


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_default_batch_matches_the_users_pipeline(
    name: str, folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if name in MANY_IMAGES and not SHARED_FULLRES.is_dir():
        pytest.skip(f"{name}: {NEEDS_FULLRES.kwargs['reason']}")
    check_case(name, CASES[name], folders, tmp_path, capsys)


def check_case(
    name: str,
    case: Case,
    folders: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Calibrate, convert with the case's flags, `pneumo batch` with defaults, compare."""
    probes, scored = folders
    probe_paths, scored_paths = sorted(probes.iterdir()), sorted(scored.iterdir())
    flags = list(case.flags)
    labels = flags[flags.index("--labels") + 1].split(",") if "--labels" in flags else []
    positive = labels.index("PNEUMONIA") if labels else 0
    model = case.model()
    calibrate(model, case.user(probe_paths), positive)
    source = tmp_path / f"{name}.keras"
    model.save(source)

    repo = tmp_path / "repo"
    argv = ["convert", str(source), "-o", str(repo), "--variants", "none", "--images", str(probes)]
    assert main([*argv, *case.flags]) == 0, capsys.readouterr().err
    results = tmp_path / "results.csv"
    assert main(["batch", str(scored), "-o", str(results), "--model", str(repo)]) == 0
    with results.open() as f:
        rows = {Path(r["image_path"]).name: r for r in csv.DictReader(f)}
    ours = np.array([float(rows[p.name]["raw_score"]) for p in scored_paths])
    our_labels = np.array([rows[p.name]["prediction"] == "PNEUMONIA" for p in scored_paths])

    outputs = keras_outputs(model, case.user(scored_paths))
    theirs = case.score(outputs, positive)
    diff = np.abs(ours - theirs)
    away = np.abs(theirs - 0.5) >= BOUND
    flips = int(np.sum(((ours > 0.5) != (theirs > 0.5)) & away))
    if case.decide is not None:  # the author's own decision rule, not a threshold on a score
        flips += int(np.sum((our_labels != case.decide(outputs, positive).astype(bool)) & away))
    mistake = InputSpec(
        height=case.size, width=case.size, channels=case.channels, **dict(case.wrong)
    )
    wrong_input = reference_batch(scored_paths, Contract(input=mistake))
    wrong = case.score(keras_outputs(model, wrong_input), positive)
    preprocessing = read_manifest(next(repo.rglob("manifest.json")).parent).preprocessing
    assert preprocessing is not None
    FIGURES[name] = {
        "flags": " ".join(case.flags),
        "images": len(scored_paths),
        "max_score_diff": float(diff.max()),
        "label_changes_away": flips,
        "score_std": float(theirs.std()),
        "wrong_pipeline_max_diff": float(np.abs(wrong - theirs).max()),
        "verdict": preprocessing.verdict,
        "fast_vs_reference": preprocessing.fast_vs_reference.to_dict(),
    }
    assert theirs.std() > 0.1, f"scores barely vary ({theirs.std():.3f}): the check proves nothing"
    assert np.abs(wrong - theirs).max() > BOUND, "a wrong pipeline would pass too"
    assert diff.max() <= BOUND, f"max score diff {diff.max():.4f} > {BOUND}"
    assert flips == 0, f"{flips} labels differ away from the threshold"


def test_a_base_without_its_preprocessing_stops_and_asks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "mobilenet_v2.keras"
    application(apps.MobileNetV2, 96, alpha=0.35).save(source)
    assert main(["convert", str(source), "-o", str(tmp_path / "repo"), "--variants", "none"]) == 2
    err = capsys.readouterr().err
    assert (
        "error: mobilenet_v2.keras holds a keras.applications MobileNetV2 base with no "
        "preprocessing layer before it, so the file does not say what its input range is. If "
        "you trained with its preprocess_input ([-1, 1]: x / 127.5 - 1 (preprocess_input 'tf' "
        "mode)), convert with --preset mobilenet-v2; if you scaled images yourself, say how "
        "with --input-scaling unit|raw|symmetric|caffe|torch or --input-mean/--input-std"
    ) in err
    assert not (tmp_path / "repo" / "pneumonia").exists()
