"""Helpers for end-to-end service flows against a running server (any scheduler)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import grpc

from aifb.v1 import server_pb2, server_pb2_grpc

S = server_pb2
TERMINAL = {S.SERVICE_STATE_STOPPED, S.SERVICE_STATE_FAILED}


def state_name(value: int) -> str:
    return S.ServiceState.Name(value).removeprefix("SERVICE_STATE_")


def wait_for_state(stub: server_pb2_grpc.ServerServiceStub, name: str, wanted: set[int],
                   timeout: float = 60.0) -> S.Service:
    """Follow WatchService until the service reaches one of `wanted` (or any terminal state)."""
    deadline = time.monotonic() + timeout
    last: S.Service | None = None
    for msg in stub.WatchService(S.WatchServiceRequest(name=name), timeout=timeout):
        last = msg.service
        if last.state in wanted or last.state in TERMINAL:
            return last
        if time.monotonic() > deadline:
            break
    assert last is not None
    return last


def watch_states(stub: server_pb2_grpc.ServerServiceStub, name: str,
                 timeout: float = 60.0) -> Iterator[S.Service]:
    yield from (m.service for m in stub.WatchService(S.WatchServiceRequest(name=name),
                                                      timeout=timeout))


def redis_ping(host: str, port: int, timeout: float = 5.0) -> bytes:
    """Send a RESP PING and return the reply line."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(64)


def create(stub: server_pb2_grpc.ServerServiceStub, recipe: str, *, request_id: str = "",
           **params: str) -> S.Service:
    return stub.CreateService(S.CreateServiceRequest(recipe=recipe, parameters=params,
                                                     request_id=request_id), timeout=60).service


def ready_service(stub: server_pb2_grpc.ServerServiceStub, recipe: str,
                  timeout: float = 90.0, **params: str) -> S.Service:
    """Create a service and follow it to READY (asserting it got there, not FAILED)."""
    svc = wait_for_state(stub, create(stub, recipe, **params).name, {S.SERVICE_STATE_READY},
                         timeout=timeout)
    assert svc.state == S.SERVICE_STATE_READY, svc.state_message
    return svc


def rpc_code(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, grpc.RpcError)
    return exc.code()  # type: ignore[no-any-return]
