"""Find the model file to load: a file, a version folder, a model folder, a repository, or the
default model shipped inside the package; check it against its manifest before loading."""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

from pneumo_onnx.engine.errors import RepositoryError, UsageError
from pneumo_onnx.engine.repository.manifest import MANIFEST_NAME, Manifest, read_manifest
from pneumo_onnx.engine.repository.variants import FP32, VARIANT_FILES, variant_of

DEFAULT_MODEL_NAME = "pneumonia"


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    variant: str
    name: str | None = None
    version: int | None = None
    manifest: Manifest | None = None
    sha256: str | None = None  # checked against the manifest; None without one

    @property
    def variants(self) -> list[str]:
        """Variants present beside this model (from its manifest, else from the folder)."""
        names = (
            set(self.manifest.files)
            if self.manifest
            else {p.name for p in self.path.parent.iterdir()}
        )
        return [v for v, f in VARIANT_FILES.items() if f in names]


def default_model_dir() -> Path:
    """The model folder shipped as package data (`models/pneumonia` in a checkout)."""
    return Path(str(importlib.resources.files("pneumo_onnx.models"))) / DEFAULT_MODEL_NAME


def resolve(model: str | os.PathLike | None = None, variant: str | None = None) -> ResolvedModel:
    """Resolve what the user named to one verified model file.

    - None: the default model shipped with the package, newest version;
    - a .onnx/.ort file: that file;
    - a version folder (holds manifest.json), a model folder (holds numbered versions) or a
      repository holding exactly one model: its newest version.
    `variant` picks fp32 (default), int8, int8-full, fp16 or ort inside a version folder.
    """
    if variant is not None and variant not in VARIANT_FILES:
        raise UsageError(f"variant must be one of {', '.join(VARIANT_FILES)}, got {variant!r}")
    p = default_model_dir() if model is None else Path(model)
    if not p.exists():
        raise UsageError(f"{model}: no such model file or folder")
    if p.is_file():
        if variant is not None:
            raise UsageError("--variant picks a file inside a model folder; you named a file")
        return _verified(p, variant_of(p.name))
    version_dir = _version_dir(p)
    filename = VARIANT_FILES[variant or FP32]
    path = version_dir / filename
    if not path.is_file():
        raise UsageError(
            f"{version_dir.parent.name}/{version_dir.name} has no {variant} variant ({filename})"
        )
    return _verified(path, variant or FP32)


def _version_dir(p: Path) -> Path:
    if (p / MANIFEST_NAME).is_file() or any(p.glob("*.onnx")):
        return p
    versions = _versions(p)
    if versions:
        return p / str(versions[-1])
    models = sorted(d for d in p.iterdir() if d.is_dir() and _versions(d))
    if len(models) == 1:
        return models[0] / str(_versions(models[0])[-1])
    if models:
        raise UsageError(
            f"{p.name} holds several models ({', '.join(m.name for m in models)}): name one"
        )
    raise UsageError(f"{p.name} holds no model: expected .onnx files or numbered version folders")


def _versions(p: Path) -> list[int]:
    return sorted(int(d.name) for d in p.iterdir() if d.is_dir() and d.name.isdigit())


def _verified(path: Path, variant: str) -> ResolvedModel:
    """A model inside a repository version must match its manifest's sha256: a swapped or
    corrupted file is refused before onnxruntime ever parses it."""
    version_dir = path.parent
    if not (version_dir / MANIFEST_NAME).is_file():
        return ResolvedModel(path=path, variant=variant)
    manifest = read_manifest(version_dir)
    try:
        sha256 = manifest.check_file(path)
    except RepositoryError as e:
        raise RepositoryError(f"{e.message}: refusing to load") from e
    version = int(version_dir.name) if version_dir.name.isdigit() else manifest.version
    return ResolvedModel(path, variant, manifest.name, version, manifest, sha256)
