"""Run the app under uvicorn: TLS, worker processes, graceful shutdown.

On SIGTERM uvicorn stops accepting connections and waits for in-flight requests; the app's
shutdown then scores everything still queued and flushes the prediction log before the
process exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.errors import MissingExtraError, UsageError
from pneumo_onnx.engine.serve.config import CONFIG_ENV, ServeConfig

log = logging.getLogger(__name__)
# Where a cloud platform tells its container to listen, in the order they are read: SageMaker
# (inference pipelines set it; alone it is 8080), then Vertex AI (always set there).
PLATFORM_PORT_ENVS = ("SAGEMAKER_BIND_TO_PORT", "AIP_HTTP_PORT")
DEFAULT_PORT = 8000


def platform_port(environ: Mapping[str, str] | None = None, default: int = DEFAULT_PORT) -> int:
    """The port to listen on when none is given: the first platform variable that is set."""
    env = os.environ if environ is None else environ
    for name in PLATFORM_PORT_ENVS:
        value = env.get(name, "").strip()
        if not value:
            continue
        if not (value.isascii() and value.isdecimal() and 1 <= int(value) <= 65535):
            raise UsageError(f"{name} must be a port number in 1-65535, got {value[:20]!r}")
        return int(value)
    return default


def run(
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
    graceful_timeout: float = 30.0,
    max_connections: int = 256,
    forwarded_allow_ips: str | None = None,
    header_timeout: float = 10.0,
    max_connections_per_client: int = 64,
) -> None:
    try:
        import uvicorn
    except ImportError as e:
        raise MissingExtraError("serve", "pneumo serve", e.name or "uvicorn") from e
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise UsageError("TLS needs both --ssl-certfile and --ssl-keyfile")
    for f in (ssl_certfile, ssl_keyfile):
        if f is not None and not f.is_file():
            raise UsageError(f"{f.name}: no such file")
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    if max_connections < 1:
        raise UsageError(f"--max-connections must be at least 1, got {max_connections}")
    if not (math.isfinite(header_timeout) and header_timeout > 0):
        raise UsageError(f"--header-timeout must be positive, got {header_timeout}")
    if max_connections_per_client < 0:
        raise UsageError(
            f"--max-connections-per-client must be >= 0 (0: no limit), got "
            f"{max_connections_per_client}"
        )
    from pneumo_onnx.engine.serve.front.protocol import (
        HEADER_TIMEOUT_ENV,
        PER_CLIENT_ENV,
        TRUSTED_ENV,
        GuardedH11Protocol,
    )

    os.environ[HEADER_TIMEOUT_ENV] = str(header_timeout)
    os.environ[PER_CLIENT_ENV] = str(max_connections_per_client)
    os.environ[TRUSTED_ENV] = forwarded_allow_ips or ""

    if not config.api_keys and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without API keys: anyone who can reach it can use it", host)
    options: dict[str, Any] = dict(
        host=host,
        port=port,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        timeout_graceful_shutdown=graceful_timeout,
        log_config=None,  # our JSON logging, configured by the CLI
        access_log=False,  # the Gate writes the access log, with request ids
        server_header=False,
        http=GuardedH11Protocol,  # a deadline for request headers
        limit_concurrency=max_connections,  # beyond: 503 at once
        # X-Forwarded-For is believed only from the proxies named (uvicorn would trust any
        # client on loopback, so anyone there could pick the address its rate limit counts).
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal for the handler it
    # found: make that handler a no-op, so a clean shutdown exits 0 as an orchestrator expects.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        if workers > 1:
            # Each worker process builds its own app (and loads its own model) from the env.
            config = dataclasses.replace(config, load_before_serving=True, host=host)
            os.environ[CONFIG_ENV] = config.to_json()
            uvicorn.run(
                "pneumo_onnx.engine.serve.app:app_from_env",
                factory=True,
                workers=workers,
                **options,
            )
        else:
            from pneumo_onnx.engine.serve.app import create_app

            uvicorn.run(create_app(dataclasses.replace(config, host=host)), **options)
    finally:
        signal.signal(signal.SIGTERM, previous)
