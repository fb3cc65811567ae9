"""Everything `pneumo serve` can be told, in one frozen object (the CLI builds it, tests build
it directly, and `--workers N` passes it to each worker process as JSON)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import UsageError
from engine.runtime.choices import PREPROCESSING

CONFIG_ENV = "PNEUMO_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    model_repo: Path | None = None  # None: the repository shipped with the package
    model: str | None = None  # None: the first model of the repository
    device: str = "cpu"
    variant: str | None = None
    # auto: fast where the model's conversion measured it faithful, else reference
    preprocessing: str = "auto"
    threads: int | None = None  # onnxruntime intra-op threads
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256
    decode_threads: int = 2
    cache_size: int = 1024
    max_upload_mb: float = 16.0
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    open_health: bool = True
    open_metrics: bool = True
    rate_limit: float = 0.0  # requests per second per client; 0: off
    rate_burst: int = 20
    state_dir: Path = Path("pneumo-state")
    log_images: bool = False
    # Several worker processes share one socket, so a worker must not accept requests before
    # its model is ready; a single process loads in the background and answers liveness meanwhile.
    load_before_serving: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.max_batch < 1:
            problems.append("--max-batch must be at least 1")
        if self.max_queue < 1:
            problems.append("--max-queue must be at least 1")
        if self.decode_threads < 1:
            problems.append("--decode-threads must be at least 1")
        if not (math.isfinite(self.max_delay_ms) and 0 <= self.max_delay_ms <= 1000):
            problems.append("--max-delay-ms must be between 0 and 1000")
        if not (math.isfinite(self.max_upload_mb) and self.max_upload_mb > 0):
            problems.append("--max-upload-mb must be positive")
        if not (math.isfinite(self.rate_limit) and self.rate_limit >= 0):
            problems.append("--rate-limit must be a non-negative number")
        if self.cache_size < 0:
            problems.append("--cache-size must be >= 0")
        if self.preprocessing not in PREPROCESSING:
            problems.append(f"--preprocessing must be one of {', '.join(PREPROCESSING)}")
        if problems:
            raise UsageError("; ".join(problems))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_json(self) -> str:
        data = asdict(self)
        for k, v in data.items():
            if isinstance(v, Path):
                data[k] = str(v)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data: dict[str, Any] = json.loads(text)
        kinds = {f.name: f.type for f in fields(cls)}
        for k in ("model_repo", "state_dir"):
            if data.get(k) is not None:
                data[k] = Path(data[k])
        data["api_keys"] = tuple(data.get("api_keys", ()))
        return cls(**{k: v for k, v in data.items() if k in kinds})
