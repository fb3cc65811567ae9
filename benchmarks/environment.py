"""What every benchmark run records beside its figures: the machine, the libraries, the model
and the images, so that a number can be traced to where it came from."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from engine.repository.manifest import sha256_file

ROOT = Path(__file__).resolve().parents[1]
SHARED_FULLRES = ROOT.parent / "shared" / "data" / "fullres"
SAMPLES_DIR = ROOT / "engine" / "samples"
KERAS_MODEL = ROOT / "models" / "pneumonia_cnn.keras"
MODEL_DIR = ROOT / "models" / "pneumonia" / "1"

SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")
LIBRARIES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "pillow",
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


def cpu() -> dict[str, Any]:
    """CPU model, vendor/family, cores, clock and the SIMD flags that decide the kernels."""
    info: dict[str, Any] = {
        "model": platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "flags": [],
    }
    path = Path("/proc/cpuinfo")
    lines = path.read_text().splitlines() if path.exists() else []
    mhz: list[float] = []
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    for line in lines:
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name":
            info["model"] = value
        elif key == "vendor_id":
            info["vendor"] = value
        elif key == "cpu family":
            info["family"] = int(value)
        elif key == "model":
            info["model_number"] = int(value)
        elif key == "cpu MHz":
            mhz.append(float(value))
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
            cores.add((physical, core))
        elif key == "flags" and not info["flags"]:
            present = set(value.split())
            info["flags"] = [f for f in SIMD_FLAGS if f in present]
    info["physical_cores"] = len(cores) or info["logical_cpus"]
    info["mhz"] = round(max(mhz), 1) if mhz else None
    return info


def gpu() -> dict[str, Any] | None:
    """GPU name and driver from nvidia-smi; None where there is no NVIDIA GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"nvidia-smi failed: {e}"}
    rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines()]
    return {
        "count": len(rows),
        "name": rows[0][0] if rows else None,
        "driver": rows[0][1] if rows else None,
        "memory": rows[0][2] if rows and len(rows[0]) > 2 else None,
    }


def versions() -> dict[str, str]:
    """Installed versions of the libraries that can appear in a row (absent ones omitted)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, Any]:
    return {"host": platform.node(), "os": platform.platform(), "cpu": cpu(), "gpu": gpu()}


def model_facts(model_dir: Path = MODEL_DIR) -> dict[str, Any]:
    """sha256 of every model file the run can load: a figure belongs to exactly these bytes."""
    files = {p.name: sha256_file(p) for p in sorted(model_dir.glob("model*")) if p.is_file()}
    if KERAS_MODEL.is_file():
        files[KERAS_MODEL.name] = sha256_file(KERAS_MODEL)
    return {"dir": str(model_dir.relative_to(ROOT)), "sha256": files}


def prepare_cuda() -> None:
    """Load the CUDA/cuDNN libraries that pip wheels provide (onnxruntime >= 1.21), so a
    CUDA session finds them without LD_LIBRARY_PATH; a no-op on older onnxruntime."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls") and "CUDAExecutionProvider" in ort.get_available_providers():
        ort.preload_dlls()
