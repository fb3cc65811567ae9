"""Images, patients and the patient-grouped folds of model v2's training data.

Kermany et al.'s train split holds several X-rays per child; a split that is random over images
puts one child on both sides and flatters the model (v1: 0.994 on its own validation split,
0.939 on external data). Every split here is therefore over patients, with the patient id read
from the file name. Decoding happens once: the reference tensors (uint8, exact) are cached.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.runtime.listing import list_images
from pneumo_onnx.engine.runtime.preprocess import PREPROCESSORS

# person1000_bacteria_2931.jpeg, person447_virus_921_1.jpeg -> person1000, person447;
# IM-0125-0001.jpeg, IM-0429-0001-0002.jpeg -> IM-0125, IM-0429;
# NORMAL2-IM-0468-0001.jpeg -> NORMAL2-IM-0468.
_PATIENT = re.compile(r"^(person\d+)_(?:bacteria|virus)_|^((?:NORMAL\d+-)?IM-\d+)-\d+")


@dataclass(frozen=True)
class Item:
    """One image: path relative to the data folder, label (0/1) and patient id."""

    path: str
    label: int
    patient: str


def patient_id(filename: str) -> str:
    """The patient an image belongs to, from Kermany et al.'s file naming."""
    m = _PATIENT.match(filename)
    if m is None:
        raise ValueError(f"cannot read a patient id from {filename!r}: unknown name pattern")
    return m.group(1) or m.group(2)


def list_items(data: Path, contract: Contract) -> list[Item]:
    """Every image under data/<negative label>/ and data/<positive label>/, in a fixed order.

    Raises if a patient id appears under both labels: the split below relies on each patient
    belonging to one class (true of this dataset's naming)."""
    items: list[Item] = []
    for label, name in enumerate((contract.negative_label, contract.positive_label)):
        paths = list_images(data / name, recursive=False)
        if not paths:
            raise SystemExit(f"expected images in {data / name}, found none")
        items += [Item(f"{name}/{p.name}", label, patient_id(p.name)) for p in paths]
    labels: dict[str, int] = {}
    for item in items:
        if labels.setdefault(item.patient, item.label) != item.label:
            raise SystemExit(f"patient {item.patient} has images under both labels")
    return items


def grouped_folds(
    items: Sequence[Item], k: int, seed: int, fold0_patients: Iterable[str] = ()
) -> np.ndarray:
    """A fold number (0..k-1) per item: whole patients per fold, each class spread evenly.

    Patients in `fold0_patients` are put in fold 0 first (the final validation fold holds the
    full-resolution subset). The others, per class, in a seeded random order then largest
    first, each go to the fold of that class with the fewest images so far.
    """
    forced = set(fold0_patients)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for label in (0, 1):
        sizes: dict[str, int] = {}
        for item in items:
            if item.label == label:
                sizes[item.patient] = sizes.get(item.patient, 0) + 1
        counts = np.zeros(k, dtype=int)
        for patient in sorted(forced & sizes.keys()):
            fold_of[patient] = 0
            counts[0] += sizes[patient]
        rest = [p for p in sorted(sizes) if p not in forced]
        order = [rest[i] for i in rng.permutation(len(rest))]
        order.sort(key=lambda p: -sizes[p])  # stable: random among patients of equal size
        for patient in order:
            fold = int(np.argmin(counts))
            fold_of[patient] = fold
            counts[fold] += sizes[patient]
    return np.array([fold_of[item.patient] for item in items])


def split_counts(items: Sequence[Item], names: tuple[str, str]) -> dict[str, dict[str, int]]:
    """Images and patients per class, for the training report."""
    out: dict[str, dict[str, int]] = {}
    for label, name in enumerate(names):
        chosen = [item for item in items if item.label == label]
        out[name] = {"images": len(chosen), "patients": len({i.patient for i in chosen})}
    return out


def load_pixels(
    root: Path, paths: Sequence[str], contract: Contract, preprocessing: str = "reference"
) -> np.ndarray:
    """Images as one uint8 NHWC array through the engine's own preprocessing: exact, since
    both paths produce a uint8 image divided by 255, and a quarter of float32's memory."""
    prepare = PREPROCESSORS[preprocessing]

    def one(path: str) -> np.ndarray:
        return np.rint(prepare(root / path, contract) * 255).astype(np.uint8)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return np.stack(list(pool.map(one, paths)))


def cached_pixels(
    root: Path,
    paths: Sequence[str],
    contract: Contract,
    cache_dir: Path,
    preprocessing: str = "reference",
) -> np.ndarray:
    """load_pixels, stored once under cache_dir (keyed by the file list and preprocessing)."""
    key = hashlib.sha256(
        "\n".join([preprocessing, str(contract.input), *paths]).encode()
    ).hexdigest()[:16]
    cache = cache_dir / f"pixels-{preprocessing}-{key}.npy"
    if cache.exists():
        return np.load(cache)
    x = load_pixels(root, paths, contract, preprocessing)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    return x
