"""A bounded LRU of results, so a repeated image is answered without decoding or scoring it
again. The key holds everything the answer depends on: image bytes (sha256), the model that
scored it (name, version, variant) and the threshold."""

from __future__ import annotations

import threading
from collections import OrderedDict

from pneumo_onnx.engine.runtime.results import Scored

CacheKey = tuple[str, str, str, str, float]


class ResultCache:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[CacheKey, Scored] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> Scored | None:
        """A copy of the cached result, or None (also when the cache is disabled)."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                return None
            self._items.move_to_end(key)
            return Scored(**value)

    def put(self, key: CacheKey, value: Scored) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._items[key] = Scored(**value)
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
