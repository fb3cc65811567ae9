"""Admission control of the decode stage: every image that reaches the scoring path (seed
routes, V2 images, job chunks) is admitted before a decode worker takes it, and budgeted by
the pixels its header announces.

The server never parses an image itself: what it counts at admission comes from
`peek_pixels` (fixed places of a PNG, JPEG or BMP header: no parser runs); every other image
counts from the moment its decode worker has read its header (`Ticket.header`, called from
the thread waiting on that worker, before any pixel is decoded).

- per request (`max_request_pixels`): a request whose images decode to more is refused (400),
  up front where its headers can be peeked, else as its headers are read, and its images not
  yet decoded are not decoded. A job chunk has no such limit (each image has its own);
- in flight (`max_inflight_pixels`, `max_inflight_images`): pixels admitted and not yet
  decoded, and how long the oldest image has waited for a decoder (`max_queue_delay`). A
  request that would go past them is shed at once with 503 + Retry-After, so the decode queue
  (and every client's wait in it) stays bounded instead of growing with the connections;
- memory: the decode workers' own budget (engine.runtime.sandbox), which no image can pass
  whatever its header says.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from pneumo_onnx.engine.errors import Overloaded, PneumoError, UsageError

MPX = 1_000_000


class DecodeBudget:
    """The in-flight budget, shared by the event loop and the decode threads."""

    def __init__(
        self,
        max_request_pixels: int,
        max_inflight_pixels: int,
        max_inflight_images: int,
        max_queue_delay: float,
    ) -> None:
        if max_inflight_pixels < max_request_pixels:
            raise UsageError("the in-flight pixel budget must hold at least one whole request")
        self.max_request_pixels = max_request_pixels
        self.max_inflight_pixels = max_inflight_pixels
        self.max_inflight_images = max_inflight_images
        self.max_queue_delay = max_queue_delay
        self.pixels = 0  # admitted, not yet decoded
        self.images = 0
        self._lock = threading.Lock()

    def admit(self, peeked: Sequence[int | None], queue_delay: float, job: bool) -> Ticket:
        """Take images (their peeked pixel counts, None where unknown) into the decode stage,
        refuse the request (UsageError: 400), or shed it (Overloaded: 503 + Retry-After). An
        idle server admits any allowed request."""
        known = sum(p or 0 for p in peeked)
        if not job:
            _check_request(known, self.max_request_pixels)
        with self._lock:
            busy = self.images > 0
            if busy and queue_delay > self.max_queue_delay:
                raise Overloaded(
                    f"server busy: images have waited {queue_delay:.1f} s for a decoder "
                    f"(at most {self.max_queue_delay:g} s)",
                    retry_after=max(1, round(queue_delay)),
                )
            if busy and self.pixels + known > self.max_inflight_pixels:
                raise Overloaded(self._pixels_busy())
            if busy and self.images + len(peeked) > self.max_inflight_images:
                raise Overloaded(
                    f"server busy: {self.images} images already waiting to be decoded "
                    f"(at most {self.max_inflight_images})"
                )
            self.pixels += known
            self.images += len(peeked)
        return Ticket(self, [p or 0 for p in peeked], None if job else self.max_request_pixels)

    def _pixels_busy(self) -> str:
        return (
            f"server busy: {self.pixels / MPX:.0f} Mpx of images already waiting to be "
            f"decoded (budget {self.max_inflight_pixels / MPX:.0f} Mpx)"
        )


class Ticket:
    """What one admitted request holds of the in-flight budget, image by image."""

    def __init__(self, budget: DecodeBudget, pixels: list[int], request_limit: int | None):
        self._budget = budget
        self._counts = dict(enumerate(pixels))  # every image of the request: its pixels
        self._held = set(self._counts)  # images not yet decoded: in the in-flight budget
        self._request_limit = request_limit
        self.refusal: PneumoError | None = None  # once set, no more of the request decodes

    def header(self, index: int, pixels: object) -> None:
        """Image `index`'s header, read by its decode worker, announces `pixels`: count them
        (instead of what was peeked), or refuse the request (raises, and remembers why)."""
        b = self._budget
        with b._lock:
            if self.refusal is None and index in self._held:
                growth = int(pixels) - self._counts[index]  # type: ignore[call-overload]
                try:
                    if self._request_limit is not None:
                        _check_request(sum(self._counts.values()) + growth, self._request_limit)
                    if growth > 0 and b.images > 1 and b.pixels + growth > b.max_inflight_pixels:
                        raise Overloaded(b._pixels_busy())
                except PneumoError as e:
                    self.refusal = e
                else:
                    b.pixels += growth
                    self._counts[index] += growth
            if self.refusal is not None:
                raise self.refusal

    def release(self, index: int) -> None:
        """Image `index` is decoded (or failed): its share goes back."""
        b = self._budget
        with b._lock:
            if index in self._held:
                self._held.discard(index)
                b.pixels -= self._counts[index]
                b.images -= 1

    def close(self) -> None:
        for index in list(self._held):
            self.release(index)


def _check_request(pixels: int, limit: int) -> None:
    if pixels > limit:
        raise UsageError(
            f"the images of this request decode to {pixels / MPX:.0f} Mpx, over the "
            f"{limit / MPX:.0f} Mpx per request limit: send fewer or smaller images per request"
        )
