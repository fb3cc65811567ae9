"""Our gRPC messages are the protocol's on the wire: every message of pneumo_v2.proto has the
field names, numbers, types and labels of its namesake in the stubs `tritonclient.grpc` ships
(Triton's grpc_service.proto, a superset of KServe's grpc_predict_v2.proto), and every method
we serve takes the message the protocol's method does (and answers its namesake response)."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2 as theirs

from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.front.rpc import pneumo_v2_pb2 as ours
from pneumo_onnx.engine.serve.front.rpc.methods import METHODS, SERVICE
from pneumo_onnx.engine.serve.setting import SettingsError


def shape(message: Descriptor, package: str) -> dict[str, object]:
    """A message's wire form: each field's number, type, label and message type (named
    without the package), nested messages alike."""
    fields = {
        f.name: (
            f.number,
            f.type,
            f.is_repeated,
            f.message_type and _short(f.message_type, package),
        )
        for f in message.fields
    }
    nested = {n.name: shape(n, package) for n in message.nested_types}
    return {"fields": fields, "nested": nested}


def _short(message: Descriptor, package: str) -> str:
    return message.full_name.removeprefix(package + ".")


@pytest.mark.parametrize("name", sorted(ours.DESCRIPTOR.message_types_by_name))
def test_each_message_is_the_protocols(name: str) -> None:
    mine = ours.DESCRIPTOR.message_types_by_name[name]
    protocol = theirs.DESCRIPTOR.message_types_by_name[name]
    assert shape(mine, "pneumo_onnx.v2") == shape(protocol, "inference")


def test_each_method_takes_the_protocols_message() -> None:
    service = theirs.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == SERVICE
    for method in METHODS:
        protocol = service.methods_by_name[method.name]
        assert method.request.DESCRIPTOR.name == protocol.input_type.name


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"workers": 2}, "is served by one process: not with --workers N or --ray"),
        ({"port": 9000, "grpc_port": 9000}, "must differ from --port"),
        ({"grpc_port": 70000}, "must be between 0 and 65535"),
    ],
    ids=["workers", "same-port", "range"],
)
def test_grpc_port_setting_problems(settings: dict[str, int], problem: str) -> None:
    with pytest.raises(SettingsError) as e:
        ServeConfig(**{"grpc_port": 8001, **settings})
    assert problem in str(e.value)
