"""`pneumo serve --ray`: the same FastAPI app, built per replica, as Ray Serve deployment
replicas behind Ray's HTTP proxy.

Each replica builds its own app from the config (`create_app`, the one scoring path: its own
batcher, decode workers and model) when Ray starts it, so nothing unpicklable crosses to the
cluster, and Ray's proxy routes each request to one replica. On a local Ray by default; on an
existing cluster when RAY_ADDRESS names one. Ray users deploy it themselves with
`serve run pneumo_onnx.engine.serve.ray_serve:build` (settings as PNEUMO_* variables, or
`key=value` arguments named like the config's fields).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.errors import MissingExtraError, UsageError
from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.metrics import SHARED_DIR_ENV, shared_metrics_dir

log = logging.getLogger(__name__)
APP_NAME = "pneumo"
DEPLOYMENT_NAME = "PneumoServer"
# Requests a replica takes at once before Ray queues at the proxy: enough to fill a batch
# and keep the decode workers busy; its own admission still sheds past --max-queue.
MAX_ONGOING = 64


def deployment_options(config: ServeConfig) -> dict[str, Any]:
    """`serve.deployment` options: the replica count or autoscaling policy, and a drain long
    enough for what a replica holds (a queued batch, the log's flush)."""
    low, high = config.replica_range
    shape: dict[str, Any] = (
        {
            "autoscaling_config": {
                "min_replicas": low,
                "initial_replicas": max(low, 1),
                "max_replicas": high,
                # about half a batch in flight per replica before another is added
                "target_ongoing_requests": max(2, config.max_batch // 2),
            }
        }
        if config.autoscale is not None
        else {"num_replicas": low}
    )
    return {
        **shape,
        "max_ongoing_requests": max(MAX_ONGOING, config.max_batch),
        "graceful_shutdown_timeout_s": config.graceful_timeout,
        "health_check_period_s": 5.0,
        # A replica loads its model before Ray routes to it (its health check passes once
        # the app's lifespan has run), so no request meets an unloaded model.
        "health_check_timeout_s": 60.0,
    }


def _deployment_class() -> Any:
    """The deployment class, defined when Ray is importable (the `ray` extra)."""
    try:
        from ray import serve
    except ImportError as e:
        raise MissingExtraError("ray", "pneumo serve --ray", e.name or "ray[serve]") from e

    @serve.ingress()
    class PneumoServer:
        """One replica: the whole app, built in the replica's process from the config."""

        def __init__(self, config_json: str) -> None:
            self.config = ServeConfig.from_json(config_json)

        def __serve_build_asgi_app__(self) -> Any:
            from pneumo_onnx.engine.serve.app import create_app
            from pneumo_onnx.engine.serve.logs import configure

            configure("INFO")  # the replica's own JSON log lines, as a worker process writes
            return create_app(self.config)

    return PneumoServer


def application(config: ServeConfig, metrics_dir: Path | None = None) -> Any:
    """The Ray Serve application for `config`: every replica loads before it serves, and
    writes its metrics into `metrics_dir` (on its node) when given, so that a scrape of any
    replica adds up every replica of that node."""
    from ray import serve

    config = dataclasses.replace(config, load_before_serving=True)
    options = deployment_options(config)
    if metrics_dir is not None:
        env = {SHARED_DIR_ENV: str(metrics_dir)}
        options["ray_actor_options"] = {"runtime_env": {"env_vars": env}}
    deployment = serve.deployment(name=DEPLOYMENT_NAME, **options)
    return deployment(_deployment_class()).bind(config.to_json())


def build(args: dict[str, str]) -> Any:
    """For Ray users: `serve run pneumo_onnx.engine.serve.ray_serve:build [name=value ...]`,
    the settings from PNEUMO_* variables and PNEUMO_CONFIG's file as for `pneumo serve`, then
    the arguments (setting names, e.g. replicas=2 max_batch=16)."""
    from pneumo_onnx.engine.serve.config import settings
    from pneumo_onnx.engine.serve.config_sources import resolve

    known = settings()
    flags: dict[str, Any] = {"ray": True}
    for name, text in args.items():
        key = name.replace("-", "_")
        if key not in known:
            raise UsageError(f"{name}: not a pneumo serve setting")
        try:
            flags[key] = known[key][0].from_text(text)
        except ValueError as e:
            raise UsageError(f"{name}: {e}") from None
    return application(resolve(flags).config)


def run(config: ServeConfig) -> None:
    """Deploy on Ray (local, or RAY_ADDRESS) with the proxy on host:port, wait for SIGTERM or
    Ctrl-C, then drain: Ray stops routing to the replicas and waits for their in-flight
    requests and their app's shutdown (queued images scored, the log flushed)."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise MissingExtraError("ray", "pneumo serve --ray", e.name or "ray[serve]") from e
    address = os.environ.get("RAY_ADDRESS")
    stop = threading.Event()
    # Ctrl-C reaches the whole process group: the local Ray's processes (started here, and
    # inheriting an ignored SIGINT) must outlive it, so that the replicas can drain.
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with shared_metrics_dir() as metrics_dir:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=True)
            try:
                serve.start(http_options=_http_options(config))
                for s in previous:
                    signal.signal(s, lambda *_: stop.set())
                serve.run(application(config, metrics_dir), name=APP_NAME, route_prefix="/")
                _log_serving(config, address)
                while not stop.is_set():
                    time.sleep(0.2)
                log.info("draining the Ray Serve replicas")
            finally:
                _undeploy(bool(address))
                ray.shutdown()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _log_serving(config: ServeConfig, address: str | None) -> None:
    low, high = config.replica_range
    log.info(
        "serving on Ray (%s) at %s:%d: %s",
        address or "a local Ray",
        config.host,
        config.listen_port,
        f"{low} replica(s)" if config.autoscale is None else f"{low}-{high} replicas",
    )


def _undeploy(on_cluster: bool) -> None:
    """Delete the application (its replicas drain); stop Serve too unless it is a cluster's."""
    from ray import serve

    try:
        serve.delete(APP_NAME)
        if not on_cluster:
            serve.shutdown()
    except Exception as e:  # Serve may not have started: say so, and stop Ray anyway
        log.warning("Ray Serve could not be stopped cleanly: %s", e)


def _http_options(config: ServeConfig) -> dict[str, Any]:
    """Ray's HTTP proxy on the configured address, with TLS when given."""
    options: dict[str, Any] = {"host": config.host, "port": config.listen_port}
    if config.ssl_certfile is not None and config.ssl_keyfile is not None:
        options.update(ssl_certfile=str(config.ssl_certfile), ssl_keyfile=str(config.ssl_keyfile))
    return options
