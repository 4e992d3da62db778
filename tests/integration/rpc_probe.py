"""Every method a server offers (through reflection, so a new one is covered at once), and a
call of any of them with raw request bytes that returns only the status it ended with."""

from __future__ import annotations

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

__all__ = ["PUBLIC_SERVICES", "Method", "call_raw", "methods"]

PUBLIC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                   "grpc.reflection.v1.ServerReflection")

Method = tuple[str, bool, bool]  # path, client streaming, server streaming


def methods(channel: grpc.Channel) -> list[Method]:
    """Every method of every non-public service the server reflects."""
    db = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(db)
    return [(f"/{name}/{m.name}", m.client_streaming, m.server_streaming)
            for name in db.get_services() if name not in PUBLIC_SERVICES
            for m in pool.FindServiceByName(name).methods]


def call_raw(channel: grpc.Channel, method: Method, body: bytes,
             metadata: tuple[tuple[str, str], ...] = (), timeout: float = 10
             ) -> grpc.StatusCode:
    """Send `body` as the (only) request and drain the answer; the status the call ends with."""
    path, client_streaming, server_streaming = method
    ident = {"request_serializer": None, "response_deserializer": None}
    kw = {"metadata": metadata, "timeout": timeout}
    try:
        if client_streaming and server_streaming:
            for _ in channel.stream_stream(path, **ident)(iter([body]), **kw):
                pass
        elif client_streaming:
            channel.stream_unary(path, **ident)(iter([body]), **kw)
        elif server_streaming:
            for _ in channel.unary_stream(path, **ident)(body, **kw):
                pass
        else:
            channel.unary_unary(path, **ident)(body, **kw)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
