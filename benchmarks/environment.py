"""What every benchmark run records beside its figures: the machine, the libraries, the model
and the images, so that a number can be traced to where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pneumo_onnx.engine.offline import machine
from pneumo_onnx.engine.repository.manifest import sha256_file

ROOT = Path(__file__).resolve().parents[1]
SHARED_FULLRES = ROOT.parent / "shared" / "data" / "fullres"
SAMPLES_DIR = ROOT / "engine" / "samples"
# The default model (v2) and its Keras original: every row runs the same model. v1 is measured
# beside it in the model suite (issue 15: v2's model-only throughput against v1's, same run).
KERAS_MODEL = ROOT / "models" / "pneumonia_cnn_v2.keras"
MODEL_DIR = ROOT / "models" / "pneumonia" / "2"
PREVIOUS_MODEL_DIR = ROOT / "models" / "pneumonia" / "1"

# The engine's libraries, then the baselines' (machine facts: engine.offline.machine).
LIBRARIES = (
    *machine.ENGINE_LIBRARIES,
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "ai-edge-litert",
    "flask",
    "matplotlib",
    "ray",
)


def image_folder(chosen: str | None) -> Path:
    """The X-rays to run on: the user's folder, else ../shared's full-resolution set when
    present (development machines and CI), else the samples shipped in the package."""
    if chosen:
        return Path(chosen)
    return SHARED_FULLRES if SHARED_FULLRES.is_dir() else SAMPLES_DIR


def versions() -> dict[str, str]:
    """Installed versions of the libraries that can appear in a row (absent ones omitted)."""
    return machine.versions(LIBRARIES)


def model_facts(model_dir: Path = MODEL_DIR) -> dict[str, Any]:
    """sha256 of every model file the run can load: a figure belongs to exactly these bytes."""
    files = {p.name: sha256_file(p) for p in sorted(model_dir.glob("model*")) if p.is_file()}
    if (PREVIOUS_MODEL_DIR / "model.onnx").is_file():
        files["v1/model.onnx"] = sha256_file(PREVIOUS_MODEL_DIR / "model.onnx")
    if KERAS_MODEL.is_file():
        files[KERAS_MODEL.name] = sha256_file(KERAS_MODEL)
    return {"dir": str(model_dir.relative_to(ROOT)), "sha256": files}
