"""What a request asks the scoring path to score: items (an encoded image or a V2 tensor), the
name each is called in error messages, and their sha256 (for the cache and the log)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Item:
    """One image to score: an encoded file (`data`, called `name` in error messages) or a
    tensor already in the model's input layout (`tensor`, from V2 FP32)."""

    data: bytes | None = None
    tensor: np.ndarray | None = None
    name: str | None = None


# Items up to this many bytes in all are hashed on the event loop (~0.5 ms at most): a hand-off
# to a thread and back costs more than hashing one X-ray.
INLINE_HASH_BYTES = 2**20


def hashed_inline(items: Sequence[Item]) -> bool:
    """Whether `items` are few bytes enough to hash where they are."""
    size = sum(len(i.data) if i.data is not None else _nbytes(i.tensor) for i in items)
    return size <= INLINE_HASH_BYTES


def _nbytes(tensor: np.ndarray | None) -> int:
    return 0 if tensor is None else int(tensor.nbytes)


def digests_of(items: Sequence[Item]) -> list[str]:
    """The sha256 of each item's bytes (the file, or the tensor's float32 bytes): the result
    cache's key and the prediction log's image id."""
    return [
        hashlib.sha256(
            item.data if item.data is not None else np.ascontiguousarray(item.tensor).tobytes()
        ).hexdigest()
        for item in items
    ]
