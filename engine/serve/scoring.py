"""The protocol-free scoring layer of the server: what both front doors (the seed routes and
the KServe V2 routes) call. Testable without HTTP.

A request's image is hashed (cache lookup), decoded on a thread pool, queued for dynamic
batching, scored, and handed to the prediction log, whose writer runs off the request path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from engine.errors import ModelLoadError, PneumoError, UsageError
from engine.serve.batching import Batcher
from engine.serve.cache import ResultCache
from engine.serve.metrics import ServerMetrics
from engine.serve.monitor import PredictionRecord
from engine.serve.registry import ModelRegistry, Served

log = logging.getLogger(__name__)

Result = dict[str, Any]


class ScoringService:
    """Owns the model registry, the batcher, the result cache and the decode pool."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: ServerMetrics,
        *,
        max_batch: int = 32,
        max_delay: float = 0.005,
        max_queue: int = 256,
        decode_threads: int = 2,
        cache_size: int = 1024,
        on_prediction: Callable[[PredictionRecord], None] | None = None,
        keep_images: bool = False,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.batcher = Batcher(max_batch, max_delay, max_queue, observer=metrics.observe_batch)
        self.cache = ResultCache(cache_size)
        self.on_prediction = on_prediction
        self.keep_images = keep_images
        self._decode = ThreadPoolExecutor(decode_threads, thread_name_prefix="pneumo-decode")
        # The log may apply back-pressure when its queue is full: that must block a thread of
        # its own, never the event loop.
        self._log = ThreadPoolExecutor(1, thread_name_prefix="pneumo-log")
        self.default_model = ""

    @property
    def ready(self) -> bool:
        return bool(self.default_model) and bool(self.registry.served())

    async def start(self, model: str | None = None) -> None:
        """Start batching, then load and warm up the model (the server is live meanwhile,
        and ready once this returns). The newest version that passes every gate is served:
        a broken newest version is logged and skipped, never served."""
        self.batcher.start()
        name = model or self.registry.default_name()
        loop = asyncio.get_running_loop()
        failures = []
        for version in reversed(self.registry.versions(name)):
            try:
                served = await loop.run_in_executor(None, self.registry.load, name, version)
            except PneumoError as e:
                log.error("not serving %s/%s: %s", name, version, e.message)
                failures.append(e.message)
                continue
            self.announce(served)
            self.default_model = name
            return
        raise ModelLoadError(f"no version of {name!r} can be served: " + "; ".join(failures))

    def announce(self, served: Served) -> None:
        """A new version is being served: forget cached answers of the old one."""
        self.cache.clear()
        e = served.engine
        self.metrics.serving(served.name, str(served.version), e.model.variant, served.sha256)

    async def close(self) -> None:
        """Score everything already queued, then stop the pools."""
        await self.batcher.close()
        self._decode.shutdown(wait=True)
        self._log.shutdown(wait=True)

    # --- the seed routes ------------------------------------------------------------------

    async def predict(
        self,
        image: bytes,
        threshold: float | None,
        request_id: str,
        route: str,
        name: str | None = None,
        model: str | None = None,
    ) -> tuple[Result, Served]:
        """Score one encoded image: the deployment guide's result fields. `name` (the upload's
        file name) is what error messages call the image."""
        started = time.perf_counter()
        served = self.registry.current(model or self.default_model)
        engine = served.engine
        t = engine.resolve_threshold(threshold)
        digest = hashlib.sha256(image).hexdigest()
        key = (digest, served.name, str(served.version), engine.model.variant, t)
        result = self.cache.get(key)
        self.metrics.cache.labels("hit" if result is not None else "miss").inc()
        if result is None:
            loop = asyncio.get_running_loop()
            tensor = await loop.run_in_executor(
                self._decode, engine.preprocess, _named(image, name)
            )
            score = await self.batcher.submit(engine, tensor)
            result = engine.result(score, t)
            self.cache.put(key, result)
        self.metrics.predictions.labels(result["prediction"]).inc()
        self._record(served, result, request_id, route, started, digest, image)
        return result, served

    async def heatmap(
        self, served: Served, image: bytes, result: Result, name: str | None = None
    ) -> tuple[str, str]:
        """(method, base64 PNG) of the X-ray with its heatmap: CAM when the model carries it,
        else occlusion sensitivity (64 batched runs). Runs on the decode pool."""
        from engine.heatmap import check_method, overlay_png

        method = check_method(served.engine, "auto")
        png = await asyncio.get_running_loop().run_in_executor(
            self._decode, overlay_png, served.engine, _named(image, name), result, method
        )
        return method, base64.b64encode(png).decode("ascii")

    def score_job(self, images: list[bytes], threshold: float | None) -> list[Result]:
        """One chunk of a batch job (job runner thread): the current model, per-item errors."""
        served = self.registry.current(self.default_model)
        started = time.perf_counter()
        results = served.engine.predict_batch(images, threshold=threshold)
        if self.on_prediction is not None:
            per_image = (time.perf_counter() - started) * 1000.0 / max(1, len(images))
            for image, result in zip(images, results, strict=True):
                if "error" not in result:
                    self.on_prediction(
                        PredictionRecord.from_result(
                            result,
                            image=image,  # hashed; kept only if the log stores images
                            request_id="job",
                            route="/jobs",
                            model_name=served.name,
                            model_version=str(served.version),
                            latency_ms=per_image,
                        )
                    )
        return results

    # --- the V2 routes --------------------------------------------------------------------

    async def score_tensor(self, served: Served, x: np.ndarray) -> np.ndarray:
        """Scores for an (N, H, W, C) float32 batch already in the model's input layout."""
        expected = served.engine.contract.input_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise UsageError(
                f"expected shape [N, {', '.join(map(str, expected))}], got {list(x.shape)}"
            )
        if not np.isfinite(x).all():
            raise UsageError("input holds NaN or infinite values")
        return await self._score_all(served, list(x.astype(np.float32, copy=False)))

    async def score_images(self, served: Served, images: list[bytes]) -> np.ndarray:
        """Scores for encoded images (V2 BYTES input); one bad image fails the request."""
        loop = asyncio.get_running_loop()
        tensors = await asyncio.gather(
            *(loop.run_in_executor(self._decode, served.engine.preprocess, b) for b in images)
        )
        return await self._score_all(served, list(tensors))

    async def _score_all(self, served: Served, tensors: list[np.ndarray]) -> np.ndarray:
        if not tensors:
            raise UsageError("expected at least one image")
        if len(tensors) > self.batcher.max_queue:
            raise UsageError(
                f"at most {self.batcher.max_queue} images per request, got {len(tensors)}"
            )
        scores = await asyncio.gather(*(self.batcher.submit(served.engine, t) for t in tensors))
        return np.asarray(scores, dtype=np.float32)

    # --- internals ------------------------------------------------------------------------

    def _record(
        self,
        served: Served,
        result: Result,
        request_id: str,
        route: str,
        started: float,
        digest: str,
        image: bytes,
    ) -> None:
        if self.on_prediction is None:
            return
        record = PredictionRecord(
            time=time.time(),
            request_id=request_id,
            route=route,
            model_name=served.name,
            model_version=str(served.version),
            score=result["raw_score"],
            label=result["prediction"],
            threshold=result["threshold"],
            latency_ms=(time.perf_counter() - started) * 1000.0,
            image_sha256=digest,
            image=image if self.keep_images else None,
        )
        self._log.submit(self.on_prediction, record)


def _named(data: bytes, name: str | None) -> bytes | io.BytesIO:
    """Bytes that error messages call by the client's file name (its last part, shortened)."""
    if not name:
        return data
    stream = io.BytesIO(data)
    stream.name = name.replace("\\", "/").rsplit("/", 1)[-1][:80] or "upload"
    return stream
