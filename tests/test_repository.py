"""Model repository writing: versions, atomicity, Triton config, manifest verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pneumo_onnx.convert.repository import check_target, triton_config, write_version
from pneumo_onnx.engine.contract import Contract, OutputSpec
from pneumo_onnx.engine.errors import RepositoryError, UsageError
from pneumo_onnx.engine.repository.manifest import Manifest, read_manifest, verify_files
from tests.conftest import unwritable_dir


def write(repo: Path, version: int, files: dict[str, bytes] | None = None) -> Path:
    files = files or {"model.onnx": b"onnx-bytes"}
    info = {"model.onnx": {"kind": "fp32"}}
    return write_version(
        repo, "pneumonia", version, files, info, Manifest(name="pneumonia"), Contract()
    )[0]


def test_versions_count_up_and_are_immutable(tmp_path: Path) -> None:
    assert check_target(tmp_path, "pneumonia", None) == 1
    write(tmp_path, 1)
    assert check_target(tmp_path, "pneumonia", None) == 2
    with pytest.raises(RepositoryError, match="version 1 already exists"):
        check_target(tmp_path, "pneumonia", 1)
    assert check_target(tmp_path, "pneumonia", 7) == 7


def test_written_version_verifies_and_detects_tampering(tmp_path: Path) -> None:
    version_dir = write(tmp_path, 1)
    manifest = read_manifest(version_dir)
    assert manifest.files["model.onnx"].kind == "fp32"
    assert (manifest.name, manifest.version) == ("pneumonia", 1)
    assert verify_files(version_dir, manifest) == []
    (version_dir / "model.onnx").write_bytes(b"onnx-bytez")
    assert verify_files(version_dir, manifest) == [
        "model.onnx does not match the sha256 in its manifest.json"
    ]
    (version_dir / "model.onnx").write_bytes(b"onnx")
    assert verify_files(version_dir, manifest) == ["model.onnx: 4 bytes on disk, manifest says 10"]
    (version_dir / "model.onnx").unlink()
    assert verify_files(version_dir, manifest) == ["model.onnx: listed in the manifest but missing"]
    # No staging folders are left behind.
    assert sorted(p.name for p in (tmp_path / "pneumonia").iterdir()) == ["1", "config.pbtxt"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    check_target(tmp_path, "pneumonia", 1)
    with pytest.raises(RepositoryError, match="writing pneumonia/1 failed"):
        write(tmp_path, 1, {"m" * 300 + ".onnx": b"x"})  # a file name the stage cannot hold
    assert [p.name for p in (tmp_path / "pneumonia").iterdir()] == []


@pytest.mark.parametrize(
    ("name", "message", "error"),
    [("../evil", "use letters, digits", UsageError), ("", "use letters, digits", UsageError)],
    ids=["traversal", "empty"],
)
def test_bad_names(tmp_path: Path, name: str, message: str, error: type) -> None:
    with pytest.raises(error, match=message):
        check_target(tmp_path, name, None)


def test_unwritable_target_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="cannot write to model repository"):
        check_target(unwritable_dir(tmp_path), "pneumonia", None)
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    with pytest.raises(RepositoryError, match=r"a file is in the way|cannot write"):
        check_target(blocker, "pneumonia", None)


def test_triton_config_matches_the_contract() -> None:
    text = triton_config(
        "pneumonia", Contract(output=OutputSpec(kind="softmax2", positive_index=1))
    )
    assert 'platform: "onnxruntime_onnx"' in text
    assert 'name: "image" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ 128, 128, 3 ]' in text
    assert 'name: "score" data_type: TYPE_FP32 dims: [ 2 ]' in text
    assert "max_batch_size: 64" in text


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(RepositoryError, match="is not a pneumo-model-repository/1 manifest"):
        read_manifest(tmp_path)


def test_a_version_folder_is_readable_by_others_as_umask_allows(tmp_path: Path) -> None:
    """The staging folder is private while it is written (mkdtemp); the version it becomes must
    not be, or a server or Triton running as another user cannot read it."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        version_dir = write(tmp_path, 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(version_dir.stat().st_mode) == 0o755
