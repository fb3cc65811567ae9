"""One row of the prediction log, as the scoring path hands it to the log's writer."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

# Who asked: a client waiting for the answer, or a batch job (scored a chunk at a time, so its
# latency is the chunk's, not an image's: reports keep the two apart).
Source = Literal["interactive", "job"]


def iso_utc(t: float) -> str:
    """Unix seconds as the server shows times: ISO 8601, UTC, to the second."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


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
    source: Source = "interactive"
    image: bytes | None = None  # stored only by a log opened with store_images=True
    error: str | None = None
    caller: str = ""  # "key:" and an API key's fingerprint, or "address:" and the client's
    study_uid: str | None = None  # a DICOM image's StudyInstanceUID, for audit
    series_uid: str | None = None
    sop_uid: str | None = None

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
