"""Every setting of `pneumo serve`, written once: its name, default, type, unit, valid range and
help are one field of the frozen `ServeConfig`. From it come the command-line options, the
`PNEUMO_<NAME>` environment variables, the keys of a `--config FILE.toml` file
(`config_sources`), the checks (every problem reported at once) and the JSON a `--workers N`
process gets its config from.

Precedence, lowest first: the defaults here < the TOML file < the environment < command-line
flags. API and admin keys are not settings: they come from PNEUMO_API_KEYS / PNEUMO_ADMIN_KEYS
and the key files (`front.security`), and are never shown.
"""

from __future__ import annotations

import functools
import json
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.repository.variants import VARIANT_FILES
from pneumo_onnx.engine.runtime.choices import DEVICES, PREPROCESSING, PREPROCESSING_HELP
from pneumo_onnx.engine.runtime.limits import MAX_PIXELS
from pneumo_onnx.engine.runtime.sandbox import Limits
from pneumo_onnx.engine.serve.setting import Kind, Setting, SettingsError, flag
from pneumo_onnx.engine.serve.store.backend import database_problem

CONFIG_ENV = "PNEUMO_SERVE_CONFIG"  # the config of a --workers N process, as JSON
# The addresses that are this machine only: listening on one, the server accepts loopback
# Host headers only (a page elsewhere cannot reach it through DNS rebinding).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Where a cloud platform tells its container to listen, in the order they are read: SageMaker
# (inference pipelines set it; alone it is 8080), then Vertex AI (always set there).
PLATFORM_PORT_ENVS = ("SAGEMAKER_BIND_TO_PORT", "AIP_HTTP_PORT")
DEFAULT_PORT = 8000
MB = 2**20
MPX = 1_000_000
LARGEST_MPX = MAX_PIXELS / MPX


@dataclass(frozen=True)
class ServeConfig:
    # The model
    model_repo: Annotated[
        Path | None, Setting("model repository folder (default: the shipped models)")
    ] = None
    model: Annotated[str | None, Setting("model name in the repository (default: first)")] = None
    variant: Annotated[
        str | None,
        Setting(
            "which file of a repository version to run (default fp32)", choices=tuple(VARIANT_FILES)
        ),
    ] = None
    device: Annotated[str, Setting("execution provider", choices=DEVICES)] = DEVICES[0]
    preprocessing: Annotated[str, Setting(PREPROCESSING_HELP, choices=PREPROCESSING)] = (
        PREPROCESSING[0]
    )
    threads: Annotated[
        int | None, Setting("onnxruntime intra-op threads (default: one per core)", low=1)
    ] = None
    # The listening socket
    host: Annotated[
        str,
        Setting("address to listen on; on a loopback one, requests must name a loopback Host"),
    ] = "127.0.0.1"
    port: Annotated[
        int | None,
        Setting(
            "port to listen on; not given: $SAGEMAKER_BIND_TO_PORT, else $AIP_HTTP_PORT, else "
            f"the default (default: {DEFAULT_PORT})",
            low=0,
            high=65535,
        ),
    ] = None
    grpc_port: Annotated[
        int | None,
        Setting(
            "port of the KServe V2 gRPC service, on --host beside HTTP (default: off)",
            low=0,
            high=65535,
        ),
    ] = None
    workers: Annotated[int, Setting("server processes", low=1)] = 1
    ssl_certfile: Annotated[Path | None, Setting("TLS certificate (PEM)")] = None
    ssl_keyfile: Annotated[Path | None, Setting("TLS private key (PEM)")] = None
    max_connections: Annotated[
        int, Setting("open connections (idle ones are closed to make room; beyond: 503)", low=1)
    ] = 256
    max_connections_per_client: Annotated[
        int,
        Setting("open connections from one address, trusted proxies excepted (0: no limit)", low=0),
    ] = 64
    header_timeout: Annotated[
        float, Setting("seconds request headers may take", unit="s", positive=True)
    ] = 10.0
    body_timeout: Annotated[
        float, Setting("seconds a request body may take", unit="s", positive=True)
    ] = 60.0
    forwarded_allow_ips: Annotated[
        tuple[str, ...],
        Setting("proxies whose X-Forwarded-For is believed, comma-separated (default: none)"),
    ] = ()
    graceful_timeout: Annotated[
        float,
        Setting(
            "seconds a shutdown (SIGTERM) waits for requests in flight", unit="s", positive=True
        ),
    ] = 30.0
    # Serving past one machine
    ray: Annotated[
        bool,
        Setting("serve as Ray Serve replicas: on a local Ray, or the cluster RAY_ADDRESS names"),
    ] = False
    replicas: Annotated[int, Setting("Ray Serve replicas (with --ray)", low=1)] = 1
    autoscale: Annotated[
        str | None,
        Setting("MIN:MAX Ray Serve replicas, added and removed with the load (with --ray)"),
    ] = None
    # Batching and decoding
    max_batch: Annotated[int, Setting("dynamic batch size", low=1)] = 32
    max_delay_ms: Annotated[float, Setting("batch wait", unit="ms", low=0, high=1000)] = 5.0
    max_queue: Annotated[int, Setting("queued images before 503", low=1)] = 256
    decode_workers: Annotated[
        int,
        Setting(
            "processes that decode images and parse large bodies, each memory-capped",
            low=1,
            aliases=("--decode-threads",),  # its name before decoding moved to processes
        ),
    ] = 2
    decode_memory_mb: Annotated[
        float,
        Setting("memory the decodes of all decode workers may hold at once", unit="MB", low=64),
    ] = 512.0
    decode_timeout: Annotated[
        float,
        Setting(
            "seconds an image's header, or its decode, may take (beyond: killed, 400)",
            unit="s",
            positive=True,
        ),
    ] = 10.0
    max_queue_delay: Annotated[
        float,
        Setting(
            "seconds images may wait for a decoder before new requests get 503",
            unit="s",
            positive=True,
        ),
    ] = 2.0
    cache_size: Annotated[int, Setting("cached results (0: off)", low=0)] = 1024
    # What a request, and all of them together, may hold
    max_upload_mb: Annotated[float, Setting("request size limit", unit="MB", positive=True)] = 16.0
    max_request_mpx: Annotated[
        float,
        Setting(
            f"decoded Mpx of images per request (at least {LARGEST_MPX:g}: one largest image)",
            unit="Mpx",
        ),
    ] = 200.0
    max_decode_mpx: Annotated[
        float,
        Setting(
            "decoded Mpx admitted and waiting to be decoded, all requests (beyond: 503)", unit="Mpx"
        ),
    ] = 400.0
    max_inflight_mb: Annotated[
        float,
        Setting(
            "request bodies being received or handled at once (beyond: 503)",
            unit="MB",
            positive=True,
        ),
    ] = 256.0
    # Access
    api_key_file: Annotated[Path | None, Setting("one API key per line")] = None
    admin_key_file: Annotated[Path | None, Setting("one admin key per line (repository)")] = None
    protect_health: Annotated[bool, Setting("health routes need a key")] = False
    protect_metrics: Annotated[bool, Setting("/metrics needs a key")] = False
    rate_limit: Annotated[float, Setting("requests/s per client (0: off)", unit="1/s", low=0)] = 0.0
    rate_burst: Annotated[int, Setting("requests a client may burst", low=1)] = 20
    # State on disk and jobs
    state_dir: Annotated[Path, Setting("prediction log and job database folder")] = Path(
        "pneumo-state"
    )
    database: Annotated[
        str,
        Setting(
            "postgresql://user[:password]@host[:port]/dbname: the prediction log and job store "
            "that several servers share (default: SQLite files in --state-dir)",
            secret=True,
        ),
    ] = field(default="", repr=False)
    log_images: Annotated[bool, Setting("also store images in the log")] = False
    log_retention_days: Annotated[
        float,
        Setting("delete logged predictions older than this (0: keep all)", unit="days", low=0),
    ] = 90.0
    job_ttl: Annotated[
        float,
        Setting("hours a finished or failed job is kept (0: until deleted)", unit="hours", low=0),
    ] = 168.0
    max_job_mb: Annotated[
        float, Setting("unpacked images of one job request", unit="MB", positive=True)
    ] = 256.0
    job_store_mb: Annotated[
        float,
        Setting("images of all unfinished jobs together (beyond: 503)", unit="MB", positive=True),
    ] = 2048.0
    # Derived by `pneumo serve`, not settings: the keys (PNEUMO_API_KEYS, PNEUMO_ADMIN_KEYS and
    # the key files), and whether this is one of --workers N processes, which share one socket
    # and so must not accept requests before their model is ready (a single process loads in
    # the background and answers liveness meanwhile).
    api_keys: Annotated[tuple[str, ...], Setting("user keys", settable=False)] = field(
        default=(), repr=False
    )
    admin_keys: Annotated[
        tuple[str, ...], Setting("admin keys (repository control)", settable=False)
    ] = field(default=(), repr=False)
    load_before_serving: Annotated[bool, Setting("a worker of several", settable=False)] = False

    def __post_init__(self) -> None:
        problems = [
            (name, what)
            for name, (_, setting) in schema().items()
            if (value := getattr(self, name)) is not None
            and (what := setting.problem(value)) is not None
        ]
        bad = {name for name, _ in problems}
        if not bad & {"max_request_mpx", "max_decode_mpx"}:
            if not (math.isfinite(self.max_request_mpx) and self.max_request_mpx >= LARGEST_MPX):
                what = f"must be at least {LARGEST_MPX:g} (one largest image)"
                problems.append(("max_request_mpx", what))
            elif not (
                math.isfinite(self.max_decode_mpx) and self.max_decode_mpx >= self.max_request_mpx
            ):
                problems.append(("max_decode_mpx", "must be at least --max-request-mpx"))
        for large, small in (("max_inflight_mb", "max_upload_mb"), ("job_store_mb", "max_job_mb")):
            if not bad & {large, small} and getattr(self, large) < getattr(self, small):
                problems.append((large, f"must be at least {flag(small)}"))
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            pair = ["ssl_certfile", "ssl_keyfile"]
            given, missing = pair if self.ssl_keyfile is None else pair[::-1]
            problems.append((given, f"is given without {flag(missing)}: TLS needs both"))
        if self.database and (problem := database_problem(self.database)):
            problems.append(("database", problem))
        problems += self._replica_problems()
        if self.grpc_port is not None:
            if self.workers > 1 or self.ray:
                problems.append(
                    ("grpc_port", "is served by one process: not with --workers N or --ray")
                )
            elif self.port is not None and self.grpc_port == self.port != 0:
                problems.append(("grpc_port", "must differ from --port"))
        if problems:
            raise SettingsError(problems)

    def _replica_problems(self) -> list[tuple[str, str]]:
        if not self.ray:
            return [
                (name, "needs --ray")
                for name, given in (("replicas", self.replicas != 1), ("autoscale", self.autoscale))
                if given
            ]
        if self.workers > 1:
            return [("workers", "is for one machine: with --ray, use --replicas")]
        try:
            self.replica_range  # noqa: B018 - parsed here to report it with the rest
        except ValueError as e:
            return [("autoscale", str(e))]
        return []

    # --- the units the parts work in, converted here once ---------------------------------

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * MB)

    @property
    def max_job_bytes(self) -> int:
        return int(self.max_job_mb * MB)

    @property
    def job_store_bytes(self) -> int:
        return int(self.job_store_mb * MB)

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0

    @property
    def max_delay_us(self) -> int:
        """As the V2 model config states it (max_queue_delay_microseconds)."""
        return round(self.max_delay_ms * 1000)

    @property
    def max_request_pixels(self) -> int:
        return int(self.max_request_mpx * MPX)

    @property
    def max_decode_pixels(self) -> int:
        return int(self.max_decode_mpx * MPX)

    @property
    def decode_limits(self) -> Limits:
        """The decode workers' limits: one input at most an upload."""
        return Limits(
            memory=int(self.decode_memory_mb * MB),
            max_input=self.max_upload_bytes,
            seconds=self.decode_timeout,
        )

    @property
    def replica_range(self) -> tuple[int, int]:
        """The least and most Ray Serve replicas: --replicas N twice, or --autoscale MIN:MAX."""
        if self.autoscale is None:
            return self.replicas, self.replicas
        low, sep, high = self.autoscale.partition(":")
        if not (sep and low.strip().isdecimal() and high.strip().isdecimal()):
            raise ValueError(f"must be MIN:MAX (e.g. 1:4), got {self.autoscale!r}")
        if not 0 <= int(low) <= int(high) or int(high) < 1:
            raise ValueError(f"needs 0 <= MIN <= MAX and MAX >= 1, got {self.autoscale!r}")
        return int(low), int(high)

    @property
    def listen_port(self) -> int:
        """The port given, else the one the cloud platform names (read when serving, in the
        process that binds: the platforms set it in the container's environment)."""
        return self.port if self.port is not None else platform_port(os.environ)

    @property
    def loopback_only(self) -> bool:
        """Listening on loopback only: then a request's Host must name loopback too (a page
        elsewhere cannot reach the server through DNS rebinding)."""
        return self.host in LOOPBACK_HOSTS

    # --- to a --workers N process and back ------------------------------------------------

    def to_json(self) -> str:
        data = asdict(self)
        for k, v in data.items():
            if isinstance(v, Path):
                data[k] = str(v)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data: dict[str, Any] = json.loads(text)
        return cls(
            **{k: kind.from_plain(data[k]) for k, (kind, _) in schema().items() if k in data}
        )


def platform_port(environ: Mapping[str, str], default: int = DEFAULT_PORT) -> int:
    """The port to listen on when none is given: the first platform variable that is set."""
    for name in PLATFORM_PORT_ENVS:
        value = environ.get(name, "").strip()
        if not value:
            continue
        if not (value.isascii() and value.isdecimal() and 1 <= int(value) <= 65535):
            raise UsageError(f"{name} must be a port number in 1-65535, got {value[:20]!r}")
        return int(value)
    return default


# --- the schema, for the sources that fill it -----------------------------------------------


@functools.cache
def schema() -> dict[str, tuple[Kind, Setting]]:
    """Every field of ServeConfig: its type and its Setting, in declaration order."""
    hints = typing.get_type_hints(ServeConfig, include_extras=True)
    found = {}
    for f in fields(ServeConfig):
        hint, setting = typing.get_args(hints[f.name])
        found[f.name] = (Kind.of(hint), setting)
    return found


def settings() -> dict[str, tuple[Kind, Setting]]:
    """Every setting a user gives (flag, environment, file), in the order of `--help`."""
    return {name: ks for name, ks in schema().items() if ks[1].settable}
