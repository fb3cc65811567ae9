"""Run the app under uvicorn: TLS, worker processes, graceful shutdown.

On SIGTERM uvicorn stops accepting connections and waits for in-flight requests; the app's
shutdown then scores everything still queued and flushes the prediction log before the
process exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from typing import Any

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.serve.config import CONFIG_ENV, ServeConfig
from pneumo_onnx.engine.serve.metrics import shared_metrics_dir

log = logging.getLogger(__name__)


def run(config: ServeConfig) -> None:
    """Serve `config` until SIGTERM (or Ctrl-C): under uvicorn here, or as Ray Serve replicas."""
    port = config.listen_port  # a bad platform port variable stops the server before it loads
    if config.ray:
        _check_files(config)
        from pneumo_onnx.engine.serve import ray_serve

        _warn_if_open(config)
        ray_serve.run(config)
        return
    import uvicorn  # the serve extra (a missing one: the CLI says which, MissingExtraError.of)

    _check_files(config)
    from pneumo_onnx.engine.serve.front.protocol import GuardedHttpProtocol

    _warn_if_open(config)
    trusted = list(config.forwarded_allow_ips)
    options: dict[str, Any] = dict(
        host=config.host,
        port=port,
        ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
        timeout_graceful_shutdown=config.graceful_timeout,
        log_config=None,  # our JSON logging, configured by the CLI
        access_log=False,  # the Gate writes the access log, with request ids
        server_header=False,
        # a deadline for request headers, a cap per client address
        http=GuardedHttpProtocol.configured(
            config.header_timeout, config.max_connections_per_client, config.forwarded_allow_ips
        ),
        limit_concurrency=config.max_connections,  # beyond: 503 at once
        # X-Forwarded-For is believed only from the proxies named (uvicorn would trust any
        # client on loopback, so anyone there could pick the address its rate limit counts).
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal for the handler it
    # found: make that handler a no-op, so a clean shutdown exits 0 as an orchestrator expects.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        if config.workers > 1:
            # Each worker process builds its own app (and loads its own model) from the env,
            # and writes its metrics where the one answering a scrape adds them all up.
            config = dataclasses.replace(config, load_before_serving=True)
            os.environ[CONFIG_ENV] = config.to_json()
            with shared_metrics_dir():
                uvicorn.run(
                    "pneumo_onnx.engine.serve.app:app_from_env",
                    factory=True,
                    workers=config.workers,
                    **options,
                )
        else:
            from pneumo_onnx.engine.serve.app import create_app

            _serve_one(uvicorn, create_app(config), options)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve_one(uvicorn: Any, app: Any, options: dict[str, Any]) -> None:
    """`uvicorn.run` for one process, whose SIGTERM (or Ctrl-C) also starts the gRPC door's
    drain at once, so both doors drain together (not gRPC only after HTTP's grace)."""

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if app.state.grpc is not None:
                app.state.grpc.begin_drain()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, **options))
    server.run()
    if not server.started:  # as uvicorn.run: the socket could not be bound, startup failed
        raise SystemExit(3)


def _check_files(config: ServeConfig) -> None:
    if config.model_repo is not None and not config.model_repo.is_dir():
        raise UsageError(f"{config.model_repo}: no such model repository folder")
    for f in (config.ssl_certfile, config.ssl_keyfile):
        if f is not None and not f.is_file():
            raise UsageError(f"{f.name}: no such file")


def _warn_if_open(config: ServeConfig) -> None:
    if not config.api_keys and not config.loopback_only:
        log.warning(
            "serving on %s without API keys: anyone who can reach it can use it", config.host
        )
