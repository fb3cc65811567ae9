"""The sample X-rays shipped inside the package (see samples/README.md for their licence)."""

from __future__ import annotations

from pathlib import Path

from pneumo_onnx.engine.runtime.listing import list_images

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"  # engine/samples, package data


def sample_images() -> list[Path]:
    """All shipped sample images, NORMAL first, sorted: a stable order for probes and demos."""
    return list_images(SAMPLES_DIR)
