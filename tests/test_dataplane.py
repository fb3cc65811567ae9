"""The data plane in process, no HTTP (`tests.inprocess_server`): the scoring path gives what
Engine.predict gives, the batcher groups concurrent requests, the cache answers repeats, a bad
image is its own error, jobs go through the same path, and the registry switches versions."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo_onnx.engine.errors import ImageError, NotFoundError, RepositoryError, UsageError
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.serve.app import _build
from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.dataplane.items import Item
from tests.inprocess_server import (
    NAME,
    batches,
    cache_hits,
    runs_of_at_most,
    serving,
    shipped_repo,
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return shipped_repo(tmp_path)


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


def test_the_batcher_groups_concurrent_requests_up_to_max_batch(
    repo: Path, samples: list[Path]
) -> None:
    """Concurrent requests share model runs of at most max_batch images (seen in the batch-size
    histogram the batcher feeds), and a run never mixes two models (a version switched while
    images of the old one were queued). A long window (1 s) lets every run fill up."""

    async def go() -> None:
        async with serving(repo, max_batch=4, max_delay_ms=1000) as state:
            service = state.service
            served = service.registry.current(NAME)
            engine = served.engine
            x = [engine.preprocess(p) for p in samples]
            expected = engine.scores(np.stack(x)).ravel().tolist()

            # Eight V2 requests of one tensor each (nothing to decode): two runs of four.
            requests = [[Item(tensor=x[i % 6])] for i in range(8)]
            got = await asyncio.gather(*(service.infer(served, r, "r", "/v2") for r in requests))
            assert batches(state) == (2, 8) and runs_of_at_most(state, 2) == 0
            for i, scores in enumerate(got):
                assert scores.tolist() == pytest.approx([expected[i % 6]], abs=1e-5)

            # One request of twelve: three runs of four, never one of twelve.
            await service.infer(served, [Item(tensor=x[i % 6]) for i in range(12)], "r", "/v2")
            assert batches(state) == (5, 20) and runs_of_at_most(state, 2) == 0

            # Eight single-image requests decoded one at a time by the decode worker: each
            # run holds at most four, fewer runs than requests, every answer Engine.predict's.
            # The two repeats miss the cache: every request hashes (a FIFO pool) before any
            # of them decodes, so before anything is scored.
            files = [*samples, *samples[:2]]
            answers = await asyncio.gather(
                *(service.predict(p.read_bytes(), 0.4, "r", "/t") for p in files)
            )
            runs, images = batches(state)
            assert images == 20 + 8 and runs_of_at_most(state, 4) == runs  # none over 4
            assert runs - 5 < 8  # grouped: fewer runs than requests
            for path, (result, _) in zip(files, answers, strict=True):
                want = engine.predict(path, 0.4)
                assert result["prediction"] == want["prediction"]
                assert result["raw_score"] == pytest.approx(want["raw_score"], abs=1e-5)

            # Two images for version 2 then four for version 1 (preprocessed by its own
            # contract), queued together: a run of two, then a run of four, each scored by
            # its own model (the two take the same input shape, so a mixed run would pass
            # unnoticed but for the scores).
            with Engine.load(repo / NAME / "1") as v1:
                y = v1.preprocess(samples[4])
                pending = [(engine, x[4])] * 2 + [(v1, y)] * 4
                before, small = batches(state), runs_of_at_most(state, 2)
                got_by = await asyncio.gather(*(service.batcher.submit(e, t) for e, t in pending))
                assert batches(state) == (before[0] + 2, before[1] + 6)
                assert runs_of_at_most(state, 2) == small + 1
                assert got_by[:2] == pytest.approx([expected[4]] * 2, abs=1e-5)
                alone = float(v1.scores(y[None])[0])
                assert got_by[2:] == pytest.approx([alone] * 4, abs=1e-5)

    asyncio.run(go())


def test_a_repeated_image_is_answered_from_the_cache(repo: Path, samples: list[Path]) -> None:
    data = samples[3].read_bytes()

    async def go() -> None:
        async with serving(repo) as state:
            service = state.service
            first, _ = await service.predict(data, None, "r", "/t")
            assert batches(state) == (1, 1) and cache_hits(state) == 0.0
            again, _ = await service.predict(data, None, "r", "/t")
            assert again == first
            assert batches(state) == (1, 1)  # not scored again
            assert cache_hits(state) == 1.0

            other, _ = await service.predict(data, 0.5, "r", "/t")  # another threshold: scored
            assert other["threshold"] == 0.5 and batches(state) == (2, 2)

            # Another version served: what the old one answered is forgotten.
            await asyncio.get_running_loop().run_in_executor(None, service.registry.load, NAME, 1)
            service.announce()
            newer, by = await service.predict(data, None, "r", "/t")
            assert by.version == 1 and batches(state) == (3, 3)
            assert newer == Engine.load(repo / NAME / "1").predict(samples[3])

    asyncio.run(go())


def test_the_cache_is_bounded_and_can_be_off(repo: Path, samples: list[Path]) -> None:
    """A cache of one answer forgets the older image; a cache of none scores every time."""
    a, b = samples[0].read_bytes(), samples[5].read_bytes()

    async def go() -> None:
        async with serving(repo, cache_size=1) as state:
            for image in (a, a, b, a):
                await state.service.predict(image, None, "r", "/t")
            assert batches(state) == (3, 3) and cache_hits(state) == 1.0
        async with serving(repo, cache_size=0) as state:
            for image in (a, a):
                await state.service.predict(image, None, "r", "/t")
            assert batches(state) == (2, 2) and not cache_hits(state)

    asyncio.run(go())


def test_a_bad_image_gets_its_own_error_and_the_others_are_scored(
    repo: Path, samples: list[Path]
) -> None:
    """Each undecodable image is its outcome, an ImageError saying what arrived; the good one
    beside it is scored; a lone bad image raises from predict; nothing bad is cached."""
    jpeg = samples[0].read_bytes()
    bad = {
        "empty.jpg": (b"", "expected an image file, got 0 bytes from empty.jpg"),
        "notes.jpg": (
            b"hello world",
            "notes.jpg is not a supported image (expected JPEG, PNG, BMP, TIFF or DICOM; "
            "11 bytes starting b'hello wo')",
        ),
        "cut.jpeg": (jpeg[: len(jpeg) // 3], "cut.jpeg is truncated or corrupt: "),
        "fake.png": (b"\x89PNG\r\n\x1a\n" + bytes(30), "fake.png starts like a PNG file but is "),
    }

    async def go() -> None:
        async with serving(repo) as state:
            service = state.service
            served = service.registry.current(NAME)
            items = [Item(data=data, name=name) for name, (data, _) in bad.items()]
            items.append(Item(data=jpeg, name="good.jpeg"))
            outcomes = await service.score(items, None, served=served, request_id="r", route="/t")
            for outcome, (_, message) in zip(outcomes, bad.values(), strict=False):
                assert isinstance(outcome, ImageError) and outcome.message.startswith(message)
            assert outcomes[-1] == served.engine.predict(samples[0])
            assert batches(state) == (1, 1) and len(service.cache) == 1
            budget = service.decoders.budget
            assert (budget.pixels, budget.images) == (0, 0)

            with pytest.raises(ImageError, match="not a supported image"):
                await service.predict(b"hello world", None, "r", "/t", name="notes.jpg")
            assert batches(state) == (1, 1) and cache_hits(state) == 0.0

    asyncio.run(go())


def test_a_job_goes_through_the_same_path_in_chunks_its_queue_holds(
    repo: Path, samples: list[Path]
) -> None:
    """A stored job of six X-rays, scored by the real job runner through the batcher, on a
    server whose queue (4) is shorter than its batches (32): chunks of at most four, every
    row Engine.predict's answer. (A chunk of max_batch used to be refused as a request over
    the queue, so every job failed on such a server.)"""
    engine = Engine.load(repo / NAME / "2")

    async def go() -> None:
        async with serving(repo, max_queue=4) as state:
            state.runner.start()
            job_id = state.jobs.create([(p.name, p.read_bytes()) for p in samples])
            state.runner.wake()
            for _ in range(600):  # a bound on the wait, not a timing assertion
                job = state.jobs.get(job_id)
                if job["status"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, state.runner.stop, 5.0)
            assert job["status"] == "done", job.get("error")
            assert batches(state)[1] == 6 and runs_of_at_most(state, 4) == batches(state)[0]
            for path, row in zip(samples, job["results"], strict=True):
                expected = engine.predict(path)
                assert (row["image_path"], row["prediction"]) == (path.name, expected["prediction"])
                assert row["raw_score"] == pytest.approx(expected["raw_score"], abs=1e-5)

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
        # A rollback to a version refused now changes nothing, and can be tried again.
        manifest = repo / NAME / "2" / "manifest.json"
        kept = manifest.rename(repo.parent / "manifest.json")
        with pytest.raises(RepositoryError, match=r"2 has no manifest\.json"):
            registry.rollback(NAME)
        assert registry.current(NAME) is v1
        kept.rename(manifest)
        assert registry.rollback(NAME).version == 2  # the version served before 1
        with pytest.raises(UsageError, match="no earlier served version to roll back to"):
            registry.rollback(NAME)
        assert registry.current(NAME).version == 2

        with pytest.raises(NotFoundError, match="model 'pneumonia' has no version 9"):
            registry.load(NAME, 9)
        with pytest.raises(NotFoundError, match="no model named 'chest' in the repository"):
            registry.load("chest")
        with pytest.raises(NotFoundError, match=r"no model named '\.\./repo' in the repository"):
            registry.load("../repo")  # no way out of the repository folder

        registry.unload(NAME)
        with pytest.raises(NotFoundError, match="model 'pneumonia' is not loaded"):
            registry.current(NAME)
        with pytest.raises(NotFoundError, match="model 'pneumonia' is not loaded"):
            registry.unload(NAME)
        assert registry.served() == []
        assert registry.load(NAME, 2).version == 2
    finally:
        assert state.prediction_log.close_within(5) == 0
