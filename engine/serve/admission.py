"""Admission control of the decode stage: every image that reaches the scoring path (seed
routes, V2 tensors and images, job chunks) is budgeted from its header before it is decoded.

Three budgets, each with its own job:
- per request (`max_request_pixels`): a request whose images decode to more is refused (400)
  before any is decoded: it could never be served without holding the decoders for seconds;
- in flight (`max_inflight_pixels`, `max_inflight_images`): pixels admitted and not yet
  decoded. A request that would overflow it is shed at once with 503 + Retry-After, so the
  decode queue (and every client's wait in it) stays bounded instead of growing with the
  number of connections;
- memory (`max_decode_bytes`): the expected peak memory of the images being decoded at once.
  An image waits for room before its decode starts (it was already admitted, so the wait is
  bounded by the in-flight budget); one image is always allowed alone.

Everything here runs on the event loop (no locks): admission is a few additions per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from engine.errors import Overloaded, UsageError

MPX = 1_000_000


class Ticket:
    """What one admitted request holds of the in-flight budget; each image gives its share
    back once decoded (`release`), the rest is given back by `close`."""

    def __init__(self, budget: DecodeBudget, pixels: list[int]) -> None:
        self._budget = budget
        self._pixels = dict(enumerate(pixels))

    def release(self, index: int) -> None:
        pixels = self._pixels.pop(index, None)
        if pixels is not None:
            self._budget._give_back(pixels, 1)

    def close(self) -> None:
        for index in list(self._pixels):
            self.release(index)


class DecodeBudget:
    def __init__(
        self,
        max_request_pixels: int,
        max_inflight_pixels: int,
        max_inflight_images: int,
        max_decode_bytes: int,
    ) -> None:
        if max_inflight_pixels < max_request_pixels:
            raise UsageError("the in-flight pixel budget must hold at least one whole request")
        self.max_request_pixels = max_request_pixels
        self.max_inflight_pixels = max_inflight_pixels
        self.max_inflight_images = max_inflight_images
        self.max_decode_bytes = max_decode_bytes
        self.pixels = 0  # admitted, not yet decoded
        self.images = 0
        self.decoding_bytes = 0  # expected peak memory of the decodes running now
        self._room: asyncio.Condition | None = None

    def check_request(self, pixels: Sequence[int]) -> None:
        """Refuse (400) a request that alone is over the per-request budget."""
        total = sum(pixels)
        if total > self.max_request_pixels:
            raise UsageError(
                f"the images of this request decode to {total / MPX:.0f} Mpx, over the "
                f"{self.max_request_pixels / MPX:.0f} Mpx per request limit: send fewer or "
                "smaller images per request"
            )

    def admit(self, pixels: Sequence[int]) -> Ticket:
        """Take `pixels` (one entry per image to decode) from the in-flight budget, or shed the
        request (Overloaded: 503 + Retry-After). An idle server admits any allowed request."""
        self.check_request(pixels)
        total, count = sum(pixels), len(pixels)
        busy = self.images > 0
        if busy and self.pixels + total > self.max_inflight_pixels:
            raise Overloaded(
                f"server busy: {self.pixels / MPX:.0f} Mpx of images already waiting to be "
                f"decoded (budget {self.max_inflight_pixels / MPX:.0f} Mpx)"
            )
        if busy and self.images + count > self.max_inflight_images:
            raise Overloaded(
                f"server busy: {self.images} images already waiting to be decoded "
                f"(at most {self.max_inflight_images})"
            )
        self.pixels += total
        self.images += count
        return Ticket(self, list(pixels))

    @asynccontextmanager
    async def memory(self, nbytes: int) -> AsyncIterator[None]:
        """Hold `nbytes` of the decode memory budget while the block runs (waits for room)."""
        if self._room is None:
            self._room = asyncio.Condition()
        async with self._room:
            await self._room.wait_for(
                lambda: (
                    self.decoding_bytes == 0
                    or self.decoding_bytes + nbytes <= self.max_decode_bytes
                )
            )
            self.decoding_bytes += nbytes
        try:
            yield
        finally:
            async with self._room:
                self.decoding_bytes -= nbytes
                self._room.notify_all()

    def _give_back(self, pixels: int, images: int) -> None:
        self.pixels -= pixels
        self.images -= images


def waves(todo: list[int], pixels: dict[int, int], budget: int) -> list[list[int]]:
    """`todo` cut into consecutive waves of at most `budget` pixels (one image at least)."""
    out: list[list[int]] = []
    total = budget + 1
    for i in todo:
        if total + pixels[i] > budget and (not out or out[-1]):
            out.append([])
            total = 0
        out[-1].append(i)
        total += pixels[i]
    return [w for w in out if w]
