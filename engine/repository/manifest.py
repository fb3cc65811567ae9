"""The manifest of one model version in a repository: files, hashes, sizes, parity figures.

`convert` writes it, the engine and the server check files against it before loading.
Layout (Triton-compatible): REPO/<name>/config.pbtxt, REPO/<name>/<version>/{model.onnx, ...,
manifest.json}.

A version may also list the images it was trained on (`pneumo convert --training-list`): a
text file, one dataset-relative name per line, plain (`training_images.txt`) or gzipped
(`training_images.txt.gz`), named by the manifest's `training_images` entry and hashed in its
`files`, so `pneumo evaluate` can say when it is shown the model's own training data. Likewise
the validation split its threshold and calibration were chosen on (`--validation-list`:
`validation_images.txt[.gz]`, the manifest's `validation_images` entry): figures on those images
are optimistic, and `pneumo evaluate` says so.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.errors import RepositoryError

MANIFEST_NAME = "manifest.json"
FORMAT = "pneumo-model-repository/1"
TRAINING_LISTS = ("training_images.txt", "training_images.txt.gz")  # plain, gzipped
VALIDATION_LISTS = ("validation_images.txt", "validation_images.txt.gz")
# manifest key -> (the file names it may name, what the list is, for messages)
IMAGE_LISTS = {
    "training_images": (TRAINING_LISTS, "training list"),
    "validation_images": (VALIDATION_LISTS, "validation list"),
}


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


def parse_training_list(data: bytes, name: str, what: str = "training list") -> list[str]:
    """The image names of a training (or validation) list (gzipped if `name` ends in .gz): one
    per line, blank lines skipped; RepositoryError if it is not such a list."""
    try:
        text = (gzip.decompress(data) if name.endswith(".gz") else data).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        kind = "gzipped UTF-8 text" if name.endswith(".gz") else "UTF-8 text"
        raise RepositoryError(f"{what} {name} is not {kind}: {e}") from e
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise RepositoryError(f"{what} {name} names no images (one name per line)")
    return names


def training_list(version_dir: str | os.PathLike, manifest: dict[str, Any]) -> list[str] | None:
    """The training images a version lists (names as written), None if it lists none; the
    file must match the manifest's sha256."""
    return image_list(version_dir, manifest, "training_images")


def validation_list(version_dir: str | os.PathLike, manifest: dict[str, Any]) -> list[str] | None:
    """The validation images a version lists (its threshold and calibration were chosen on
    them), None if it lists none; checked as training_list is."""
    return image_list(version_dir, manifest, "validation_images")


def image_list(
    version_dir: str | os.PathLike, manifest: dict[str, Any], key: str
) -> list[str] | None:
    """The names in the list the manifest's `key` (an IMAGE_LISTS key) names, None if none."""
    allowed, what = IMAGE_LISTS[key]
    entry = manifest.get(key)
    if entry is None:
        return None
    name = str(entry.get("file", "")) if isinstance(entry, dict) else ""
    path = Path(version_dir) / name
    if name not in allowed or not path.is_file():
        raise RepositoryError(f"{MANIFEST_NAME} names a {what} {name!r} that is not there")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.get("files", {}).get(name, {}).get("sha256"):
        raise RepositoryError(f"{name} does not match the sha256 in its {MANIFEST_NAME}")
    return parse_training_list(data, name, what)
