"""The methods of `inference.GRPCInferenceService` that this server answers, each declared
with who may call it (the same policies as the HTTP routes: `security.Access`) and the message
it takes. A method not listed here gets UNIMPLEMENTED from grpc itself. Each is thin: the answer
comes from `v2_models` (metadata, readiness, the repository) or `ScoringService` (inference),
exactly as the HTTP routes get theirs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from pneumo_onnx.engine.errors import Overloaded, UsageError
from pneumo_onnx.engine.serve.front import v2_models
from pneumo_onnx.engine.serve.front.inputs import off_loop
from pneumo_onnx.engine.serve.front.rpc import codec
from pneumo_onnx.engine.serve.front.rpc import pneumo_v2_pb2 as pb
from pneumo_onnx.engine.serve.front.security import Access
from pneumo_onnx.engine.serve.state import ServerState

SERVICE = "inference.GRPCInferenceService"  # the protocol's name: what clients call


@dataclass(frozen=True)
class Call:
    """One call as a method sees it: the server, the call's request id, who calls."""

    state: ServerState
    request_id: str
    caller: str


Handler = Callable[[Call, Any], Awaitable[Message]]


@dataclass(frozen=True)
class Method:
    name: str
    access: Access
    request: type[Message]
    handler: Handler
    large: bool = False  # its message may be as large as an upload (else: SMALL at most)

    @property
    def route(self) -> str:
        """Its label in metrics and the access log."""
        return f"grpc:{self.name}"


async def server_live(call: Call, _: pb.ServerLiveRequest) -> Message:
    return pb.ServerLiveResponse(live=True)


async def server_ready(call: Call, _: pb.ServerReadyRequest) -> Message:
    ok, _problems = v2_models.readiness(call.state)
    return pb.ServerReadyResponse(ready=ok)


async def model_ready(call: Call, r: pb.ModelReadyRequest) -> Message:
    why = v2_models.model_ready(call.state, r.name, r.version or None)
    return pb.ModelReadyResponse(ready=why is None)


async def server_metadata(call: Call, _: pb.ServerMetadataRequest) -> Message:
    return pb.ServerMetadataResponse(**v2_models.server_metadata())


async def model_metadata(call: Call, r: pb.ModelMetadataRequest) -> Message:
    """The HTTP metadata without its `parameters` (labels, threshold, scaling): the gRPC
    message has no field for them (HTTP GET /v2/models/<name> has them)."""
    meta = v2_models.metadata(call.state, v2_models.served(call.state, r.name, r.version or None))
    tensors = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=[tensors(**t) for t in meta["inputs"]],
        outputs=[tensors(**t) for t in meta["outputs"]],
    )


async def model_infer(call: Call, envelope: codec.Envelope) -> Message:
    state = call.state
    service = state.service
    if not service.default_model:
        raise Overloaded("the model is still loading", retry_after=2)
    served = v2_models.served(state, envelope.model_name, envelope.model_version or None)
    contract = served.engine.contract
    parsed = await off_loop(envelope.items, contract, service.batcher.max_queue)
    scores = await service.infer(served, parsed.items, call.request_id, INFER.route, call.caller)
    return codec.response(
        served.name, str(served.version), envelope.request_id, scores, parsed.wanted, contract
    )


async def repository_index(call: Call, r: pb.RepositoryIndexRequest) -> Message:
    rows = v2_models.repository_index(call.state)
    if r.ready:
        rows = [row for row in rows if row["state"] == "READY"]
    return pb.RepositoryIndexResponse(
        models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
    )


async def repository_load(call: Call, r: pb.RepositoryModelLoadRequest) -> Message:
    """Triton's load; `parameters["version"]` (a string or an integer) picks the version
    (default newest), as `{"parameters": {"version": "2"}}` does over HTTP."""
    _no_repository_name(r.repository_name)
    unknown = sorted(set(r.parameters) - {"version"})
    if unknown:
        raise UsageError(f"load parameters other than 'version' are not supported: {unknown[:5]}")
    version = (
        codec.repository_parameter(r.parameters["version"]) if "version" in r.parameters else None
    )
    await v2_models.load(call.state, r.model_name, version)
    return pb.RepositoryModelLoadResponse()


async def repository_unload(call: Call, r: pb.RepositoryModelUnloadRequest) -> Message:
    _no_repository_name(r.repository_name)
    v2_models.unload(call.state, r.model_name)
    return pb.RepositoryModelUnloadResponse()


def _no_repository_name(name: str) -> None:
    if name:
        raise UsageError("this server has one model repository: leave repository_name empty")


INFER = Method("ModelInfer", "user", pb.ModelInferRequest, model_infer, large=True)

METHODS: tuple[Method, ...] = (
    Method("ServerLive", "health", pb.ServerLiveRequest, server_live),
    Method("ServerReady", "health", pb.ServerReadyRequest, server_ready),
    Method("ModelReady", "user", pb.ModelReadyRequest, model_ready),
    Method("ServerMetadata", "user", pb.ServerMetadataRequest, server_metadata),
    Method("ModelMetadata", "user", pb.ModelMetadataRequest, model_metadata),
    INFER,
    Method("RepositoryIndex", "user", pb.RepositoryIndexRequest, repository_index),
    Method("RepositoryModelLoad", "admin", pb.RepositoryModelLoadRequest, repository_load),
    Method("RepositoryModelUnload", "admin", pb.RepositoryModelUnloadRequest, repository_unload),
)
