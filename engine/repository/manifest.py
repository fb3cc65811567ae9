"""The manifest of one model version in a repository: THE typed, versioned record `convert`
writes and every reader (engine, server, CLI, validate, training scripts) reads: files with
their hashes and sizes, each variant's gate figures and, for reduced-precision ones, the layers
kept in fp32 and their share of the multiply-adds (variant_figures.py), the contract and where
its threshold came from, provenance, and the figures the conversion measured. Readers ask the
Manifest (`sha256`, `check_file`, `variants`, ...), never the JSON.

Layout (Triton-compatible): REPO/<name>/config.pbtxt, REPO/<name>/<version>/{model.onnx, ...,
manifest.json}. `format` names the layout ("pneumo-model-repository/1"); a reader refuses a
format it does not know ("upgrade pneumo-onnx") rather than guess at its meaning. Within a
format, facts may be added (old readers ignore keys they do not know); changing what a key
means takes a new format. Only `format` and `files` are required: a hand-written manifest
listing files and their hashes is a valid one, and so is every manifest older code wrote.

A version may also list the images it was trained on (`pneumo convert --training-list`): a
text file, one dataset-relative name per line, plain (`training_images.txt`) or gzipped
(`training_images.txt.gz`), named by the manifest's `training_images` entry and hashed in its
`files`, so `pneumo evaluate` can say when it is shown the model's own training data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import ContractError, RepositoryError
from pneumo_onnx.engine.repository.fields import (
    Bad,
    Fields,
    figures,
    file_name,
    number,
    one_of,
    parse,
    positive,
    table_of,
    text,
    timestamp,
)
from pneumo_onnx.engine.repository.sections import (
    CamRecord,
    CheckRecord,
    FastPathFigures,
    Figures,
    FileEntry,
    Parity,
    Preprocessing,
    ProbeImages,
    SkippedVariant,
    Source,
    TrainingImages,
)
from pneumo_onnx.engine.repository.variants import VARIANTS

MANIFEST_NAME = "manifest.json"
FORMAT_FAMILY = "pneumo-model-repository"
FORMAT = f"{FORMAT_FAMILY}/1"  # what this pneumo-onnx writes
READABLE_FORMATS = (FORMAT,)
TRAINING_LISTS = ("training_images.txt", "training_images.txt.gz")  # plain, gzipped
# Where the contract's threshold came from: `pneumo convert --threshold` (stated) or the
# contract's default, 0.5 (default). Recorded since this field exists; None before.
ThresholdSource = Literal["stated", "default"]
THRESHOLD_SOURCES: tuple[ThresholdSource, ...] = ("stated", "default")


@dataclass(frozen=True)
class Manifest:
    """One version's manifest. Optional facts are None where the manifest does not record
    them (older conversions, hand-written manifests); `to_dict` leaves those out."""

    files: Mapping[str, FileEntry] = field(default_factory=dict)
    name: str | None = None
    version: int | None = None
    contract: Contract | None = None
    preprocessing: Preprocessing | None = None
    class_activation_map: CamRecord | None = None
    source: Source | None = None
    tools: Mapping[str, str] | None = None  # package -> version, at conversion
    parity: Parity | None = None
    converted: str | None = None  # ISO 8601 time of the conversion
    training_images: TrainingImages | None = None
    checks: tuple[CheckRecord, ...] | None = None
    probe_images: ProbeImages | None = None
    labelled: Figures | None = None  # the labelled_auc check's figures
    expected_scores: Figures | None = None  # the expected_scores check's figures
    skipped_variants: Mapping[str, SkippedVariant] | None = None  # variant key -> why
    conversion_seconds: float | None = None
    threshold_source: ThresholdSource | None = None
    format: str = FORMAT

    @property
    def variants(self) -> dict[str, FileEntry]:
        """The variants this version holds (fp32 included), key -> file entry, in the order of
        the variant table: each entry's sha256, size, gate figures and, for reduced-precision
        ones, its fp32 layers (`entry.precision`, `entry.fp32_mac_share`)."""
        return {k: self.files[v.filename] for k, v in VARIANTS.items() if v.filename in self.files}

    def sha256(self, name: str) -> str:
        """The recorded sha256 of the version's file `name`: THE lookup of a file's hash.
        RepositoryError if the manifest does not list it."""
        entry = self.files.get(name)
        if entry is None:
            raise RepositoryError(f"{name} is not listed in its {MANIFEST_NAME}")
        return entry.sha256

    @property
    def fast_vs_reference(self) -> FastPathFigures | None:
        """The measured fast-path figures the engine's `auto` decides on, if recorded."""
        return self.preprocessing.fast_vs_reference if self.preprocessing else None

    def check_file(self, path: str | os.PathLike[str], data: bytes | None = None) -> str:
        """The sha256 of the version's file at `path` (of `data`, its bytes, when already
        read), once it matches this manifest: THE check before a version's file is trusted.
        RepositoryError if the manifest does not list the file or its sha256 differs."""
        name = Path(path).name
        recorded = self.sha256(name)
        try:
            digest = sha256_file(path) if data is None else hashlib.sha256(data).hexdigest()
        except OSError as e:
            raise RepositoryError(f"cannot read {name}: {e.strerror or e}") from e
        if digest != recorded:
            raise RepositoryError(f"{name} does not match the sha256 in its {MANIFEST_NAME}")
        return digest

    # --- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, keys in the order `convert` writes them; None facts left out."""
        sections: dict[str, Any] = {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "contract": self.contract.to_dict() if self.contract else None,
            "preprocessing": _json(self.preprocessing),
            "class_activation_map": _json(self.class_activation_map),
            "source": _json(self.source),
            "tools": None if self.tools is None else dict(self.tools),
            "parity": _json(self.parity),
            "converted": self.converted,
            "training_images": _json(self.training_images),
            "checks": None if self.checks is None else [c.to_dict() for c in self.checks],
            "probe_images": _json(self.probe_images),
            "labelled": None if self.labelled is None else dict(self.labelled),
            "expected_scores": None if self.expected_scores is None else dict(self.expected_scores),
            "skipped_variants": None
            if self.skipped_variants is None
            else {k: v.to_dict() for k, v in self.skipped_variants.items()},
            "conversion_seconds": self.conversion_seconds,
            "threshold_source": self.threshold_source,
            "files": {name: entry.to_dict() for name, entry in self.files.items()},
        }
        return {k: v for k, v in sections.items() if v is not None}

    def to_json(self) -> str:
        """manifest.json's text: what writers put on disk."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: object, where: str = MANIFEST_NAME) -> Manifest:
        """The manifest in `data` (parsed manifest.json; `where` names it in messages). A format
        this pneumo-onnx does not read is refused first; then one RepositoryError lists every
        problem found."""
        fmt = data.get("format") if isinstance(data, Mapping) else None
        if not isinstance(fmt, str) or not fmt.startswith(f"{FORMAT_FAMILY}/"):
            raise RepositoryError(f"{where} is not a {FORMAT} manifest")
        if fmt not in READABLE_FORMATS:
            raise RepositoryError(
                f"{where} has format {fmt!r}, and this pneumo-onnx reads "
                f"{', '.join(READABLE_FORMATS)}: upgrade pneumo-onnx"
            )
        return parse(cls._read, data, where)

    @classmethod
    def _read(cls, f: Fields) -> Manifest:
        files = f.entries("files", FileEntry.read)
        if files is None:
            f.missing("files")
        for name in files or {}:
            try:
                file_name(name)
            except Bad as e:
                f.problems.append(f"files: {name!r} must be {e.expected}")
        checks = f.optional("checks", _list)
        return cls(
            format=f.value("format", text, FORMAT),
            files=files or {},
            name=f.optional("name", text),
            version=f.optional("version", positive),
            contract=f.optional("contract", _contract),
            preprocessing=f.section("preprocessing", Preprocessing.read),
            class_activation_map=f.section("class_activation_map", CamRecord.read),
            source=f.section("source", Source.read),
            tools=f.optional("tools", table_of(text)),
            parity=f.section("parity", Parity.read),
            converted=f.optional("converted", timestamp),
            training_images=f.section("training_images", TrainingImages.read),
            checks=None
            if checks is None
            else tuple(
                CheckRecord.read(Fields(c, f"checks[{i}]", f.problems))
                for i, c in enumerate(checks)
            ),
            probe_images=f.section("probe_images", ProbeImages.read),
            labelled=f.optional("labelled", figures),
            expected_scores=f.optional("expected_scores", figures),
            skipped_variants=f.entries("skipped_variants", SkippedVariant.read),
            conversion_seconds=f.optional("conversion_seconds", number),
            threshold_source=_threshold_source(
                f.optional("threshold_source", one_of(*THRESHOLD_SOURCES))
            ),
        )


def _threshold_source(value: str | None) -> ThresholdSource | None:
    return next((s for s in THRESHOLD_SOURCES if s == value), None)


def _json(section: Any) -> dict[str, Any] | None:
    return None if section is None else section.to_dict()


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise Bad("a JSON list")
    return value


def _contract(value: object) -> Contract:
    if not isinstance(value, Mapping):
        raise Bad("a JSON object (a model contract)")
    try:
        return Contract.from_dict(value)
    except ContractError as e:
        raise Bad(e.message, whole=True) from e


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(version_dir: str | os.PathLike[str]) -> Manifest:
    """The manifest of the version in `version_dir`; its errors name the model and version
    folder ("pneumonia/2/manifest.json is malformed: ..."), as a user finds them on disk."""
    path = Path(version_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise RepositoryError(f"no {MANIFEST_NAME} in {Path(version_dir).name}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RepositoryError(f"cannot read {MANIFEST_NAME}: {e}") from e
    return Manifest.from_dict(data, f"{path.parent.parent.name}/{path.parent.name}/{path.name}")


def verify_files(version_dir: str | os.PathLike[str], manifest: Manifest) -> list[str]:
    """Every mismatch between the manifest and the files on disk (empty list: all good)."""
    problems = []
    root = Path(version_dir)
    for name, entry in sorted(manifest.files.items()):
        path = root / name
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing")
            continue
        size = path.stat().st_size
        if size != entry.size:  # cheaper than hashing, and says more
            problems.append(f"{name}: {size} bytes on disk, manifest says {entry.size}")
            continue
        try:
            manifest.check_file(path)
        except RepositoryError as e:
            problems.append(e.message)
    return problems


def parse_training_list(data: bytes, name: str) -> list[str]:
    """The image names of a training list (gzipped if `name` ends in .gz): one per line, blank
    lines skipped; RepositoryError if it is not such a list."""
    try:
        text = (gzip.decompress(data) if name.endswith(".gz") else data).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        kind = "gzipped UTF-8 text" if name.endswith(".gz") else "UTF-8 text"
        raise RepositoryError(f"training list {name} is not {kind}: {e}") from e
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise RepositoryError(f"training list {name} names no images (one name per line)")
    return names


def training_list(version_dir: str | os.PathLike[str], manifest: Manifest) -> list[str] | None:
    """The training images a version lists (names as written), None if it lists none; the
    file must match the manifest's sha256."""
    if manifest.training_images is None:
        return None
    name = manifest.training_images.file
    path = Path(version_dir) / name
    if name not in TRAINING_LISTS or not path.is_file():
        raise RepositoryError(f"{MANIFEST_NAME} names a training list {name!r} that is not there")
    data = path.read_bytes()
    manifest.check_file(path, data)
    return parse_training_list(data, name)
