"""The bytes of request bodies being received or handled at once, all front doors together
(`--max-inflight-mb`): the HTTP gate charges each chunk as it arrives, the gRPC door each
message as grpc hands it over. A request alone is always let in (up to the upload limit, which
each door enforces itself): only one that would join others past the budget is refused."""

from __future__ import annotations

import threading


class InflightBytes:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()  # the gRPC door may run on a thread of its own

    def charge(self, nbytes: int, own: int = 0) -> str | None:
        """Take `nbytes` more for a request already holding `own`: None when taken, else why
        not (the server is busy)."""
        with self._lock:
            if self.held - own > 0 and self.held + nbytes > self.limit:
                return (
                    f"server busy: {self.held / 2**20:.0f} MB of requests already being "
                    "received or handled"
                )
            self.held += nbytes
            return None

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.held -= nbytes
