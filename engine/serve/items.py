"""What a request asks the scoring path to score: items (an encoded image or a V2 tensor), the
name each is called in error messages, and what can be learnt of them before decoding (sha256
for the cache and the log; the image header for the decode budgets)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import ImageError, PneumoError, first_line
from engine.runtime.decoders import Header, describe, read_header


@dataclass(frozen=True)
class Item:
    """One image to score: an encoded file (`data`, called `name` in error messages) or a
    tensor already in the model's input layout (`tensor`, from V2 FP32)."""

    data: bytes | None = None
    tensor: np.ndarray | None = None
    name: str | None = None


def inspect_items(items: Sequence[Item]) -> tuple[list[str], list[Header | PneumoError | None]]:
    """For each item: the sha256 of its bytes (the file, or the tensor's float32 bytes), and
    its image header (None for a tensor), or the error that refuses it without decoding."""
    digests: list[str] = []
    headers: list[Header | PneumoError | None] = []
    for item in items:
        if item.data is None:
            digests.append(hashlib.sha256(np.ascontiguousarray(item.tensor).tobytes()).hexdigest())
            headers.append(None)
            continue
        digests.append(hashlib.sha256(item.data).hexdigest())
        name = describe(named(item))
        try:
            headers.append(read_header(item.data, name))
        except PneumoError as e:
            headers.append(e)
        except Exception as e:  # a header parser's own bug on a hostile file: this item only
            headers.append(ImageError(f"{name} cannot be read: {first_line(e)}"))
    return digests, headers


def named(item: Item) -> bytes | io.BytesIO:
    """Bytes that error messages call by the client's file name (its last part, shortened)."""
    assert item.data is not None
    if not item.name:
        return item.data
    stream = io.BytesIO(item.data)
    stream.name = item.name.replace("\\", "/").rsplit("/", 1)[-1][:80] or "upload"
    return stream
