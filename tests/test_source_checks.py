"""Broken model files are recognised before any loader reads them, each with a message that says
what was expected, what arrived and what to do (convert/source_checks.py; no TensorFlow).

The files are built here as they arrive in the wild: a Git LFS pointer is the small text file
`git lfs` leaves in a clone made without it; a `.keras` file is a zip holding config.json,
metadata.json and model.weights.h5 (the layout Keras 2.12+ and Keras 3 write; the members'
contents do not matter to these checks). The same cases through `pneumo convert`, on files
Keras itself wrote, are in parity_tests/test_convert_errors.py.
"""

from __future__ import annotations

import json
import random
import shutil
import zipfile
from pathlib import Path

import pytest

from pneumo_onnx.convert.source_checks import check_file, check_savedmodel, keras_version
from pneumo_onnx.engine.errors import ModelLoadError

OID = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393"
POINTER = f"version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize 23456789\n"


def keras_zip(path: Path, keras_version: str = "3.5.0", weights: bytes = b"\0" * 4096) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", json.dumps({"keras_version": keras_version}))
        z.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
        z.writestr("model.weights.h5", weights)
    return path


def savedmodel(folder: Path, shards: int = 1) -> Path:
    """The files TensorFlow writes for a SavedModel (contents are not read by the checks)."""
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01" + b"\0" * 2048)
    (folder / "variables" / "variables.index").write_bytes(b"\0" * 2048)
    for i in range(shards):
        shard = folder / "variables" / f"variables.data-{i:05d}-of-{shards:05d}"
        shard.write_bytes(b"\0" * 4096)
    return folder


@pytest.mark.parametrize("name", ["model.keras", "model.h5", "weights.bin"])
def test_lfs_pointer_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(POINTER)
    with pytest.raises(ModelLoadError) as e:
        check_file(path)
    assert e.value.message == (
        f"{name} is a Git LFS pointer, not the model: a {len(POINTER)}-byte text file standing "
        "for the real 23.5 MB file, sha256 4d7a214614ab.... The repository was cloned or "
        "downloaded without Git LFS: run `git lfs install && git lfs pull` in the clone (or "
        "download the file itself), then convert again"
    )


SIGN_IN = (
    "\n<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
    "<title>Google Drive - Virus scan warning</title></head><body>Download anyway</body></html>"
)


@pytest.mark.parametrize("name", ["model.h5", "model.keras", "saved_model.pb"])
def test_a_web_page_saved_as_the_model(tmp_path: Path, name: str) -> None:
    """What a download link answers when it needs a sign-in or a confirmation, saved under the
    model's name (`wget`, `curl -L`, "Save link as")."""
    path = tmp_path / name
    path.write_text(SIGN_IN)
    with pytest.raises(ModelLoadError) as e:
        check_file(path)
    assert e.value.message == (
        f"{name} is an HTML page ({len(SIGN_IN)} bytes, titled 'Google Drive - Virus scan "
        "warning'), not the model: a download link that needed a sign-in or a confirmation "
        "saves the web page it showed instead of the file. Open the link in a browser (or use "
        "the site's API or CLI) and download the file itself, then convert again"
    )


def test_a_web_page_inside_a_savedmodel(tmp_path: Path) -> None:
    folder = savedmodel(tmp_path / "exported")
    (folder / "variables" / "variables.index").write_text("<html><body>Sign in</body></html>")
    with pytest.raises(ModelLoadError, match=r"variables\.index is an HTML page .* not part of"):
        check_savedmodel(folder)


def test_truncated_keras_zip(tmp_path: Path) -> None:
    whole = keras_zip(tmp_path / "whole.keras").read_bytes()
    cut = tmp_path / "model.keras"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelLoadError) as e:
        check_file(cut)
    assert e.value.message == (
        f"model.keras is truncated or is not a complete zip archive ({len(whole) // 2} bytes, no "
        "zip directory at its end): expected a .keras zip (config.json, model.weights.h5). An "
        "interrupted download or copy? Fetch it again; `unzip -t` checks a copy"
    )


def test_damaged_keras_member(tmp_path: Path) -> None:
    weights = random.Random(0).randbytes(4096)  # incompressible: stored as is in the zip
    path = keras_zip(tmp_path / "model.keras", weights=weights)
    with zipfile.ZipFile(path) as z:
        offset = z.getinfo("model.weights.h5").header_offset
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0xFF  # one flipped byte inside the stored weights
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as e:
        check_file(path)
    assert e.value.message == (
        "model.keras is damaged: its member model.weights.h5 does not read back (CRC or "
        "compressed data; an interrupted or corrupted copy?). Fetch it again; `unzip -t` checks a "
        "copy"
    )


def test_zip_that_is_not_a_keras_model(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("saved_model.pb", b"")
    with pytest.raises(ModelLoadError) as e:
        check_file(path)
    assert e.value.message == (
        "model.keras is a zip archive but not a Keras model: expected config.json and "
        "model.weights.h5, it holds saved_model.pb"
    )


def test_complete_keras_zip_passes_and_says_who_wrote_it(tmp_path: Path) -> None:
    path = keras_zip(tmp_path / "model.keras", keras_version="2.12.0")
    check_file(path)
    assert keras_version(path) == "2.12.0"
    assert keras_version(keras_zip(tmp_path / "k3.keras")) == "3.5.0"
    (tmp_path / "plain.zip").write_bytes(b"not a zip")
    assert keras_version(tmp_path / "plain.zip") is None


def test_complete_savedmodel_passes(tmp_path: Path) -> None:
    check_savedmodel(savedmodel(tmp_path / "exported", shards=2))


EXPECTED = (
    "expected variables/variables.index and variables/variables.data-00000-of-00001 (or more "
    "shards) beside saved_model.pb"
)
WHAT_TO_DO = (
    "copy the whole SavedModel folder as TensorFlow wrote it (saved_model.pb alone holds no "
    "weights)"
)


def _no_variables(folder: Path) -> None:
    shutil.rmtree(folder / "variables")


def _no_index(folder: Path) -> None:
    (folder / "variables" / "variables.index").unlink()


def _missing_shard(folder: Path) -> None:
    (folder / "variables" / "variables.data-00001-of-00002").unlink()


def _pointer_shard(folder: Path) -> None:
    (folder / "variables" / "variables.data-00000-of-00002").write_text(POINTER)


def _pointer_graph(folder: Path) -> None:
    (folder / "saved_model.pb").write_text(POINTER)


def _no_graph(folder: Path) -> None:
    (folder / "saved_model.pb").unlink()


SAVEDMODEL_CASES = {
    "no-variables-folder": (
        _no_variables,
        f"SavedModel exported is missing its weights: {EXPECTED}, found none: {WHAT_TO_DO}",
    ),
    "no-index": (
        _no_index,
        f"SavedModel exported is missing its weights: {EXPECTED}, found variables/ holding "
        f"variables.data-00000-of-00002, variables.data-00001-of-00002: {WHAT_TO_DO}",
    ),
    "missing-shard": (
        _missing_shard,
        "SavedModel exported is missing part of its weights: variables.data-00001-of-00002 "
        f"(variables/ holds variables.data-00000-of-00002): {WHAT_TO_DO}",
    ),
    "lfs-pointer-shard": (
        _pointer_shard,
        "variables.data-00000-of-00002 is a Git LFS pointer, not part of the SavedModel exported",
    ),
    "lfs-pointer-graph": (
        _pointer_graph,
        "saved_model.pb is a Git LFS pointer, not part of the SavedModel exported",
    ),
    "no-saved-model-pb": (
        _no_graph,
        "exported is a folder but not a SavedModel (no saved_model.pb)",
    ),
}


@pytest.mark.parametrize(
    ("break_it", "message"), SAVEDMODEL_CASES.values(), ids=SAVEDMODEL_CASES.keys()
)
def test_broken_savedmodel(tmp_path: Path, break_it, message: str) -> None:
    folder = savedmodel(tmp_path / "exported", shards=2)
    break_it(folder)
    with pytest.raises(ModelLoadError) as e:
        check_savedmodel(folder)
    assert e.value.message.startswith(message), e.value.message
