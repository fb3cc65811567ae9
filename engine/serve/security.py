"""API keys and rate limits.

Keys come from the environment (`PNEUMO_API_KEYS`, comma-separated) and/or a file (one key
per line, `#` comments). They are compared in constant time, and only a short fingerprint of
a key ever reaches logs or metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from pathlib import Path

from engine.errors import UsageError

API_KEY_ENV = "PNEUMO_API_KEYS"
API_KEY_HEADER = "X-API-Key"


def load_api_keys(key_file: Path | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """Every configured key; an empty list means authentication is off."""
    env = os.environ if environ is None else environ
    keys = [k.strip() for k in env.get(API_KEY_ENV, "").split(",") if k.strip()]
    if key_file is not None:
        try:
            lines = Path(key_file).read_text().splitlines()
        except OSError as e:
            name = Path(key_file).name
            raise UsageError(f"cannot read the API key file {name}: {e.strerror}") from e
        keys += [s for line in lines if (s := line.split("#", 1)[0].strip())]
    short = [k for k in keys if len(k) < 16]
    if short:
        raise UsageError(f"API keys must be at least 16 characters ({len(short)} too short)")
    return keys


def fingerprint(key: str) -> str:
    """What logs and rate limits see instead of the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def match(self, presented: str | None) -> str | None:
        """The fingerprint of the matching key, or None. Compares against every key in
        constant time, so timing reveals neither which key nor how much of it matched."""
        if not presented:
            return None
        given = presented.encode()
        found = None
        for key in self._keys:
            if hmac.compare_digest(key, given):
                found = fingerprint(key.decode())
        return found


class RateLimiter:
    """A token bucket per client: `rate` requests per second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, client: str) -> int:
        """0 if the request may go on, else the whole seconds to wait (for Retry-After)."""
        if not self.enabled:
            return 0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > 100_000:  # forget idle clients rather than grow forever
                self._buckets = {c: v for c, v in self._buckets.items() if now - v[1] < 60}
            return max(1, math.ceil((1.0 - tokens) / self.rate))
