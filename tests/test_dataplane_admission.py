"""Admission in process (no HTTP): the batch queue and the decode budget shed a request past
their bounds with Overloaded (503) or refuse it (400), before any of it is scored, and the
service scores normally once the bound has room again."""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path

import pytest

from pneumo_onnx.engine.errors import Overloaded, UsageError
from pneumo_onnx.engine.serve.dataplane.items import Item
from tests.inprocess_server import NAME, batches, serving, shipped_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return shipped_repo(tmp_path)


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only its signature and IHDR: what admission peeks, no pixels behind."""
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def tiff_header(width: int, height: int) -> bytes:
    """A greyscale TIFF's header and no strip: a format admission cannot peek, so its size is
    counted when the decode worker reads the header."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 200), (277, 3, 1), (278, 4, height), (279, 4, width * height)]  # fmt: skip
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII", t, k, 1, v) for t, k, v in tags
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 64


def test_a_full_batch_queue_sheds_with_overloaded(repo: Path, samples: list[Path]) -> None:
    """Seven images arrive at once at a queue of four: four are scored, three are refused at
    once with Overloaded (the server's 503), and the service scores normally afterwards."""

    async def go() -> None:
        async with serving(repo, max_queue=4, max_batch=1) as state:
            service = state.service
            engine = service.registry.current(NAME).engine
            x = engine.preprocess(samples[0])
            outcomes = await asyncio.gather(
                *(service.batcher.submit(engine, x) for _ in range(7)), return_exceptions=True
            )
            shed = [o for o in outcomes if isinstance(o, Overloaded)]
            assert len(shed) == 3 and all(isinstance(o, float) for o in outcomes[:4])
            assert shed[0].message == "server busy: 4 images already waiting to be scored"
            assert shed[0].retry_after == 1
            assert service.batcher.depth == 0
            items = [Item(data=samples[0].read_bytes())] * 5
            served = service.registry.current(NAME)
            with pytest.raises(UsageError, match="at most 4 images per request, got 5"):
                await service.score(items, None, served=served, request_id="r", route="/t")
            result, _ = await service.predict(samples[1].read_bytes(), None, "r", "/t")
            assert result == engine.predict(samples[1])
        # Closed: what is queued was scored, anything new is refused.
        with pytest.raises(Overloaded, match="the server is shutting down") as closed:
            await service.predict(samples[1].read_bytes(), None, "r", "/t")
        assert closed.value.retry_after == 5

    asyncio.run(go())


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([png_header(10_000, 9_000)], "decode to 90 Mpx, over the 80 Mpx per request limit"),
        ([png_header(7_000, 7_000)] * 2, "decode to 98 Mpx, over the 80 Mpx per request limit"),
        ([tiff_header(7_000, 7_000)] * 2, "decode to 98 Mpx, over the 80 Mpx per request limit"),
    ],
    ids=["one-png-peeked", "two-pngs-peeked", "two-tiffs-read-by-the-worker"],
)
def test_admission_refuses_a_request_over_the_pixel_budget(
    repo: Path, samples: list[Path], images: list[bytes], message: str
) -> None:
    """Refused before any pixel is decoded, whether the size was peeked from the header here or
    read by the decode worker; the budget is whole again afterwards and nothing was scored."""

    async def go() -> None:
        async with serving(repo, max_request_mpx=80, max_decode_mpx=80) as state:
            service = state.service
            served = service.registry.current(NAME)
            items = [Item(data=d, name=f"scan-{i}") for i, d in enumerate(images)]
            with pytest.raises(UsageError, match=message) as refused:
                await service.score(items, None, served=served, request_id="r", route="/t")
            assert refused.value.message.endswith("send fewer or smaller images per request")
            budget = service.decoders.budget
            assert (budget.pixels, budget.images) == (0, 0)
            assert batches(state) == (0, 0)
            result, _ = await service.predict(samples[0].read_bytes(), None, "r", "/t")
            assert result["prediction"] in ("NORMAL", "PNEUMONIA")

    asyncio.run(go())


@pytest.mark.parametrize(
    ("held", "asked", "message"),
    [
        ([79_000_000], "one", "79 Mpx of images already waiting to be decoded (budget 80 Mpx)"),
        ([50_000_000], "tiff", "50 Mpx of images already waiting to be decoded (budget 80 Mpx)"),
        ([None] * 3, "two", "3 images already waiting to be decoded (at most 4)"),
    ],
    ids=["pixels-peeked", "pixels-read-by-the-worker", "images"],
)
def test_admission_sheds_past_the_in_flight_budget_and_admits_once_released(
    repo: Path, samples: list[Path], held: list[int | None], asked: str, message: str
) -> None:
    """Another request's images wait for a decoder (a ticket of the real budget, held here so
    that it stays in flight): a request that would go past the in-flight pixels or images is
    shed with Overloaded (503, Retry-After 1), nothing of it scored; once the other request's
    images are decoded, the same service admits and scores again."""
    images = {
        "one": [samples[0].read_bytes()],  # 1.1 Mpx, peeked from its JPEG header
        "tiff": [tiff_header(7_000, 7_000)],  # 49 Mpx, known only from the worker
        "two": [s.read_bytes() for s in samples[:2]],
    }[asked]

    async def go() -> None:
        async with serving(repo, max_request_mpx=80, max_decode_mpx=80, max_queue=4) as state:
            service = state.service
            served = service.registry.current(NAME)
            budget = service.decoders.budget
            other = budget.admit(held, 0.0, job=False)
            items = [Item(data=d, name=f"scan-{i}") for i, d in enumerate(images)]
            with pytest.raises(Overloaded) as shed:
                await service.score(items, None, served=served, request_id="r", route="/t")
            assert shed.value.message == f"server busy: {message}"
            assert shed.value.retry_after == 1
            assert batches(state) == (0, 0)
            assert (budget.pixels, budget.images) == (sum(p or 0 for p in held), len(held))

            other.close()
            assert (budget.pixels, budget.images) == (0, 0)
            items = [Item(data=s.read_bytes()) for s in samples[:2]]
            outcomes = await service.score(items, None, served=served, request_id="r", route="/t")
            assert all(isinstance(o, dict) for o in outcomes) and batches(state) == (1, 2)
            assert (budget.pixels, budget.images) == (0, 0)

    asyncio.run(go())
