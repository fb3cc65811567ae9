"""What a benchmark figure was measured on: the CPU (model, cores, SIMD flags, clock), the GPU,
the load on the machine and the library versions. A figure without these cannot be compared
with another; `pneumo bench` and the checkout's `python -m benchmarks` both record them."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")
# The TensorFlow-free engine's libraries; the checkout's harness adds its baselines' own.
ENGINE_LIBRARIES = ("pneumo-onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow")


def usable_cores() -> int:
    """The processors this process may run on (its affinity), which a container or `taskset`
    can make fewer than the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu() -> dict[str, Any]:
    """CPU model, vendor/family, cores, clock and the SIMD flags that decide the kernels."""
    info: dict[str, Any] = {
        "model": platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cores(),
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


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on a shared machine moves every figure."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # Windows has no load average
        return None


def versions(libraries: tuple[str, ...] = ENGINE_LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries that can appear in a figure (absent ones omitted)."""
    found = {"python": platform.python_version()}
    for name in libraries:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu(),
        "gpu": gpu(),
        "load_average": load_average(),
    }
