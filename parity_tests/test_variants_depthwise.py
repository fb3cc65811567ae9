"""Issue 21: the reduced-precision variants of a Teachable-Machine-style MobileNetV2 (alpha 0.35,
224x224x3 in [-1, 1], GlobalAveragePooling, Dense(2, softmax)) must meet their gates, converted
with `pneumo convert` defaults.

The model is built here, as test_fidelity_matrix builds its own, but like a frozen ImageNet base
under a head trained on X-rays: BatchNormalization statistics from other images (uniform noise),
depthwise kernels that mostly average (random ones are high-pass filters that BatchNormalization
scales up, amplifying pixel noise as no trained X-ray model does), the head fit on X-rays. Its
fp32 scores move by about 1e-3 under half a grey level of pixel noise, like the trained
reference model's (8e-4); yet before the fix its variants broke as the issue's did: fp16 p99
score diff 6.3e-3, int8 0.089, int8-full 0.090 (66 X-rays). Where the loss is: not one op (no
overflow, each QDQ pair keeps 30-40 dB on its own tensor) but the first blocks, whose small
errors every later layer amplifies; the variants now keep those in fp32 where the calibration
X-rays show it is needed (convert/precision.py), and say so in the manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from parity_tests.conftest import NEEDS_FULLRES, SHARED_FULLRES
from parity_tests.test_fidelity_matrix import all_layers, application, calibrate
from pneumo_onnx.convert.precision import Scorer, grey_level_sensitivity
from pneumo_onnx.convert.probes import real_batch
from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.repository.manifest import Manifest, read_manifest
from pneumo_onnx.engine.repository.variants import GATES, OPTIONAL_VARIANTS
from pneumo_onnx.engine.runtime.metrics import score_agreement
from pneumo_onnx.engine.runtime.samples import sample_images

L = keras.layers
SIZE = 224  # Teachable Machine's; the failures need the full depth of 224 px inputs
# X-rays the head is fit on; given to `pneumo convert`; held out from both, scored afterwards.
HEAD_FIT, PROBES, HELD_OUT = 32, 32, 32
SMOOTH = 0.3  # depthwise kernel = mean filter + SMOOTH x its random init
FP16_BOUND = 2e-3  # what fp16 of a MobileNetV2 should reach (the fp16 gate allows 5e-3)
# Teachable Machine's pipeline (--preset teachable-machine), to fit the head through.
TM = Contract(
    input=InputSpec(
        height=SIZE, width=SIZE, resize_filter="lanczos", resize_mode="fit", scaling="symmetric"
    )
)


def teachable_machine_mobilenet(x_rays: np.ndarray) -> keras.Model:
    keras.utils.set_random_seed(1234)
    model = application(keras.applications.MobileNetV2, SIZE, units=2, alpha=0.35)
    for layer in all_layers(model):
        if isinstance(layer, L.DepthwiseConv2D):
            (kernel,) = layer.get_weights()  # MobileNetV2's depthwise convolutions have no bias
            layer.set_weights([1.0 / (kernel.shape[0] * kernel.shape[1]) + SMOOTH * kernel])
    noise = np.random.default_rng(1).uniform(-1, 1, x_rays.shape).astype(np.float32)
    calibrate(model, x_rays, positive_index=1, norms_from=noise)
    return model


@pytest.fixture(scope="module")
def converted(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Manifest, Path, list[Path]]:
    """The model converted as a user would: `pneumo convert` with the Teachable Machine preset,
    default variants (all), the probe X-rays copied flat. Returns the version, its manifest,
    the probe folder and X-rays used for nothing yet."""
    if SHARED_FULLRES.is_dir():
        images = sorted(SHARED_FULLRES.rglob("*.jpeg"))
        chosen = [images[i] for i in np.random.default_rng(13).permutation(len(images))]
        fit, probe_set = chosen[:HEAD_FIT], chosen[HEAD_FIT : HEAD_FIT + PROBES]
        held_out = chosen[HEAD_FIT + PROBES : HEAD_FIT + PROBES + HELD_OUT]
    else:
        fit = probe_set = held_out = sample_images()
    tmp = tmp_path_factory.mktemp("tm")
    probes = tmp / "probes"
    probes.mkdir()
    for p in probe_set:
        shutil.copy(p, probes / f"{p.parent.name}-{p.name}")
    source = tmp / "keras_model.keras"
    teachable_machine_mobilenet(real_batch(TM, fit)).save(source)
    repo = tmp / "repo"
    argv = ["convert", str(source), "-o", str(repo), "--preset", "teachable-machine"]
    assert main([*argv, "--labels", "NORMAL,PNEUMONIA", "--images", str(probes)]) == 0
    version = repo / "pneumonia" / "1"
    return version, read_manifest(version), probes, held_out


def test_the_model_is_as_steady_as_a_trained_one(converted) -> None:
    """The check means something only if the model's scores spread, and move little when the
    X-ray itself changes by half a grey level: a model that jumps under pixel noise fails any
    variant's gate, and such a failure says nothing about the converter."""
    version, manifest, probes, _ = converted
    contract = manifest.contract
    assert contract is not None
    x = real_batch(contract, sorted(probes.iterdir()))
    scorer = Scorer.of((version / "model.onnx").read_bytes(), contract, x)
    assert scorer.reference.std() > 0.1
    assert grey_level_sensitivity(scorer) < 5e-3


def test_fp16_is_as_faithful_as_a_mobilenet_should_be(converted) -> None:
    _, manifest, _, _ = converted
    fp16 = manifest.variants["fp16"].variant
    assert fp16 is not None and fp16.p99_score_diff is not None
    assert fp16.p99_score_diff <= FP16_BOUND, fp16
    assert fp16.label_agreement == 1.0


@pytest.mark.parametrize("key", ["int8", "int8-full"])
def test_int8_variants_pass_their_gate(converted, key: str) -> None:
    _, manifest, _, _ = converted
    entry = manifest.variants.get(key)
    assert entry is not None and entry.variant is not None, (manifest.skipped_variants or {})[key]
    assert GATES["int8"].misses(entry.variant.to_dict()) == []


@pytest.mark.parametrize("key", ["fp16", "int8", "int8-full"])
def test_variants_keep_to_their_gate_on_x_rays_they_were_not_built_on(converted, key) -> None:
    """The fp32 nodes were chosen on the calibration X-rays: the variants must hold on others."""
    version, manifest, _, held_out = converted
    contract = manifest.contract
    assert contract is not None
    x = real_batch(contract, held_out)
    fp32 = Scorer.of((version / "model.onnx").read_bytes(), contract, x)
    variant = OPTIONAL_VARIANTS[key]
    scores = fp32.scores((version / variant.filename).read_bytes())
    figures = score_agreement(scores, fp32.reference, contract.threshold, variant.gate.margin)
    assert variant.gate.misses(figures) == [], figures
    if key == "fp16":
        assert figures["p99_score_diff"] <= FP16_BOUND, figures


@pytest.mark.parametrize("key", ["fp16", "int8", "int8-full"])
@NEEDS_FULLRES
def test_manifest_says_which_nodes_stayed_fp32_and_why(converted, key: str) -> None:
    """The plain build (nothing more in fp32 than the variant's standing rule) misses the
    target on the calibration X-rays; the build kept is the most faithful attempt, and the
    manifest names the nodes it keeps in fp32."""
    _, manifest, _, _ = converted
    precision = manifest.variants[key].precision
    assert precision is not None
    attempts = precision.attempts
    assert attempts[0]["fp32_nodes"] == 0
    assert attempts[0]["p99_score_diff"] > precision.target_p99_score_diff
    kept = precision.fp32_nodes
    assert kept, "the plain build was kept although it missed the target"
    chosen = next(a for a in attempts if a["fp32_nodes"] == len(kept))
    assert chosen["last_fp32_node"] == kept[-1]
    assert chosen["p99_score_diff"] == min(a["p99_score_diff"] for a in attempts)
    assert chosen["p99_score_diff"] < attempts[0]["p99_score_diff"] / 2
    # What the fidelity costs in speed: measured, and at most about half the work here.
    assert 0.0 < precision.fp32_mac_share < 0.6
    assert manifest.variants[key].fp32_mac_share == precision.fp32_mac_share
