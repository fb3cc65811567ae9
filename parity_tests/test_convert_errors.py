"""Every way `pneumo convert` can fail: a specific message, a non-zero exit, nothing written."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import keras
import pytest
import tensorflow as tf
import tf_keras

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.repository.manifest import (
    read_manifest,
    sha256_file,
    training_list,
    verify_files,
)
from pneumo_onnx.engine.repository.sections import TrainingImages
from tests.conftest import unwritable_dir

L = keras.layers


@keras.saving.register_keras_serializable(package="pneumo_tests")
class Zeta(L.Layer):
    """Hurwitz zeta: a real TensorFlow op tf2onnx has no ONNX conversion for."""

    def call(self, x):  # type: ignore[no-untyped-def]
        return tf.math.zeta(x + 2.0, x + 1.0)


def head(units: int, activation: str | None, prefix: L.Layer | None = None) -> keras.Model:
    inputs = keras.Input((64, 64, 3))
    x = prefix(inputs) if prefix is not None else inputs
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, strides=2)(x))
    return keras.Model(inputs, L.Dense(units, activation=activation)(x))


def saved(model: keras.Model, path: Path) -> str:
    model.save(path)
    return str(path)


CASES = {
    "missing-file": (lambda t: str(t / "nope.keras"), 2, "nope.keras: no such model file"),
    "empty-file": (lambda t: _write(t / "empty.keras", b""), 1, "is empty (0 bytes)"),
    "not-a-model": (lambda t: _write(t / "notes.txt", b"hello"), 1, "is not a Keras model"),
    "corrupt-keras": (
        lambda t: _write(t / "broken.keras", b"PK\x03\x04" + b"\x00" * 64),
        1,
        "broken.keras is truncated or is not a complete zip archive (68 bytes",
    ),
    "lfs-pointer-keras": (
        lambda t: _write(t / "model.keras", POINTER),
        1,
        "model.keras is a Git LFS pointer, not the model: a 133-byte text file standing for the "
        "real 23.5 MB file",
    ),
    "lfs-pointer-h5": (
        lambda t: _write(t / "model.h5", POINTER),
        1,
        "model.h5 is a Git LFS pointer, not the model",
    ),
    "truncated-keras": (
        lambda t: _cut(saved(head(1, "sigmoid"), t / "whole.keras"), t / "cut.keras"),
        1,
        "cut.keras is truncated or is not a complete zip archive",
    ),
    "keras2-keras-neither-loads": (
        lambda t: keras2_with_unknown_layer(t / "keras2.keras"),
        1,
        f"cannot load keras2.keras: it was written by Keras {tf_keras.__version__} (its "
        "metadata.json); Keras 3 said: ",
    ),
    "savedmodel-without-variables": (
        lambda t: _exported(t, lambda d: shutil.rmtree(d / "variables")),
        1,
        "SavedModel exported is missing its weights: expected variables/variables.index and "
        "variables/variables.data-00000-of-00001 (or more shards) beside saved_model.pb, found "
        "none: copy the whole SavedModel folder",
    ),
    "savedmodel-lfs-variables": (
        lambda t: _exported(
            t, lambda d: _write(d / "variables" / "variables.data-00000-of-00001", POINTER)
        ),
        1,
        "variables.data-00000-of-00001 is a Git LFS pointer, not part of the SavedModel exported",
    ),
    "two-sigmoid-units-without-labels": (
        lambda t: saved(head(2, "sigmoid"), t / "two_sigmoid.keras"),
        2,
        "two_sigmoid.keras has a 2-unit output: say which unit is P(PNEUMONIA) with "
        "--positive-index",
    ),
    "two-units-no-softmax-savedmodel": (
        lambda t: _exported(t, model=head(2, "sigmoid")),
        1,
        "unknown output kind: exported has two output units that are not softmax probabilities "
        "(final activation unknown; rows must sum to 1, they sum to ",
    ),
    "text-named-h5": (
        lambda t: _write(t / "model.h5", b"this is not HDF5"),
        1,
        "cannot load model.h5 as an .h5 model: Keras 3 said",
    ),
    "html-named-h5": (
        lambda t: _write(t / "model.h5", b"<!doctype html><title>Sign in - Kaggle</title>"),
        1,
        "model.h5 is an HTML page (46 bytes, titled 'Sign in - Kaggle'), not the model",
    ),
    "folder-not-savedmodel": (lambda t: str(_mkdir(t / "folder")), 1, "no saved_model.pb"),
    "unsupported-op": (
        lambda t: saved(head(1, "sigmoid", Zeta()), t / "zeta.keras"),
        1,
        "unsupported ops: Zeta (x1)",
    ),
    "three-outputs": (
        lambda t: saved(head(3, "softmax"), t / "three.keras"),
        1,
        "unknown output kind: three.keras outputs 3 values per image",
    ),
    "logits": (
        lambda t: saved(head(1, None), t / "logits.keras"),
        1,
        "final activation is linear",
    ),
    "softmax2-without-labels": (
        lambda t: saved(head(2, "softmax"), t / "two.keras"),
        2,
        "say which unit is P(PNEUMONIA) with --positive-index",
    ),
}


@pytest.mark.parametrize(("make", "code", "message"), CASES.values(), ids=CASES.keys())
def test_convert_failures(tmp_path: Path, capsys, make, code: int, message: str) -> None:
    source = make(tmp_path)
    repo = tmp_path / "repo"
    assert main(["convert", source, "-o", str(repo), "--variants", "none"]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err
    assert not repo.exists(), "a failed conversion must not leave the folders it created"


def test_real_xrays_are_in_the_output_detection(tmp_path: Path, capsys) -> None:
    """Sum-to-one is checked on the shipped X-rays too, and the message says so (two sigmoid
    units said to be a softmax)."""
    source = saved(head(2, "sigmoid"), tmp_path / "two.keras")
    argv = ["convert", source, "-o", str(tmp_path / "repo"), "--variants", "none"]
    assert main([*argv, "--output-kind", "softmax2", "--positive-index", "1"]) == 1
    err = capsys.readouterr().err
    assert " on uniform noise and " in err and " on 6 real X-rays)" in err
    assert "if they are two sigmoids your application reads by argmax, pass --output-kind" in err


def test_output_kind_that_does_not_fit_the_units_is_refused(tmp_path: Path, capsys) -> None:
    source = saved(head(1, "sigmoid"), tmp_path / "one.keras")
    argv = ["convert", source, "-o", str(tmp_path / "repo"), "--variants", "none"]
    assert main([*argv, "--output-kind", "sigmoid2"]) == 1
    err = capsys.readouterr().err
    assert "--output-kind sigmoid2: one.keras outputs one value per image" in err


def test_failure_keeps_an_existing_repository_as_it_was(tmp_path: Path, capsys) -> None:
    repo = tmp_path / "repo"
    (repo / "other").mkdir(parents=True)
    source = _write(tmp_path / "model.keras", POINTER)
    assert main(["convert", source, "-o", str(repo), "--name", "new"]) == 1
    assert "is a Git LFS pointer" in capsys.readouterr().err
    assert _written_versions(repo) == ["other"]


def test_unwritable_repository_fails_before_loading(tmp_path: Path, capsys) -> None:
    source = saved(head(1, "sigmoid"), tmp_path / "ok.keras")
    target = unwritable_dir(tmp_path)
    assert main(["convert", source, "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert "cannot write to model repository" in err and "Traceback" not in err


def test_failed_variant_gate_writes_nothing(tmp_path: Path, capsys) -> None:
    """A parity tolerance no fp32 graph can meet: the gate fails and the repository stays empty."""
    source = saved(head(1, "sigmoid"), tmp_path / "ok.keras")
    repo = tmp_path / "repo"
    code = main(["convert", source, "-o", str(repo), "--variants", "int8", "--tolerance", "-1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "failed validation; nothing was written" in err and "parity_keras" in err
    assert _written_versions(repo) == []


def test_training_list_is_copied_or_refused(tmp_path: Path, capsys) -> None:
    """--training-list: copied as given into the version and named in the manifest with its
    sha256; a list that names no images is refused and nothing is written."""
    source = saved(head(1, "sigmoid"), tmp_path / "ok.keras")
    repo = tmp_path / "repo"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    args = ["convert", source, "-o", str(repo), "--variants", "none"]
    assert main([*args, "--training-list", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "error: --training-list: training list empty.txt names no images" in err
    assert _written_versions(repo) == []
    listed = tmp_path / "names.txt.gz"
    listed.write_bytes(gzip.compress(b"NORMAL/IM-0115-0001.jpeg\nPNEUMONIA/person1_virus_6.jpeg\n"))
    assert main([*args, "--training-list", str(listed)]) == 0
    version = repo / "pneumonia" / "1"
    copied = version / "training_images.txt.gz"
    assert copied.read_bytes() == listed.read_bytes()
    manifest = read_manifest(version)
    assert manifest.training_images == TrainingImages("training_images.txt.gz", 2)
    assert manifest.files["training_images.txt.gz"].sha256 == sha256_file(listed)
    assert verify_files(version, manifest) == []
    assert training_list(version, manifest) == [
        "NORMAL/IM-0115-0001.jpeg",
        "PNEUMONIA/person1_virus_6.jpeg",
    ]


def _written_versions(repo: Path) -> list[str]:
    """What a failed conversion left in the repository: must be nothing at all."""
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) if repo.is_dir() else []


def _write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 23456789\n"
)


def _cut(source: str, target: Path) -> str:
    """A real .keras file cut short, as an interrupted download leaves it."""
    data = Path(source).read_bytes()
    target.write_bytes(data[: len(data) * 2 // 3])
    return str(target)


def _exported(
    tmp: Path, break_it: Callable[[Path], object] = lambda d: None, model: keras.Model | None = None
) -> str:
    """A Keras 3 `model.export()` SavedModel, then broken by `break_it`."""
    folder = tmp / "exported"
    (model or head(1, "sigmoid")).export(folder, verbose=False)
    break_it(folder)
    return str(folder)


def keras2_with_unknown_layer(path: Path) -> str:
    """A `.keras` file written by Keras 2 (tf_keras writes the zip layout Keras 2.12-2.15 did:
    metadata.json with keras_version 2.x, config.json, model.weights.h5) with a custom layer
    defined only here, so neither Keras 3 nor tf_keras can rebuild it."""

    class Doubling(tf_keras.layers.Layer):
        def call(self, x):  # type: ignore[no-untyped-def]
            return x * 2.0

    tk = tf_keras.layers
    model = tf_keras.Sequential(
        [
            tk.InputLayer(input_shape=(32, 32, 3)),
            Doubling(),
            tk.GlobalAveragePooling2D(),
            tk.Dense(1, activation="sigmoid"),
        ]
    )
    model.save(path)
    return str(path)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


CUSTOM_LAYER = """
import keras


@keras.saving.register_keras_serializable(package="user_code")
class Brighten(keras.layers.Layer):
    def call(self, x):
        return x * 0.5 + 0.25
"""


def test_custom_objects_file_makes_a_custom_layer_loadable(tmp_path: Path) -> None:
    """A model with a user's custom layer: refused with a hint, then converted with the file."""
    import subprocess
    import sys

    code_file = tmp_path / "user_layers.py"
    code_file.write_text(CUSTOM_LAYER)
    build = (
        "import importlib.util, keras, sys\n"
        "keras.utils.set_random_seed(0)\n"
        f"spec = importlib.util.spec_from_file_location('user_layers', {str(code_file)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "i = keras.Input((64, 64, 3)); x = mod.Brighten()(i)\n"
        "x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))\n"
        "keras.Model(i, keras.layers.Dense(1, activation='sigmoid')(x))"
        f".save({str(tmp_path / 'custom.keras')!r})\n"
    )
    subprocess.run([sys.executable, "-c", build], check=True, capture_output=True)
    pneumo = [
        sys.executable,
        "-m",
        "pneumo_onnx.engine.cli",
        "convert",
        str(tmp_path / "custom.keras"),
    ]
    refused = subprocess.run(
        [*pneumo, "-o", str(tmp_path / "r1"), "--variants", "none"], capture_output=True, text=True
    )
    assert refused.returncode == 1 and "pass --custom-objects FILE.py" in refused.stderr
    done = subprocess.run(
        [
            *pneumo,
            "-o",
            str(tmp_path / "r2"),
            "--variants",
            "none",
            "--custom-objects",
            str(code_file),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "PASS  parity_keras" in done.stdout


@pytest.mark.parametrize(
    ("channels", "flags", "message"),
    [
        (3, ["--input-std", "0.25"], "--input-std needs --input-mean too"),
        (3, ["--input-mean", "0.5"], "--input-mean needs --input-std too"),
        (
            1,
            ["--input-mean", "0.485,0.456,0.406", "--input-std", "0.229,0.224,0.225"],
            "--input-mean has 3 values but the model takes 1 channel per pixel: give 1 value",
        ),
        (
            3,
            ["--input-mean", "0.5,0.5", "--input-std", "0.25"],
            "--input-mean has 2 values but the model takes 3 channels per pixel: give 1 value or 3",
        ),
    ],
    ids=["std-alone", "mean-alone", "three-for-gray", "two-for-rgb"],
)
def test_mean_and_std_flags_that_cannot_apply_are_usage_errors(
    tmp_path: Path, capsys, channels: int, flags: list[str], message: str
) -> None:
    inputs = keras.Input((32, 32, channels))
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(inputs))
    source = saved(keras.Model(inputs, L.Dense(1, activation="sigmoid")(x)), tmp_path / "m.keras")
    argv = ["convert", source, "-o", str(tmp_path / "repo"), "--variants", "none", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and "invalid model contract" not in err, err


def test_mean_and_std_in_pixel_units(tmp_path: Path, capsys) -> None:
    """An author who subtracts [123.68, 116.779, 103.939] from 0-255 pixels and divides by
    [58.393, 57.12, 57.375] gives those numbers as they are: read on the [0, 1] scale."""
    source = saved(head(1, "sigmoid"), tmp_path / "m.keras")
    mean, std = (123.68, 116.779, 103.939), (58.393, 57.12, 57.375)
    argv = ["convert", source, "-o", str(tmp_path / "repo"), "--variants", "none"]
    flags = ["--input-mean", ",".join(map(str, mean)), "--input-std", ",".join(map(str, std))]
    assert main([*argv, *flags]) == 0, capsys.readouterr().err
    contract = read_manifest(tmp_path / "repo" / "pneumonia" / "1").contract
    assert contract is not None and contract.input.scaling == "custom"
    assert contract.input.mean == pytest.approx([v / 255 for v in mean])
    assert contract.input.std == pytest.approx([v / 255 for v in std])
