"""Write one model version into a Triton-compatible model repository, all or nothing.

    REPO/<name>/config.pbtxt             Triton onnxruntime backend config
    REPO/<name>/<version>/model.onnx     fp32, the contract in its metadata
    REPO/<name>/<version>/model.*.onnx, model*.tflite, model.ort   variants
    REPO/<name>/<version>/manifest.json  files, sha256, sizes, parity figures, source, tools
    REPO/<name>/<version>/training_images.txt[.gz]   optional: what the model was trained on

Files are staged in a hidden folder beside the version and renamed into place in one step, so a
failed or interrupted conversion never leaves a half-written version behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import RepositoryError, UsageError
from pneumo_onnx.engine.repository.manifest import (
    MANIFEST_NAME,
    TRAINING_LISTS,
    Manifest,
    parse_training_list,
)
from pneumo_onnx.engine.repository.sections import FileEntry

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_BATCH_SIZE = 64


def check_target(repo: Path, name: str, version: int | None) -> int:
    """Fail early (before any conversion work) if the target cannot be written; pick a version."""
    if not _NAME.match(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '_', '-', '.' (max 64)")
    if version is not None and version < 1:
        raise UsageError(f"--version must be a positive integer, got {version}")
    model_dir = repo / name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=model_dir, prefix=".write-test-", delete=True):
            pass
    except FileExistsError as e:
        raise RepositoryError(
            f"cannot create model repository {repo.name}: a file is in the way"
        ) from e
    except OSError as e:
        raise RepositoryError(
            f"cannot write to model repository {repo.name}: {e.strerror or e}"
        ) from e
    existing = versions(model_dir)
    if version is None:
        return max(existing, default=0) + 1
    if version in existing:
        raise RepositoryError(
            f"{name} version {version} already exists in {repo.name}: versions are immutable; "
            f"pick --version {max(existing) + 1} or leave --version out"
        )
    return version


def read_training_list(path: str | os.PathLike[str]) -> tuple[str, bytes, int]:
    """(file name in the version, bytes as given, image count) of a training list to copy into
    a version: one dataset-relative image name per line; gzipped if it ends in .gz."""
    source = Path(path)
    name = TRAINING_LISTS[1] if source.name.endswith(".gz") else TRAINING_LISTS[0]
    try:
        data = source.read_bytes()
    except OSError as e:
        raise UsageError(f"--training-list {source}: {e.strerror or e}") from e
    try:
        names = parse_training_list(data, source.name)
    except RepositoryError as e:
        raise UsageError(f"--training-list: {e.message}") from e
    return name, data, len(names)


def versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def write_version(
    repo: Path,
    name: str,
    version: int,
    files: dict[str, bytes],
    file_info: dict[str, dict[str, Any]],
    manifest: Manifest,
    contract: Contract,
) -> tuple[Path, Manifest]:
    """Stage every file plus the manifest, then rename the folder into place atomically.

    The manifest gets a `files` entry per file: sha256, size, and that file's `file_info`
    (its kind and figures). It is read back before anything is written: a manifest its own
    reader would refuse is a bug here, not a broken version there. Returns the version folder
    and the manifest as written.
    """
    entries = {n: FileEntry.of(data, file_info.get(n, {})) for n, data in files.items()}
    manifest = replace(manifest, name=name, version=version, files=entries)
    text = manifest.to_json()
    Manifest.from_dict(json.loads(text))
    model_dir = repo / name
    final = model_dir / str(version)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
        # mkdtemp makes the folder private (0700); the version is renamed into place as is, and
        # a server or Triton running as another user must be able to read it: umask's mode.
        staging.chmod(0o777 & ~_umask())
    except OSError as e:
        raise RepositoryError(
            f"cannot write to model repository {repo.name}: {e.strerror or e}"
        ) from e
    try:
        for filename, data in files.items():
            (staging / filename).write_bytes(data)
        (staging / MANIFEST_NAME).write_text(text)
        if final.exists():
            raise RepositoryError(
                f"{name} version {version} appeared while converting; not replaced"
            )
        os.rename(staging, final)
        _write_atomic(model_dir / "config.pbtxt", triton_config(name, contract))
    except OSError as e:
        raise RepositoryError(f"writing {name}/{version} failed: {e.strerror or e}") from e
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final, manifest


def triton_config(name: str, contract: Contract) -> str:
    """config.pbtxt for Triton's onnxruntime backend, serving the same folder unchanged."""
    i, o = contract.input, contract.output
    dims = ", ".join(str(d) for d in contract.input_shape)
    out_units = 1 if o.kind == "sigmoid" else 2
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        'default_model_filename: "model.onnx"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        "input [\n"
        f'  {{ name: "{i.name}" data_type: TYPE_FP32 format: FORMAT_{i.layout} '
        f"dims: [ {dims} ] }}\n"
        "]\n"
        "output [\n"
        f'  {{ name: "{o.name}" data_type: TYPE_FP32 dims: [ {out_units} ] }}\n'
        "]\n"
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
