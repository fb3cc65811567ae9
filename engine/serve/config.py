"""Everything `pneumo serve` can be told, in one frozen object (the CLI builds it, tests build
it directly, and `--workers N` passes it to each worker process as JSON)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.choices import PREPROCESSING
from pneumo_onnx.engine.runtime.limits import MAX_PIXELS
from pneumo_onnx.engine.runtime.sandbox import Limits
from pneumo_onnx.engine.serve.store.backend import database_problem

CONFIG_ENV = "PNEUMO_SERVE_CONFIG"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


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
    decode_workers: int = 2  # processes that parse untrusted bytes (engine.runtime.sandbox)
    decode_memory_mb: float = 512.0  # what their decodes may hold at once, all together
    decode_timeout_s: float = 10.0  # a header read, or a decode, that takes longer is killed
    max_queue_delay_s: float = 2.0  # images waiting this long for a decoder: new ones get 503
    cache_size: int = 1024
    max_upload_mb: float = 16.0
    max_request_mpx: float = 200.0  # decoded pixels per request
    max_decode_mpx: float = 400.0  # decoded pixels admitted and not yet decoded, all requests
    max_inflight_mb: float = 256.0  # request bodies being received or handled at once
    body_timeout_s: float = 60.0  # a request body must arrive within this
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    admin_keys: tuple[str, ...] = field(default=(), repr=False)  # repository control
    host: str = "127.0.0.1"  # where the server listens: a loopback one accepts loopback Hosts only
    open_health: bool = True
    open_metrics: bool = True
    rate_limit: float = 0.0  # requests per second per client; 0: off
    rate_burst: int = 20
    state_dir: Path = Path("pneumo-state")
    # A postgresql:// URL: the prediction log and job store that several servers share ("":
    # SQLite files in state_dir). Not in repr: the URL may hold a password.
    database: str = field(default="", repr=False)
    log_images: bool = False
    log_retention_days: float = 90.0  # predictions older than this are deleted; 0: keep all
    job_ttl_hours: float = 168.0  # finished and failed jobs are deleted after this; 0: keep
    max_job_mb: float = 256.0  # unpacked image bytes of one job request
    job_store_mb: float = 2048.0  # image bytes of all unfinished jobs together
    # Several worker processes share one socket, so a worker must not accept requests before
    # its model is ready; a single process loads in the background and answers liveness meanwhile.
    load_before_serving: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.max_batch < 1:
            problems.append("--max-batch must be at least 1")
        if self.max_queue < 1:
            problems.append("--max-queue must be at least 1")
        if self.decode_workers < 1:
            problems.append("--decode-workers must be at least 1")
        if not (math.isfinite(self.decode_memory_mb) and self.decode_memory_mb >= 64):
            problems.append("--decode-memory-mb must be at least 64")
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
        for name, value in (
            ("--max-inflight-mb", self.max_inflight_mb),
            ("--body-timeout", self.body_timeout_s),
            ("--decode-timeout", self.decode_timeout_s),
            ("--max-queue-delay", self.max_queue_delay_s),
            ("--max-job-mb", self.max_job_mb),
            ("--job-store-mb", self.job_store_mb),
        ):
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be positive")
        for name, value in (
            ("--log-retention-days", self.log_retention_days),
            ("--job-ttl", self.job_ttl_hours),
        ):
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a non-negative number (0: keep forever)")
        largest = MAX_PIXELS / 1e6
        if not (math.isfinite(self.max_request_mpx) and self.max_request_mpx >= largest):
            problems.append(f"--max-request-mpx must be at least {largest:g} (one largest image)")
        elif not (
            math.isfinite(self.max_decode_mpx) and self.max_decode_mpx >= self.max_request_mpx
        ):
            problems.append("--max-decode-mpx must be at least --max-request-mpx")
        if self.max_inflight_mb < self.max_upload_mb:
            problems.append("--max-inflight-mb must be at least --max-upload-mb")
        if self.job_store_mb < self.max_job_mb:
            problems.append("--job-store-mb must be at least --max-job-mb")
        if self.database and (problem := database_problem(self.database)):
            problems.append(problem)
        if problems:
            raise UsageError("; ".join(problems))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def decode_limits(self) -> Limits:
        """The decode workers' limits: one input at most an upload."""
        return Limits(
            memory=int(self.decode_memory_mb * 2**20),
            max_input=self.max_upload_bytes,
            seconds=self.decode_timeout_s,
        )

    @property
    def loopback_only(self) -> bool:
        """Listening on loopback only: then a request's Host must name loopback too (a page
        elsewhere cannot reach the server through DNS rebinding)."""
        return self.host in LOOPBACK_HOSTS

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
        data["admin_keys"] = tuple(data.get("admin_keys", ()))
        return cls(**{k: v for k, v in data.items() if k in kinds})
