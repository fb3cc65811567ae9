"""The data plane in process, no HTTP: the server's parts as `pneumo serve` builds them
(`app._build`), started for real (decode worker processes, the batcher's thread, the model
loaded and warmed up) on a model repository in tmp_path holding the shipped versions."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pneumo_onnx.engine.errors import NotFoundError, Overloaded, RepositoryError, UsageError
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.serve.app import _build
from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.dataplane.items import Item
from pneumo_onnx.engine.serve.state import ServerState

NAME = "pneumonia"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository of the shipped versions 1 and 2 (two different models)."""
    root = tmp_path / "repo"
    for version in ("1", "2"):
        shutil.copytree(default_model_dir() / version, root / NAME / version)
    return root


@contextlib.asynccontextmanager
async def serving(repo: Path, **settings: Any) -> AsyncIterator[ServerState]:
    state = _build(
        ServeConfig(model_repo=repo, state_dir=repo.parent / "state", decode_workers=1, **settings)
    )
    await state.service.start()
    try:
        yield state
    finally:
        await state.service.close()
        assert state.prediction_log.close_within(5) == 0


def batches(state: ServerState) -> tuple[float, float]:
    """(model runs, images scored in them) so far, from the batcher's own metrics."""
    registry = state.metrics.registry
    runs = registry.get_sample_value("pneumo_batch_size_count") or 0.0
    return runs, registry.get_sample_value("pneumo_batch_size_sum") or 0.0


def cache_hits(state: ServerState) -> float | None:
    return state.metrics.registry.get_sample_value("pneumo_cache_total", {"result": "hit"})


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


def test_the_scoring_path_gives_what_engine_predict_gives(repo: Path, samples: list[Path]) -> None:
    """One image at a time (seed routes), six in one batch, and V2 tensors: the answers of
    Engine.predict on the same files, with the same model loaded on its own."""
    engine = Engine.load(repo / NAME / "2")

    async def go() -> None:
        async with serving(repo) as state:
            service = state.service
            for path in samples:
                result, served = await service.predict(path.read_bytes(), None, "r", "/t")
                assert (served.name, served.version) == (NAME, 2)
                assert result == engine.predict(path)
            result, _ = await service.predict(samples[0].read_bytes(), 0.02, "r", "/t")
            assert result == engine.predict(samples[0], 0.02)

            before = batches(state)
            items = [Item(data=p.read_bytes(), name=p.name) for p in samples]
            # At a threshold not asked before, so that none of them is a cached answer.
            outcomes = await service.score(items, 0.3, served=served, request_id="r", route="/t")
            assert batches(state) == (before[0] + 1, before[1] + 6)  # one run of all six
            for path, outcome in zip(samples, outcomes, strict=True):
                expected = engine.predict(path, 0.3)
                assert isinstance(outcome, dict) and outcome["prediction"] == expected["prediction"]
                assert outcome["raw_score"] == pytest.approx(expected["raw_score"], abs=1e-5)

            tensors = [Item(tensor=engine.preprocess(p)) for p in samples[:3]]
            scores = await service.infer(served, tensors, "r", "/v2")
            expected_scores = [engine.predict(p)["raw_score"] for p in samples[:3]]
            assert scores.tolist() == pytest.approx(expected_scores, abs=1e-5)

    asyncio.run(go())


def test_a_repeated_image_is_answered_from_the_cache(repo: Path, samples: list[Path]) -> None:
    data = samples[3].read_bytes()

    async def go() -> None:
        async with serving(repo) as state:
            service = state.service
            first, _ = await service.predict(data, None, "r", "/t")
            assert batches(state) == (1, 1) and service.cache.hits == 0
            again, _ = await service.predict(data, None, "r", "/t")
            assert again == first
            assert batches(state) == (1, 1)  # not scored again
            assert service.cache.hits == 1 and cache_hits(state) == 1.0

            other, _ = await service.predict(data, 0.5, "r", "/t")  # another threshold: scored
            assert other["threshold"] == 0.5 and batches(state) == (2, 2)

            # Another version served: what the old one answered is forgotten.
            served = await asyncio.get_running_loop().run_in_executor(
                None, service.registry.load, NAME, 1
            )
            service.announce(served)
            newer, by = await service.predict(data, None, "r", "/t")
            assert by.version == 1 and batches(state) == (3, 3)
            assert newer == Engine.load(repo / NAME / "1").predict(samples[3])

    asyncio.run(go())


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


def test_registry_load_unload_and_rollback(repo: Path) -> None:
    """On a real repository folder: the newest version by default, a named one, rollback to
    the one served before, unload; broken versions never replace the one being served."""
    broken = repo / NAME / "3"
    shutil.copytree(repo / NAME / "2", broken)
    model = broken / "model.onnx"
    model.write_bytes(model.read_bytes()[:-100] + b"\0" * 100)
    unverified = repo / NAME / "4"
    shutil.copytree(repo / NAME / "2", unverified)
    (unverified / "manifest.json").unlink()
    state = _build(ServeConfig(model_repo=repo, state_dir=repo.parent / "state"))
    registry = state.service.registry
    try:
        assert registry.versions(NAME) == [1, 2, 3, 4]
        assert {r["state"] for r in registry.index()} == {"UNAVAILABLE"}
        with pytest.raises(NotFoundError, match="model 'pneumonia' is not loaded"):
            registry.current(NAME)

        v2 = registry.load(NAME, 2)
        assert v2.version == 2
        with pytest.raises(RepositoryError, match="does not match the sha256"):
            registry.load(NAME, 3)
        with pytest.raises(RepositoryError, match=r"4 has no manifest\.json"):
            registry.load(NAME)  # the newest: 4
        assert registry.current(NAME).version == 2
        assert {"name": NAME, "version": "2", "state": "READY"} in registry.index()

        v1 = registry.load(NAME, 1)
        assert registry.current(NAME) is v1 and v1.sha256 != v2.sha256
        assert registry.rollback(NAME).version == 2  # the version served before 1
        with pytest.raises(UsageError, match="no earlier served version to roll back to"):
            registry.rollback(NAME)
        assert registry.current(NAME).version == 2

        with pytest.raises(NotFoundError, match="model 'pneumonia' has no version 9"):
            registry.load(NAME, 9)
        with pytest.raises(NotFoundError, match="no model named 'chest' in the repository"):
            registry.load("chest")

        registry.unload(NAME)
        with pytest.raises(NotFoundError, match="model 'pneumonia' is not loaded"):
            registry.current(NAME)
        with pytest.raises(NotFoundError, match="model 'pneumonia' is not loaded"):
            registry.unload(NAME)
        assert registry.served() == []
        assert registry.load(NAME, 2).version == 2
    finally:
        assert state.prediction_log.close_within(5) == 0
