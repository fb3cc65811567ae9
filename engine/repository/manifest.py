"""The manifest of one model version in a repository: files, hashes, sizes, parity figures.

`convert` writes it, the engine and the server check files against it before loading.
Layout (Triton-compatible): REPO/<name>/config.pbtxt, REPO/<name>/<version>/{model.onnx, ...,
manifest.json}.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from engine.errors import RepositoryError

MANIFEST_NAME = "manifest.json"
FORMAT = "pneumo-model-repository/1"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(version_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(version_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise RepositoryError(f"no {MANIFEST_NAME} in {Path(version_dir).name}") from e
    except (OSError, json.JSONDecodeError) as e:
        raise RepositoryError(f"cannot read {MANIFEST_NAME}: {e}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RepositoryError(f"{MANIFEST_NAME} is not a {FORMAT} manifest")
    return data


def verify_files(version_dir: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """Every mismatch between the manifest and the files on disk (empty list: all good)."""
    problems = []
    root = Path(version_dir)
    for name, entry in sorted(manifest.get("files", {}).items()):
        path = root / name
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing")
            continue
        size = path.stat().st_size
        if size != entry.get("bytes"):
            problems.append(f"{name}: {size} bytes on disk, manifest says {entry.get('bytes')}")
            continue
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            problems.append(f"{name}: sha256 {digest[:12]}... does not match the manifest")
    return problems
