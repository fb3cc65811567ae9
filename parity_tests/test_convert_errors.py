"""Every way `pneumo convert` can fail: a specific message, a non-zero exit, nothing written."""

from __future__ import annotations

import gzip
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from engine.cli import main
from engine.repository.manifest import read_manifest, sha256_file, training_list, verify_files
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
        "Keras cannot load broken.keras",
    ),
    "text-named-h5": (
        lambda t: _write(t / "model.h5", b"this is not HDF5"),
        1,
        "cannot load model.h5 as an .h5 model: Keras 3 said",
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
    assert _written_versions(repo) == []


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
    assert manifest["training_images"] == {"file": "training_images.txt.gz", "images": 2}
    assert manifest["files"]["training_images.txt.gz"]["sha256"] == sha256_file(listed)
    assert verify_files(version, manifest) == []
    assert training_list(version, manifest) == [
        "NORMAL/IM-0115-0001.jpeg",
        "PNEUMONIA/person1_virus_6.jpeg",
    ]


def _written_versions(repo: Path) -> list[str]:
    """What a failed conversion left in the repository: must be nothing at all."""
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) if repo.is_dir() else []


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
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
    pneumo = [sys.executable, "-m", "engine.cli", "convert", str(tmp_path / "custom.keras")]
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
