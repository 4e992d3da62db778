"""How the standalone BenchmarkService reports what the remote server said: each status (with
the mesh's ErrorInfo, or a bare transport failure) becomes the mesh error whose message and
metadata name the server; the caller's token is preferred over the service's own; and without
a server, service targets are refused with what to do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from aifb.client.service.remote_targets import (
    GrpcResolver,
    NoServerResolver,
    translate_rpc_error,
)
from aifb.mesh.auth import Authenticator, Principal, TokenStore
from aifb.mesh.errors import (
    AifbError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from aifb.mesh.interceptors import status_for_error

pytestmark = pytest.mark.unit

SERVER = "login1:50051"


def _rpc_error(err: AifbError) -> grpc.aio.AioRpcError:
    """The failed call a client sees when the server's interceptor maps `err`."""
    status = status_for_error(err)
    return grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(),
                                grpc.aio.Metadata(*status.trailing_metadata), status.details)


def test_not_found_names_the_server() -> None:
    got = translate_rpc_error(_rpc_error(NotFound("service abc not found")), SERVER)
    assert isinstance(got, NotFound)
    assert got.message == f"service abc not found (on the aifb server at {SERVER})"
    assert got.metadata == {"server": SERVER}


@pytest.mark.parametrize("cls", [FailedPrecondition, PermissionDenied])
def test_refusals_keep_their_class_and_name_the_server(cls: type[AifbError]) -> None:
    got = translate_rpc_error(_rpc_error(cls("no")), SERVER)
    assert type(got) is cls and got.message == f"the aifb server at {SERVER}: no"


@pytest.mark.parametrize(("borrowed", "whose"), [
    (False, "your token"),
    (True, "this benchmark service's token (AIFB_TOKEN, AIFB_TOKEN_FILE or <home>/token)")])
def test_a_token_the_server_rejects_is_permission_denied_saying_whose(borrowed: bool,
                                                                      whose: str) -> None:
    got = translate_rpc_error(_rpc_error(Unauthenticated("unknown token")), SERVER,
                              borrowed=borrowed)
    # Not UNAUTHENTICATED: the caller's credentials were good here; the server refused them.
    assert isinstance(got, PermissionDenied)
    assert got.message.startswith(f"the aifb server at {SERVER} does not accept {whose}: ")
    assert "share one token store" in got.message


def test_a_bare_transport_failure_is_unavailable_naming_the_server() -> None:
    exc = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                               grpc.aio.Metadata(), "failed to connect to all addresses")
    got = translate_rpc_error(exc, SERVER)
    assert isinstance(got, Unavailable) and got.metadata == {"server": SERVER}
    assert got.message.startswith(f"cannot reach the aifb server at {SERVER}: ")
    assert "failed to connect to all addresses" in got.message


def test_a_deadline_is_deadline_exceeded_naming_the_server() -> None:
    exc = grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(),
                               grpc.aio.Metadata(), "Deadline Exceeded")
    got = translate_rpc_error(exc, SERVER)
    assert isinstance(got, DeadlineExceeded) and SERVER in got.message


def test_other_errors_pass_through_as_the_server_raised_them() -> None:
    got = translate_rpc_error(_rpc_error(InvalidArgument("bad", field="name")), SERVER)
    assert isinstance(got, InvalidArgument) and got.field == "name"
    got = translate_rpc_error(_rpc_error(ResourceExhausted("busy")), SERVER)
    assert isinstance(got, ResourceExhausted) and got.message == "busy"


def test_without_a_server_service_targets_are_refused_with_what_to_do() -> None:
    with pytest.raises(FailedPrecondition, match="no server configured; pass --server"):
        asyncio.run(NoServerResolver().resolve(Principal(user="u"), "services/abc"))


def test_a_bad_service_id_names_the_service_field_before_any_call() -> None:
    resolver = GrpcResolver("127.0.0.1:1")
    with pytest.raises(InvalidArgument) as info:
        asyncio.run(resolver.resolve(Principal(user="u"), "services/not an id"))
    assert info.value.field == "service"


def test_the_principal_keeps_the_callers_token_out_of_repr_and_equality(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.issue("alice")
    principal = Authenticator(store).authenticate(token)
    assert principal is not None and principal.token == token
    assert token not in repr(principal)
    assert principal == Principal(user="alice")
