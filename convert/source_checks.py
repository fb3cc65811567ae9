"""Recognise the ways a model file arrives broken, before any loader reads it.

Keras and TensorFlow report these with messages that point elsewhere ("File not found" for a
truncated `.keras` zip or a Git LFS pointer, "Read less bytes than requested" for a SavedModel
whose weights are a pointer). Each check here says what was expected, what arrived and what to
do. No TensorFlow: these run first, and in the unit tests.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from pathlib import Path

from pneumo_onnx.engine.errors import ModelLoadError

LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
LFS_MAX_BYTES = 1024  # the Git LFS spec: pointer files are under 1024 bytes
_LFS_FIELD = re.compile(rb"^(oid sha256:[0-9a-f]+|size \d+)$", re.M)
_SHARD = re.compile(r"^variables\.data-(\d+)-of-(\d+)$")
KERAS_MEMBERS = ("config.json", "model.weights.h5")
HTML_SNIFF_BYTES = 4096
_TITLE = re.compile(rb"<title[^>]*>([^<]{1,200})</title>", re.I)


def check_file(p: Path) -> None:
    """A model file: not a Git LFS pointer nor a web page; a `.keras` (zip) file complete and
    readable."""
    check_not_lfs_pointer(p, "the model")
    check_not_web_page(p, "the model")
    with p.open("rb") as f:
        head = f.read(4)
    if p.suffix.lower() == ".keras" or head == b"PK\x03\x04":
        check_keras_zip(p)


def check_not_lfs_pointer(p: Path, what: str) -> None:
    """Git LFS leaves a small text pointer where the file should be when a repository is
    cloned without `git lfs` (or downloaded as a source archive)."""
    size = p.stat().st_size
    if size >= LFS_MAX_BYTES:
        return
    data = p.read_bytes()
    if not data.startswith(LFS_MAGIC):
        return
    fields = {m.split(b" ")[0]: m.split(b" ", 1)[1] for m in _LFS_FIELD.findall(data)}
    real = fields.get(b"size", b"").decode()
    oid = fields.get(b"oid", b"").decode().removeprefix("sha256:")[:12]
    stands_for = f"the real {int(real) / 1e6:.1f} MB file, sha256 {oid}..." if real else "it"
    raise ModelLoadError(
        f"{p.name} is a Git LFS pointer, not {what}: a {size}-byte text file standing for "
        f"{stands_for}. The repository was cloned or downloaded without Git LFS: run "
        "`git lfs install && git lfs pull` in the clone (or download the file itself), then "
        "convert again"
    )


def check_not_web_page(p: Path, what: str) -> None:
    """A download link that needed a sign-in, a cookie or a virus-scan confirmation (Google
    Drive, Kaggle, a wiki) saves the HTML page it answered with under the model's name."""
    with p.open("rb") as f:
        head = f.read(HTML_SNIFF_BYTES)
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not start.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or (
        start.startswith(b"<?xml") and b"<html" not in start
    ):
        return
    title = _TITLE.search(head)
    named = f", titled {title.group(1).decode('utf-8', 'replace').strip()[:80]!r}" if title else ""
    raise ModelLoadError(
        f"{p.name} is an HTML page ({p.stat().st_size} bytes{named}), not {what}: a download "
        "link that needed a sign-in or a confirmation saves the web page it showed instead of "
        "the file. Open the link in a browser (or use the site's API or CLI) and download the "
        "file itself, then convert again"
    )


def check_keras_zip(p: Path) -> None:
    """A `.keras` file is a zip holding config.json and model.weights.h5 (Keras >= 2.12)."""
    size = p.stat().st_size
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            damaged = _first_damaged(z)
    except zipfile.BadZipFile as e:
        raise ModelLoadError(
            f"{p.name} is truncated or is not a complete zip archive ({size} bytes, no zip "
            "directory at its end): expected a .keras zip (config.json, model.weights.h5). An "
            "interrupted download or copy? Fetch it again; `unzip -t` checks a copy"
        ) from e
    if damaged is not None:
        raise ModelLoadError(
            f"{p.name} is damaged: its member {damaged} does not read back (CRC or compressed "
            "data; an interrupted or corrupted copy?). Fetch it again; `unzip -t` checks a copy"
        )
    missing = [m for m in KERAS_MEMBERS if m not in names]
    if missing:
        raise ModelLoadError(
            f"{p.name} is a zip archive but not a Keras model: expected "
            f"{' and '.join(KERAS_MEMBERS)}, it holds {', '.join(names[:6]) or 'nothing'}"
        )


def _first_damaged(z: zipfile.ZipFile) -> str | None:
    """The first member whose data does not read back (CRC or deflate stream), if any."""
    for info in z.infolist():
        try:
            with z.open(info) as f:
                while f.read(1 << 20):
                    pass
        except (zipfile.BadZipFile, zlib.error, EOFError):
            return info.filename
    return None


def keras_version(p: Path) -> str | None:
    """The Keras version that wrote a `.keras` file (its metadata.json), if it says."""
    try:
        with zipfile.ZipFile(p) as z:
            meta = json.loads(z.read("metadata.json"))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None
    version = meta.get("keras_version") if isinstance(meta, dict) else None
    return str(version) if version else None


def check_savedmodel(p: Path) -> None:
    """A SavedModel folder: saved_model.pb and its weights (variables/variables.index and
    every variables.data shard), none of them a Git LFS pointer."""
    if not (p / "saved_model.pb").is_file():
        raise ModelLoadError(f"{p.name} is a folder but not a SavedModel (no saved_model.pb)")
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        check_not_lfs_pointer(f, f"part of the SavedModel {p.name}")
        check_not_web_page(f, f"part of the SavedModel {p.name}")
    variables = p / "variables"
    shards = (
        sorted(f.name for f in variables.glob("variables.data-*")) if variables.is_dir() else []
    )
    expected = (
        "variables/variables.index and variables/variables.data-00000-of-00001 (or more shards)"
    )
    what_to_do = (
        "copy the whole SavedModel folder as TensorFlow wrote it (saved_model.pb alone holds "
        "no weights)"
    )
    if not (variables / "variables.index").is_file() or not shards:
        found = ", ".join(f.name for f in variables.iterdir()) if variables.is_dir() else ""
        raise ModelLoadError(
            f"SavedModel {p.name} is missing its weights: expected {expected} beside "
            f"saved_model.pb, found {'variables/ holding ' + found if found else 'none'}: "
            f"{what_to_do}"
        )
    counts = {m.group(2) for m in map(_SHARD.match, shards) if m}
    total = int(counts.pop()) if len(counts) == 1 else 0
    absent = [
        f"variables.data-{i:05d}-of-{total:05d}"
        for i in range(total)
        if f"variables.data-{i:05d}-of-{total:05d}" not in shards
    ]
    if absent:
        raise ModelLoadError(
            f"SavedModel {p.name} is missing part of its weights: {', '.join(absent)} "
            f"(variables/ holds {', '.join(shards)}): {what_to_do}"
        )
