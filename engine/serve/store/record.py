"""One row of the prediction log, as the scoring path hands it to the log's writer."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PredictionRecord:
    """One scored (or failed) image. `score`/`label`/`threshold` are None when `error` is set."""

    time: float  # unix seconds
    request_id: str
    route: str
    model_name: str
    model_version: str
    score: float | None
    label: str | None
    threshold: float | None
    latency_ms: float
    image_sha256: str
    image: bytes | None = None  # stored only by a log opened with store_images=True
    error: str | None = None

    @classmethod
    def from_result(
        cls,
        result: dict[str, Any],
        *,
        image: bytes,
        request_id: str,
        route: str,
        model_name: str,
        model_version: str,
        latency_ms: float,
        at: float | None = None,
    ) -> PredictionRecord:
        """A record from one `Engine.predict_batch` result dict and the image bytes it scored."""
        return cls(
            time=time.time() if at is None else at,
            request_id=request_id,
            route=route,
            model_name=model_name,
            model_version=model_version,
            score=result.get("raw_score"),
            label=result.get("prediction"),
            threshold=result.get("threshold"),
            latency_ms=latency_ms,
            image_sha256=hashlib.sha256(image).hexdigest(),
            image=image,
            error=result.get("error"),
        )
