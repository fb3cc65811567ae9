"""The protocol-free scoring layer of the server: ONE path from an image (or a V2 tensor) to a
result, taken by the seed routes, the KServe V2 routes (tensors and images) and the batch jobs
alike, and testable without HTTP:

    hash (cache key) -> result cache -> decode -> dynamic batcher -> result
                     -> prediction log (off the request path) -> Prometheus counters

Everything blocking (hashing, decoding, inference, SQLite) runs on a thread; the event loop
only awaits.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from pneumo_onnx.engine.errors import (
    ModelLoadError,
    Overloaded,
    PneumoError,
    UsageError,
)
from pneumo_onnx.engine.runtime.results import Result, Scored, failed
from pneumo_onnx.engine.runtime.sandbox import Limits
from pneumo_onnx.engine.serve.dataplane.admission import DecodeBudget
from pneumo_onnx.engine.serve.dataplane.batching import Batcher
from pneumo_onnx.engine.serve.dataplane.cache import ResultCache
from pneumo_onnx.engine.serve.dataplane.decoding import Decoders
from pneumo_onnx.engine.serve.dataplane.dicom import Reports, Uids, is_dicom, uids_of
from pneumo_onnx.engine.serve.dataplane.items import Item, digests_of, hashed_inline
from pneumo_onnx.engine.serve.dataplane.registry import ModelRegistry, Served
from pneumo_onnx.engine.serve.metrics import ServerMetrics
from pneumo_onnx.engine.serve.store.predictions import PredictionRecord

log = logging.getLogger(__name__)

# What scoring one item gives: its result, or the error that image got (the caller decides
# whether one bad image fails the request or becomes an error row).
Outcome = Scored | PneumoError


class ScoringService:
    """Owns the model registry, the batcher, the result cache and the decode workers. Its
    limits are the server's settings (`serve.config.ServeConfig`, which `app` passes): none
    has a default here."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: ServerMetrics,
        *,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        decode_workers: int,
        decode_limits: Limits,
        cache_size: int,
        max_request_pixels: int,
        max_inflight_pixels: int,
        max_queue_delay: float,
        keep_images: bool,
        prediction_log: PredictionSink | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.batcher = Batcher(max_batch, max_delay, max_queue, observer=metrics.observe_batch)
        self.cache = ResultCache(cache_size)
        budget = DecodeBudget(max_request_pixels, max_inflight_pixels, max_queue, max_queue_delay)
        self.decoders = Decoders(decode_workers, decode_limits, budget)
        self.reports = Reports(self.decoders)
        self.prediction_log = prediction_log
        self.keep_images = keep_images
        # The log may apply back-pressure when its queue is full: that must block a thread of
        # its own, never the event loop (while its queue has room, records go in directly).
        self._log = ThreadPoolExecutor(1, thread_name_prefix="pneumo-log")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.default_model = ""

    @property
    def ready(self) -> bool:
        return bool(self.default_model) and bool(self.registry.served())

    async def start(self, model: str | None = None) -> None:
        """Start the decode workers and batching, then load and warm up the model (the
        server is live meanwhile, and ready once this returns). The newest version that
        passes every gate is served: a broken newest version is logged and skipped."""
        self._loop = asyncio.get_running_loop()
        self.decoders.start()
        self.batcher.start()
        name = model or self.registry.default_name()
        failures = []
        for version in reversed(self.registry.versions(name)):
            try:
                served = await self._loop.run_in_executor(None, self.registry.load, name, version)
            except PneumoError as e:
                log.error("not serving %s/%s: %s", name, version, e.message)
                failures.append(e.message)
                continue
            await self.decoders.check(served.engine)
            self.announce()
            self.default_model = name
            return
        raise ModelLoadError(f"no version of {name!r} can be served: " + "; ".join(failures))

    def announce(self) -> None:
        """What is served changed (a load, a rollback, an unload): cached answers are
        forgotten, and the metrics name the versions served now."""
        self.cache.clear()
        self.metrics.serving(
            (s.name, str(s.version), s.engine.model.variant, s.sha256)
            for s in self.registry.served()
        )

    async def close(self) -> None:
        """Score everything already queued, then stop the pools (scoring after this point is
        Overloaded: the server is shutting down)."""
        self._closing = True
        await self.batcher.close()
        self.decoders.close()
        self._log.shutdown(wait=True)

    # --- the one path ---------------------------------------------------------------------

    async def score(
        self,
        items: Sequence[Item],
        threshold: float | None,
        *,
        served: Served,
        request_id: str,
        route: str,
        job: bool = False,
        caller: str = "",
    ) -> list[Outcome]:
        """Score every item with `served`'s model: one outcome per item, in order.

        A bad image is that item's outcome (ImageError), refused from its header where it can
        be. The whole call fails on a full queue or a long wait for the decoders (Overloaded),
        or on a request over the per-request limits (UsageError); a `job` chunk has no pixel
        limit of its own (its images are each within the per-image limits). `caller` (who
        asked: `state.caller`) and a DICOM image's UIDs go into the prediction log, for audit.
        """
        if self._closing:
            raise Overloaded("the server is shutting down", retry_after=5)
        started = time.perf_counter()
        engine = served.engine
        t = engine.resolve_threshold(threshold)
        if not items:
            raise UsageError("expected at least one image")
        if len(items) > self.batcher.max_queue:
            raise UsageError(
                f"at most {self.batcher.max_queue} images per request, got {len(items)}"
            )
        digests = (
            digests_of(items)
            if hashed_inline(items)
            else await self.decoders.run(digests_of, items)
        )
        model_key = (served.name, str(served.version), engine.model.variant)
        outcomes: list[Outcome | None] = [None] * len(items)
        for i, item in enumerate(items):
            if item.data is not None:
                hit = self.cache.get((digests[i], *model_key, t))
                self.metrics.looked_up(hit is not None)
                outcomes[i] = hit
        todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if todo:
            tensors = await self.decoders.tensors(engine, items, todo, job)
            ready = [
                (i, x) for i, x in zip(todo, tensors, strict=True) if isinstance(x, np.ndarray)
            ]
            for i, x in zip(todo, tensors, strict=True):
                if isinstance(x, PneumoError):
                    outcomes[i] = x
                elif isinstance(x, BaseException):
                    raise x  # a bug: the server's unexpected-error handler logs it
            scores = await self.batcher.submit_all(engine, [x for _, x in ready])
            for (i, _), score in zip(ready, scores, strict=True):
                if not (math.isfinite(score) and 0.0 <= score <= 1.0):
                    outcomes[i] = PneumoError(
                        f"the model gave {score} for {items[i].name or 'this image'}, not a "
                        "probability: no result (the model version is faulty; see the log)"
                    )
                    log.error("model %s/%s gave a score of %s", served.name, served.version, score)
                    continue
                result = engine.result(score, t)
                outcomes[i] = result
                if items[i].data is not None:
                    self.cache.put((digests[i], *model_key, t), result)
        done = [o for o in outcomes if o is not None]
        uids = await uids_of(self.decoders, list(items)) if any(map(is_dicom, items)) else None
        self._record(served, items, done, digests, request_id, route, started, job, caller, uids)
        return done

    # --- what the front doors call --------------------------------------------------------

    async def predict(
        self,
        image: bytes,
        threshold: float | None,
        request_id: str,
        route: str,
        name: str | None = None,
        caller: str = "",
    ) -> tuple[Scored, Served]:
        """One encoded image with the default model: the deployment guide's result fields.
        A bad image raises (the seed routes answer 400)."""
        served = self.registry.current(self.default_model)
        item = Item(data=image, name=name)
        (outcome,) = await self.score(
            [item], threshold, served=served, request_id=request_id, route=route, caller=caller
        )
        if isinstance(outcome, PneumoError):
            raise outcome
        return outcome, served

    async def infer(
        self,
        served: Served,
        items: Sequence[Item],
        request_id: str,
        route: str,
        caller: str = "",
    ) -> np.ndarray:
        """V2 inference: P(positive) per item at the model's threshold; one bad image fails
        the request (V2 has no per-item errors)."""
        outcomes = await self.score(
            items, None, served=served, request_id=request_id, route=route, caller=caller
        )
        error = next((o for o in outcomes if isinstance(o, PneumoError)), None)
        if error is not None:
            raise error
        return np.asarray([o["raw_score"] for o in outcomes], dtype=np.float32)  # type: ignore[index]

    def score_job(
        self, images: Sequence[tuple[str, bytes]], threshold: float | None
    ) -> list[Result]:
        """One chunk of a batch job, called from the job runner's thread: the same path as a
        request (same decode pool, same batcher, so jobs never oversubscribe the CPU), with
        each bad image as an error row."""
        if self._loop is None:
            raise ModelLoadError("the server has not started scoring yet")
        items = [Item(data=blob, name=name) for name, blob in images]
        future = asyncio.run_coroutine_threadsafe(self._score_job(items, threshold), self._loop)
        return future.result()

    async def _score_job(self, items: list[Item], threshold: float | None) -> list[Result]:
        served = self.registry.current(self.default_model)
        outcomes = await self.score(
            items, threshold, served=served, request_id="job", route="/jobs", job=True
        )
        return [failed(o.message) if isinstance(o, PneumoError) else o for o in outcomes]

    async def heatmap(
        self,
        served: Served,
        image: bytes,
        result: Scored,
        name: str | None = None,
        negative: bool = False,
    ) -> tuple[str, str]:
        """(method, base64 PNG) of the X-ray with its heatmap: CAM when the model carries it,
        else occlusion sensitivity (64 batched runs); evidence against PNEUMONIA too only with
        `negative`. Runs on the decode pool."""
        from pneumo_onnx.engine.explain.heatmap import check_method
        from pneumo_onnx.engine.explain.overlay import DISPLAY_SIDE, overlay_png_of

        method = check_method(served.engine, "auto")
        x, grey = await self.decoders.picture(served.engine, image, DISPLAY_SIDE, name)
        png = await self.decoders.run(
            overlay_png_of, served.engine, x, grey, result, method=method, negative=negative
        )
        return method, base64.b64encode(png).decode("ascii")

    # --- internals ------------------------------------------------------------------------

    def _record(
        self,
        served: Served,
        items: Sequence[Item],
        outcomes: list[Outcome],
        digests: list[str],
        request_id: str,
        route: str,
        started: float,
        job: bool,
        caller: str,
        uids: list[Uids | None] | None,
    ) -> None:
        """Count every scored item, and hand it to the prediction log's thread."""
        latency_ms = (time.perf_counter() - started) * 1000.0
        records = []
        for i, (item, outcome, digest) in enumerate(zip(items, outcomes, digests, strict=True)):
            if isinstance(outcome, PneumoError):
                continue
            dicom = uids[i] if uids is not None else None
            self.metrics.predicted(outcome["prediction"])
            records.append(
                PredictionRecord(
                    time=time.time(),
                    request_id=request_id,
                    route=route,
                    model_name=served.name,
                    model_version=str(served.version),
                    score=outcome["raw_score"],
                    label=outcome["prediction"],
                    threshold=outcome["threshold"],
                    latency_ms=latency_ms,
                    image_sha256=digest,
                    source="job" if job else "interactive",
                    image=item.data if self.keep_images else None,
                    caller=caller,
                    study_uid=dicom.study if dicom else None,
                    series_uid=dicom.series if dicom else None,
                    sop_uid=dicom.sop if dicom else None,
                )
            )
        if self.prediction_log is not None and records:
            waiting = [r for r in records if not self.prediction_log.offer(r)]
            if waiting:
                self._log.submit(_each, self.prediction_log.record, waiting)


class PredictionSink(Protocol):
    """Where scored predictions go (the prediction log): `offer` never waits."""

    def offer(self, rec: PredictionRecord) -> bool: ...

    def record(self, rec: PredictionRecord) -> None: ...


def _each(record: Callable[[PredictionRecord], None], records: list[PredictionRecord]) -> None:
    for r in records:
        record(r)
