"""What every benchmark records beside its figures: the machine, the images, the output."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

SHARED_FULLRES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fullres"
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "engine" / "samples"


def image_folder(chosen: str | None) -> Path:
    """The X-rays to run on: the user's folder, else ../shared's full-resolution set when
    present (development machines and CI), else the samples shipped in the package."""
    if chosen:
        return Path(chosen)
    return SHARED_FULLRES if SHARED_FULLRES.is_dir() else SAMPLES_DIR


def machine() -> dict[str, Any]:
    """CPU model, cores and the SIMD flags that decide onnxruntime's kernels."""
    info = {"cpu": platform.processor() or "unknown", "cores": os.cpu_count(), "flags": []}
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            info["cpu"] = value.strip()
        elif key.strip() == "flags":
            wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")
            info["flags"] = [f for f in wanted if f in value.split()]
    info["python"] = platform.python_version()
    return info


def emit(result: dict[str, Any], json_path: str | None) -> None:
    """Print the result as JSON and, if asked, write it to a file (one file per run)."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
