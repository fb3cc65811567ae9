"""Only fp32 is mandatory. With the default `--variants all`, a variant that misses its gate is
left out, recorded in the manifest with its figures and named in a warning with the
`--variants` line that gives the same result; a variant named in `--variants` must pass, or
nothing is written and the message says how to get the fp32 model anyway.

The model: one activation channel a thousand times larger than the others (a convolution bias
of 1000). int8 activations share one scale per tensor, so that channel leaves no resolution
for the ones the classifier reads: both static int8 variants miss the int8 gate by far, while
fp32 re-encodings (TFLite, ORT format) stay exact. Outlier channels of this kind are what
breaks int8 on real networks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from pneumo_onnx.convert.probes import real_batch
from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.repository.manifest import Manifest, read_manifest
from pneumo_onnx.engine.repository.variants import GATES, OPTIONAL_VARIANTS
from pneumo_onnx.engine.runtime.samples import sample_images

L = keras.layers


@pytest.fixture(scope="module")
def outlier_keras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(1234)
    inputs = keras.Input((64, 64, 3))
    conv = L.Conv2D(8, 3, strides=2, activation="relu")
    features = L.GlobalAveragePooling2D()(conv(inputs))
    dense = L.Dense(1, activation="sigmoid")
    model = keras.Model(inputs, dense(features))
    kernel, bias = conv.get_weights()
    bias[0] = 1000.0
    conv.set_weights([kernel, bias])
    # The classifier ignores the outlier channel and spreads the samples' scores around 0.5.
    x = real_batch(Contract(input=InputSpec(height=64, width=64)), sample_images())
    f = keras.Model(inputs, features)(x).numpy()
    w, _ = dense.get_weights()
    w[0] = 0.0
    w *= 2.0 / (f @ w).std()
    dense.set_weights([w, np.array([-float(np.median(f @ w))], np.float32)])
    path = tmp_path_factory.mktemp("outlier") / "outlier.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def default_run(
    outlier_keras: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Manifest]:
    """`pneumo convert` as a user types it, with the default --variants all."""
    repo = tmp_path_factory.mktemp("default") / "repo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumo_onnx.engine.cli",
            "convert",
            str(outlier_keras),
            "-o",
            str(repo),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done, read_manifest(repo / "pneumonia" / "1")


def test_default_variants_skip_what_misses_its_gate(default_run) -> None:
    done, manifest = default_run
    skipped = manifest.skipped_variants or {}
    assert {"int8", "int8-full"} <= set(skipped)
    for key, record in skipped.items():
        figures = record.variant
        assert figures is not None, record
        assert GATES[OPTIONAL_VARIANTS[key].gate.kind].misses(figures.to_dict()), key
        assert figures.images == 6 and record.reason.endswith(
            f"({OPTIONAL_VARIANTS[key].gate.describe()})"
        )
        assert key not in manifest.variants
        assert f"SKIP  variant_{key}: " in done.stdout
        # Which layer and why: the pooled outlier channel leaves a uint8 step of ~4 (1000 / 255)
        # for the features the classifier reads; that alone moves the scores past the gate,
        # while half a grey level of pixel noise barely moves fp32.
        precision = figures.precision
        assert precision is not None and precision.worst_nodes
        worst = precision.worst_nodes[0]
        assert worst.op == "GlobalAveragePool", precision.worst_nodes
        assert worst.reduced.startswith("input uint8 in steps of 3.9")
        assert worst.reduced.endswith("over [0, 1e+03]")
        assert worst.alone_p99_score_diff > GATES["int8"].p99_score_diff
        assert precision.fp32_half_grey_level_p99_score_diff is not None
        assert precision.fp32_half_grey_level_p99_score_diff < 1e-3
        assert (
            f"most sensitive node {worst.node} (GlobalAveragePool, {worst.reduced}) alone "
            f"moves p99 {worst.alone_p99_score_diff:.2e}; half a grey level of noise moves "
            "fp32 p99 "
        ) in record.reason
    assert {"fp32", "tflite", "ort"} <= set(manifest.variants)
    kept = [k for k in OPTIONAL_VARIANTS if k in manifest.variants]
    assert (
        "WARNING pneumo_onnx.convert.pipeline: skipped variant(s) "
        f"{', '.join(skipped)}: each missed its gate (figures in manifest.json, "
        f"'skipped_variants'); `--variants {','.join(kept)}` "
        "gives this same result, and naming a skipped variant in --variants makes the "
        "conversion fail instead"
    ) in done.stderr


def test_the_warned_variants_line_gives_the_same_result(
    default_run, outlier_keras: Path, tmp_path: Path
) -> None:
    _, manifest = default_run
    kept = [k for k in OPTIONAL_VARIANTS if k in manifest.variants]
    repo = tmp_path / "repo"
    argv = ["convert", str(outlier_keras), "-o", str(repo), "--variants", ",".join(kept)]
    assert main(argv) == 0
    again = read_manifest(repo / "pneumonia" / "1")
    assert set(again.files) == set(manifest.files) and again.skipped_variants == {}


def test_a_variant_named_must_pass(outlier_keras: Path, tmp_path: Path, capsys) -> None:
    repo = tmp_path / "repo"
    assert main(["convert", str(outlier_keras), "-o", str(repo), "--variants", "int8,ort"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "error: outlier.keras variants failed validation; nothing was written:\n"
        "  - variant_int8: 50.00% label agreement (95% lower bound 18.2%; 2 within 0.05 of the "
        "threshold not judged), score diff p99 "
    ), err
    assert "label agreement 50.00% < 99%; p99 score diff " in err
    assert err.endswith(
        "(int8 gate: p99 <= 0.05, agreement >= 99%)\n"
        "To get the fp32 model (and the variants that passed) anyway: --variants ort\n"
    ), err
    assert not repo.exists()
