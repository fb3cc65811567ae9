"""The gRPC server: grpc.aio on the app's own event loop, started and stopped with the app
(`app.create_app`'s lifespan). Its limits are the server's settings: a message may be as large
as an upload (`--max-upload-mb`; larger: RESOURCE_EXHAUSTED before the handler runs), calls at
once as many as HTTP connections (`--max-connections`; beyond: RESOURCE_EXHAUSTED), streams per
connection as connections per client (`--max-connections-per-client`), TLS as HTTP's
(`--ssl-certfile`, `--ssl-keyfile`). A shutdown drains: no new calls, the calls in flight get
`--graceful-timeout` to finish, and it starts when SIGTERM arrives (`server.run`), alongside
uvicorn's own drain."""

from __future__ import annotations

import asyncio
import logging

import grpc

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.serve.front.budget import InflightBytes
from pneumo_onnx.engine.serve.front.rpc.guard import Guard
from pneumo_onnx.engine.serve.front.rpc.methods import METHODS, SERVICE
from pneumo_onnx.engine.serve.front.security import AccessControl
from pneumo_onnx.engine.serve.state import ServerState

log = logging.getLogger(__name__)


class GrpcDoor:
    def __init__(self, state: ServerState, control: AccessControl, inflight: InflightBytes) -> None:
        self.state = state
        self.control = control
        self.inflight = inflight
        self.port = 0  # bound, once started (the setting may say 0: any free port)
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.state.config
        assert config.grpc_port is not None
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", config.max_upload_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a silent share
            # Flow-control windows stay at their 64 KB start: with probing, grpc grows them to
            # megabytes per stream, bytes it holds before any limit of ours is consulted.
            ("grpc.http2.bdp_probe", 0),
        ]
        if config.max_connections_per_client:
            options.append(("grpc.max_concurrent_streams", config.max_connections_per_client))
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=config.max_connections)
        handlers = {
            m.name: Guard(m, self.state, self.control, self.inflight).handler() for m in METHODS
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        host = f"[{config.host}]" if ":" in config.host else config.host
        address = f"{host}:{config.grpc_port}"
        try:
            if config.ssl_certfile and config.ssl_keyfile:
                pair = (config.ssl_keyfile.read_bytes(), config.ssl_certfile.read_bytes())
                self.port = server.add_secure_port(address, grpc.ssl_server_credentials([pair]))
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as e:  # grpc: "Failed to bind to address ..."
            raise UsageError(f"cannot serve gRPC on {address}: {e}") from None
        await server.start()
        self._server, self._loop = server, asyncio.get_running_loop()
        log.info("gRPC (KServe V2) on %s:%d", config.host, self.port)

    def begin_drain(self) -> None:
        """From a signal handler (any thread): stop taking calls now, drain in the background."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drain)

    async def stop(self) -> None:
        """Drain (if SIGTERM has not already begun it) and wait until the server has stopped."""
        if self._server is None:
            return
        self._drain()
        assert self._stopping is not None
        await self._stopping

    def _drain(self) -> None:
        if self._stopping is None and self._server is not None:
            grace = self.state.config.graceful_timeout
            self._stopping = asyncio.ensure_future(self._server.stop(grace))
