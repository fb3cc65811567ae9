"""The models a server can serve, from a Triton-style repository (`REPO/<name>/<version>/`),
with run-time load, unload and rollback.

A version is only swapped in after it passed every gate: it is listed in its manifest and its
file matches the manifest's sha256, onnxruntime loads it, and a warm-up on the labelled sample
X-rays shipped with the package (3 NORMAL, 3 PNEUMONIA) shows a working classifier (see
`_warm_up` for the rule). A version that fails any gate never replaces the one being served.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumo_onnx.engine.errors import (
    ModelLoadError,
    NotFoundError,
    PneumoError,
    RepositoryError,
    UsageError,
)
from pneumo_onnx.engine.repository.manifest import MANIFEST_NAME
from pneumo_onnx.engine.repository.variants import VARIANT_FILES
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.metrics import roc_auc
from pneumo_onnx.engine.runtime.samples import sample_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One loaded, warmed-up model version."""

    name: str
    version: int
    engine: Engine
    sha256: str = field(default="")


class ModelRegistry:
    """Loaded models by name. `current(name)` is lock-free to read; loads are serialized."""

    def __init__(
        self,
        root: Path,
        device: str = "cpu",
        variant: str | None = None,
        threads: int | None = None,
        preprocessing: str = "auto",
    ) -> None:
        if not root.is_dir():
            raise UsageError(f"model repository {root.name}: no such folder")
        self.root = root
        self.device = device
        self.variant = variant or "fp32"
        self.threads = threads
        self.preprocessing = preprocessing
        self._served: dict[str, Served] = {}
        self._history: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    # --- what is there --------------------------------------------------------------------

    def names(self) -> list[str]:
        """Model folders: those holding at least one numbered version folder."""
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and self._versions(d.name))

    def versions(self, name: str) -> list[int]:
        versions = self._versions(name)
        if not versions:
            raise NotFoundError(f"no model named {name!r} in the repository")
        return versions

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: every version on disk and whether it is served."""
        rows = []
        for name in self.names():
            served = self._served.get(name)
            for v in self._versions(name):
                ready = served is not None and served.version == v
                rows.append(
                    {"name": name, "version": str(v), "state": "READY" if ready else "UNAVAILABLE"}
                )
        return rows

    def default_name(self) -> str:
        names = self.names()
        if not names:
            raise UsageError(f"model repository {self.root.name} holds no model versions")
        return names[0]

    # --- serving --------------------------------------------------------------------------

    def current(self, name: str) -> Served:
        served = self._served.get(name)
        if served is None:
            if name in self.names():
                raise NotFoundError(f"model {name!r} is not loaded")
            raise NotFoundError(f"no model named {name!r} in the repository")
        return served

    def served(self) -> list[Served]:
        return list(self._served.values())

    def load(self, name: str, version: int | None = None) -> Served:
        """Load `version` (default: the newest) and serve it once it passed every gate."""
        with self._lock:
            versions = self.versions(name)
            if version is None:
                version = versions[-1]
            if version not in versions:
                raise NotFoundError(f"model {name!r} has no version {version}")
            candidate = self._checked_load(name, version)
            previous = self._served.get(name)
            self._served[name] = candidate
            history = self._history.setdefault(name, [])
            if previous is not None and previous.version != version:
                history.append(previous.version)
            log.info("serving %s version %d", name, version)
            return candidate

    def unload(self, name: str) -> None:
        with self._lock:
            if self._served.pop(name, None) is None:
                raise NotFoundError(f"model {name!r} is not loaded")
            log.info("unloaded %s", name)

    def rollback(self, name: str) -> Served:
        """Serve again the version served before the current one. A rollback that fails (that
        version is refused now) changes nothing: the current version serves on, and the
        history is kept for the next try."""
        with self._lock:
            history = self._history.get(name) or []
            current = self._served.get(name)
            earlier = [v for v in history if current is None or v != current.version]
            if not earlier:
                raise UsageError(f"model {name!r} has no earlier served version to roll back to")
            version = earlier[-1]
            candidate = self._checked_load(name, version)
            while history.pop() != version:  # and the entries of the current one after it
                pass
            self._served[name] = candidate
            log.info("rolled %s back to version %d", name, version)
            return candidate

    # --- internals ------------------------------------------------------------------------

    def _versions(self, name: str) -> list[int]:
        folder = self.root / name
        if "/" in name or name.startswith(".") or not folder.is_dir():
            return []
        return sorted(int(d.name) for d in folder.iterdir() if d.is_dir() and d.name.isdigit())

    def _checked_load(self, name: str, version: int) -> Served:
        folder = self.root / name / str(version)
        if not (folder / MANIFEST_NAME).is_file():
            raise RepositoryError(
                f"{name}/{version} has no {MANIFEST_NAME}: the server only loads verified versions"
            )
        if not (folder / VARIANT_FILES[self.variant]).is_file():
            raise RepositoryError(f"{name}/{version} has no {self.variant} variant")
        try:
            # resolve() inside Engine.load checks the file against the manifest's sha256
            # (Manifest.check_file), and keeps the digest it checked: engine.model.sha256.
            engine = Engine.load(
                folder, self.device, self.variant, self.preprocessing, threads=self.threads
            )
        except PneumoError as e:
            raise RepositoryError(f"{name}/{version} refused: {e.message}") from e
        except Exception as e:  # onnxruntime's own load errors: a corrupt graph
            raise ModelLoadError(f"{name}/{version} refused: onnxruntime cannot load it") from e
        _warm_up(engine, f"{name}/{version}")
        return Served(name, version, engine, engine.model.sha256 or "")


# The warm-up rule on the 6 labelled samples. A real model may get one wrong, so no sample
# decides alone; the rule refuses what no working classifier does: scores that barely move
# (a constant or dead graph), a ranking of the samples worse than chance (an inverted graph:
# AUC < 0.5), or more than half of them misclassified at the model's threshold.
MIN_SPREAD = 0.05  # max - min of the six scores
MIN_AUC = 0.5


def _warm_up(engine: Engine, label: str) -> None:
    """Score the labelled samples at batch 1 and a full batch: a model that loads but cannot
    score, or scores garbage, is refused here rather than on the first patient."""
    samples = sample_images()
    try:
        images = [engine.preprocess(p) for p in samples]
        first = engine.scores(images[0][None])
        scores = engine.scores(np.stack(images))
    except PneumoError as e:
        raise ModelLoadError(f"{label} refused: warm-up failed: {e.message}") from e
    except Exception as e:
        raise ModelLoadError(f"{label} refused: warm-up failed ({type(e).__name__})") from e
    values = [float(s) for s in np.concatenate([first, scores])]
    if not all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in values):
        raise ModelLoadError(f"{label} refused: warm-up scores are not probabilities")
    contract = engine.contract
    truth = [p.parent.name == contract.positive_label for p in samples]
    found = values[1:]
    spread = max(found) - min(found)
    if spread < MIN_SPREAD:
        raise ModelLoadError(
            f"{label} refused: its scores on the {len(found)} labelled samples span only "
            f"{spread:.4f} (a constant output, under {MIN_SPREAD})"
        )
    auc = roc_auc(truth, found)
    if auc < MIN_AUC:
        raise ModelLoadError(
            f"{label} refused: it ranks the labelled samples worse than chance (AUC {auc:.2f}, "
            f"under {MIN_AUC}): an inverted or wrong model"
        )
    t = contract.threshold
    wrong = sum(
        (contract.decide(s)[0] == contract.positive_label) != y
        for s, y in zip(found, truth, strict=True)
    )
    if 2 * wrong > len(found):
        raise ModelLoadError(
            f"{label} refused: it misclassifies {wrong} of the {len(found)} labelled samples "
            f"at its threshold {t:g}"
        )
