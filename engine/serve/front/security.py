"""API keys and rate limits.

User keys come from the environment (`PNEUMO_API_KEYS`, comma-separated) and/or a file (one
key per line, `#` comments); admin keys, the only ones that may load, unload or roll back model
versions, from `PNEUMO_ADMIN_KEYS` and/or `--admin-key-file`. Keys are compared in constant
time, and only a short fingerprint of a key ever reaches logs, metrics or the job store.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from pneumo_onnx.engine.errors import UsageError

API_KEY_ENV = "PNEUMO_API_KEYS"
ADMIN_KEY_ENV = "PNEUMO_ADMIN_KEYS"
API_KEY_HEADER = "X-API-Key"
MAX_BUCKETS = 10_000  # clients the rate limiter remembers; the least recently seen go first


def load_api_keys(
    key_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    variable: str = API_KEY_ENV,
) -> list[str]:
    """Every key configured in `variable` and `key_file`; an empty list means none."""
    env = os.environ if environ is None else environ
    keys = [k.strip() for k in env.get(variable, "").split(",") if k.strip()]
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
    """User keys (scoring, jobs, reports) and admin keys (all of that, plus repository
    control). Authentication is on as soon as any key is configured."""

    def __init__(self, keys: list[str], admin: list[str] | None = None) -> None:
        self._keys = [(k.encode(), False) for k in keys] + [(k.encode(), True) for k in admin or ()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def has_admin(self) -> bool:
        return any(admin for _, admin in self._keys)

    def match(self, presented: str | None) -> tuple[str, bool] | None:
        """(fingerprint, is admin) of the matching key, or None. Compares against every key
        in constant time, so timing reveals neither which key nor how much of it matched."""
        if not presented:
            return None
        given = presented.encode()
        found = None
        for key, admin in self._keys:
            if hmac.compare_digest(key, given):
                found = (fingerprint(key.decode()), admin)
        return found


class RateLimiter:
    """A token bucket per client: `rate` requests per second on average, bursts of `burst`.
    At most `max_clients` buckets are kept: the least recently seen client is forgotten first
    (it comes back with a full bucket, which it would have had by then anyway if idle)."""

    def __init__(self, rate: float, burst: int, max_clients: int = MAX_BUCKETS) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_clients = max(1, max_clients)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, client: str) -> int:
        """0 if the request may go on, else the whole seconds to wait (for Retry-After)."""
        if not self.enabled:
            return 0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)  # most recent last
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return 0 if allowed else max(1, math.ceil((1.0 - tokens) / self.rate))
