"""Which files of a folder are images: one listing, and one "no images" error for every front
door (batch, evaluate, Ray, conversion probes)."""

from __future__ import annotations

import os
from pathlib import Path

from pneumo_onnx.engine.errors import UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})


def list_images(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files under a folder, sorted, by extension (an empty list if there are none)."""
    root = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def find_images(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """The images of a folder the user named, or a UsageError that says what is wrong with it
    (named as the user typed it; with a --recursive hint when only subfolders hold images)."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{folder}: no such folder")
    images = list_images(root, recursive)
    if not images:
        nested = not recursive and bool(list_images(root, recursive=True))
        hint = ": its subfolders hold some, add --recursive" if nested else ""
        raise UsageError(
            f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){hint}"
        )
    return images
