"""Every kind of client speaks the aifb.v1 contract to the real server: the Python stubs, the
betterproto2 dataclass client, buf curl through reflection (no proto files), and Node.js."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from aifb.mesh.channel import open_sync_channel
from aifb.v1 import server_pb2, server_pb2_grpc
from tests.contract.helpers import (
    REPO,
    BufCurl,
    buf_exit_code,
    json_documents,
    node,
    popen,
    run,
    stop,
)

if TYPE_CHECKING:
    from tests.fixtures.server import RunningServer  # the `local_server` fixture's type

pytestmark = pytest.mark.contract

S = server_pb2
SERVER_SERVICE = "aifb.v1.ServerService"
NODE_CLIENT = REPO / "tests" / "contract" / "node" / "server_client.js"
# The recipe the local scheduler runs here for the lifecycle tests; port 0 = pick a free one.
RUNNABLE_RECIPE, RUNNABLE_PARAMS = "redis", {"port": "0"}
LIFECYCLE = ["PENDING", "STARTING", "READY", "STOPPING", "STOPPED"]

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (scripts/test.sh installs it)")


# ---------------------------------------------------------------- helpers


def _rpc_error(exc: BaseException) -> grpc.Call:
    """A failed call of a sync grpcio stub is both a grpc.RpcError and a grpc.Call."""
    assert isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call)
    return exc


def _details(exc: grpc.Call) -> tuple[list[error_details_pb2.ErrorInfo],
                                          list[error_details_pb2.BadRequest]]:
    """The google.rpc details the server put in grpc-status-details-bin."""
    status = rpc_status.from_call(exc)
    assert status is not None, "no grpc-status-details-bin trailer"
    infos: list[error_details_pb2.ErrorInfo] = []
    bad: list[error_details_pb2.BadRequest] = []
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            infos.append(info)
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            any_detail.Unpack(request)
            bad.append(request)
    return infos, bad


def _short(state: int | str) -> str:
    name = S.ServiceState.Name(state) if isinstance(state, int) else state
    return name.removeprefix("SERVICE_STATE_")


def _assert_lifecycle(states: Sequence[str]) -> None:
    """PENDING ... READY ... STOPPING ... STOPPED, never backwards, ending at STOPPED."""
    assert states, "no state seen"
    assert all(s in LIFECYCLE for s in states), states
    positions = [LIFECYCLE.index(s) for s in states]
    assert positions == sorted(positions), f"states out of order: {states}"
    assert states[0] in ("PENDING", "STARTING"), states
    assert {"READY", "STOPPING"} <= set(states), states
    assert states[-1] == "STOPPED", states


Stub = server_pb2_grpc.ServerServiceStub


@pytest.fixture
def stub(local_server: RunningServer) -> Iterator[Stub]:
    """A grpcio stub with the token. At teardown it deletes whatever the test left running:
    local jobs outlive the server (a restarted server re-attaches to them)."""
    channel = local_server.channel()
    client = Stub(channel)
    try:
        yield client
    finally:
        _delete_leftovers(client)
        channel.close()


def _delete_leftovers(client: Stub, timeout: float = 20.0) -> None:
    terminal = {S.SERVICE_STATE_STOPPED, S.SERVICE_STATE_FAILED}
    try:
        left = [s.name for s in client.ListServices(S.ListServicesRequest(), timeout=10).services
                if s.state not in terminal]
        for name in left:
            with contextlib.suppress(grpc.RpcError):  # e.g. already STOPPING
                client.DeleteService(S.DeleteServiceRequest(name=name), timeout=10)
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            left = [n for n in left if client.GetService(
                S.GetServiceRequest(name=n), timeout=10).service.state not in terminal]
            time.sleep(0.1)
    except grpc.RpcError:
        pass  # best effort: the test itself reports what went wrong


def _wait_for(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------- Python stubs (grpcio)


def test_python_stub_lists_recipes_including_redis(stub: Stub) -> None:
    reply = stub.ListRecipes(S.ListRecipesRequest(), timeout=30)
    names = [r.name for r in reply.recipes]
    assert "redis" in names
    redis = next(r for r in reply.recipes if r.name == "redis")
    assert "port" in {p.name for p in redis.parameters}
    assert redis.runtime != S.RUNTIME_KIND_UNSPECIFIED


@pytest.mark.parametrize("token", ["", "not-the-token"], ids=["no-token", "wrong-token"])
def test_python_stub_call_without_valid_token_is_unauthenticated(
        local_server: RunningServer, token: str) -> None:
    channel = local_server.channel(token=token)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            Stub(channel).ListRecipes(S.ListRecipesRequest(), timeout=30)
    finally:
        channel.close()
    exc = _rpc_error(caught.value)
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    infos, _ = _details(exc)
    assert [(i.domain, i.reason) for i in infos] == [("aifb", "UNAUTHENTICATED")]


def test_health_answers_serving_without_a_token(local_server: RunningServer) -> None:
    channel = local_server.channel(token="")
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVER_SERVICE), timeout=30)
    finally:
        channel.close()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_python_stub_get_unknown_recipe_is_not_found_with_aifb_error_info(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetRecipe(S.GetRecipeRequest(name="no-such-recipe"),
                       timeout=30)
    exc = _rpc_error(caught.value)
    assert exc.code() == grpc.StatusCode.NOT_FOUND
    infos, _ = _details(exc)
    assert len(infos) == 1
    assert infos[0].domain == "aifb"
    assert infos[0].reason == "NOT_FOUND"


def test_python_stub_render_with_bad_port_is_invalid_argument_naming_the_field(
        stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.RenderService(
            S.RenderServiceRequest(recipe="redis", parameters={"port": "abc"}), timeout=30)
    exc = _rpc_error(caught.value)
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    infos, bad = _details(exc)
    assert [i.domain for i in infos] == ["aifb"]
    assert len(bad) == 1 and len(bad[0].field_violations) == 1
    violation = bad[0].field_violations[0]
    assert "port" in violation.field, violation
    assert violation.description


# ---------------------------------------------------------------- betterproto2 dataclasses


def test_betterproto_sync_client_returns_dataclasses_for_list_and_render(
        local_server: RunningServer) -> None:
    from aifb.dataclasses.aifb.v1 import (
        ListRecipesResponse,
        Recipe,
        RenderServiceRequest,
        RenderServiceResponse,
        Resources,
        RuntimeKind,
        ServerServiceStub,
    )

    channel = open_sync_channel(local_server.address, token=local_server.token)
    try:
        client = ServerServiceStub(channel)
        listed = client.list_recipes()
        rendered = client.render_service(
            RenderServiceRequest(recipe="redis", parameters={"port": "6391"}))
    finally:
        channel.close()
    assert isinstance(listed, ListRecipesResponse)
    assert all(isinstance(r, Recipe) for r in listed.recipes)
    redis = next(r for r in listed.recipes if r.name == "redis")
    assert isinstance(redis.runtime, RuntimeKind)
    assert redis.runtime is not RuntimeKind.UNSPECIFIED
    assert isinstance(rendered, RenderServiceResponse)
    assert rendered.parameters["port"] == "6391"
    assert "6391" in rendered.batch_script
    assert isinstance(rendered.resources, Resources)


def test_betterproto_sync_client_raises_rpc_error_with_the_server_code(
        local_server: RunningServer) -> None:
    from aifb.dataclasses.aifb.v1 import GetRecipeRequest, ServerServiceStub

    channel = open_sync_channel(local_server.address, token=local_server.token)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            ServerServiceStub(channel).get_recipe(GetRecipeRequest(name="no-such-recipe"))
    finally:
        channel.close()
    assert _rpc_error(caught.value).code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------- buf curl (reflection)


def _auth(local_server: RunningServer) -> str:
    return f"authorization: Bearer {local_server.token}"


def test_buf_curl_lists_services_through_reflection_without_a_token(
        local_server: RunningServer) -> None:
    curl = BufCurl(local_server.address)
    proc = run([*curl.command("--list-services"), curl.url()], timeout=60)
    assert proc.returncode == 0, proc.stderr
    services = set(proc.stdout.split())
    assert {SERVER_SERVICE, "grpc.health.v1.Health"} <= services


def test_buf_curl_lists_every_server_service_method(local_server: RunningServer) -> None:
    curl = BufCurl(local_server.address)
    # With reflection, --list-methods takes the base URL and lists every service's methods.
    proc = run([*curl.command("--list-methods"), curl.url()], timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = {f"{SERVER_SERVICE}/{m.name}"
                for m in S.DESCRIPTOR.services_by_name["ServerService"].methods}
    listed = set(proc.stdout.split())
    assert {m for m in listed if m.startswith(f"{SERVER_SERVICE}/")} == expected
    assert "grpc.health.v1.Health/Check" in listed


def test_buf_curl_calls_list_recipes_with_a_bearer_header(local_server: RunningServer) -> None:
    result = BufCurl(local_server.address).call(f"{SERVER_SERVICE}/ListRecipes", data="{}",
                                                headers=[_auth(local_server)])
    assert result.returncode == 0, result.stderr
    (reply,) = result.documents
    assert "redis" in {r["name"] for r in reply["recipes"]}


@pytest.mark.parametrize(
    ("method", "data", "with_token", "code"),
    [
        ("ListRecipes", "{}", False, grpc.StatusCode.UNAUTHENTICATED),
        ("GetRecipe", '{"name": "no-such-recipe"}', True, grpc.StatusCode.NOT_FOUND),
        ("RenderService", '{"recipe": "redis", "parameters": {"port": "abc"}}', True,
         grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["unauthenticated", "not-found", "invalid-argument"],
)
def test_buf_curl_exits_with_eight_times_the_grpc_code(
        local_server: RunningServer, method: str, data: str, with_token: bool,
        code: grpc.StatusCode) -> None:
    headers = [_auth(local_server)] if with_token else []
    result = BufCurl(local_server.address).call(f"{SERVER_SERVICE}/{method}", data=data,
                                                headers=headers)
    assert result.returncode == buf_exit_code(code), result.stderr
    (error,) = json_documents(result.stderr)
    assert error["code"] == code.name.lower()  # buf prints Connect's code names
    # The details come through as typed, base64-encoded google.rpc messages.
    infos = [error_details_pb2.ErrorInfo.FromString(_b64(d["value"]))
             for d in error["details"] if d["type"] == "google.rpc.ErrorInfo"]
    assert [i.domain for i in infos] == ["aifb"]
    assert infos[0].reason  # a stable reason, e.g. NOT_FOUND or RECIPE_INVALID


def _b64(text: str) -> bytes:
    """Decode base64 as buf prints it (unpadded; either alphabet)."""
    return base64.b64decode(text.translate(str.maketrans("-_", "+/")) + "=" * (-len(text) % 4))


def _lines(stream: IO[str] | None, sink: list[str]) -> threading.Thread:
    """Collect a child's output lines as they arrive, on a thread."""
    assert stream is not None

    def pump() -> None:
        for line in stream:
            sink.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _complete_documents(text: str) -> list[Any]:
    """The JSON documents printed so far (a document still being written is left out)."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return docs
        docs.append(doc)


@needs_redis
def test_buf_curl_streams_watch_service_in_order_until_stopped(
        local_server: RunningServer, stub: Stub, tmp_path: Path) -> None:
    created = stub.CreateService(S.CreateServiceRequest(
        recipe=RUNNABLE_RECIPE, parameters=RUNNABLE_PARAMS, request_id=uuid.uuid4().hex),
        timeout=60).service
    # The token goes through a 0600 header file (-H @file), so it is not in argv.
    header_file = tmp_path / "headers"
    header_file.touch(mode=0o600)
    header_file.write_text(_auth(local_server) + "\n")
    curl = BufCurl(local_server.address)
    out: list[str] = []

    def states() -> list[str]:
        return [_short(str(d["service"]["state"])) for d in _complete_documents("".join(out))]

    with curl.popen(f"{SERVER_SERVICE}/WatchService", data=json.dumps({"name": created.name}),
                    headers=[f"@{header_file}"]) as proc:
        reader = _lines(proc.stdout, out)
        try:
            _wait_for(lambda: "READY" in states() or proc.poll() is not None, timeout=60,
                      what="READY on the buf curl stream")
            assert "READY" in states(), states()
            stub.DeleteService(S.DeleteServiceRequest(name=created.name), timeout=30)
            assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            stop(proc)
            reader.join(10)  # EOF after the exit: every line is in `out`
    docs = json_documents("".join(out))
    _assert_lifecycle([_short(d["service"]["state"]) for d in docs])
    assert {d["service"]["name"] for d in docs} == {created.name}
    revisions = [int(d["service"]["revision"]) for d in docs]  # int64 prints as a JSON string
    assert all(isinstance(d["service"]["revision"], str) for d in docs)
    assert revisions == sorted(set(revisions))


# ---------------------------------------------------------------- Node.js (@grpc/grpc-js)


@needs_redis
def test_node_client_creates_watches_deletes_and_sees_the_lifecycle_in_order(
        local_server: RunningServer, stub: Stub) -> None:
    request_id = f"node-{uuid.uuid4().hex}"
    env = {**os.environ, "AIFB_TOKEN": local_server.token}
    params = [f"{k}={v}" for k, v in RUNNABLE_PARAMS.items()]
    with popen([node(), NODE_CLIENT, local_server.address, RUNNABLE_RECIPE, request_id,
                *params], env=env) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=90)
        finally:
            stop(proc)
    assert proc.returncode == 0, stdout + stderr
    assert "Warning" not in stderr, stderr
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]

    created = [e["service"] for e in events if e["event"] == "created"]
    assert len(created) == 2
    assert created[0]["name"] == created[1]["name"]  # idempotent by request_id
    name = created[0]["name"]
    assert created[0]["recipe"] == RUNNABLE_RECIPE

    watched = [e["service"] for e in events if e["event"] == "watch"]
    assert {s["name"] for s in watched} == {name}
    _assert_lifecycle([_short(s["state"]) for s in watched])
    (deleted,) = [e["service"] for e in events if e["event"] == "deleted"]
    assert _short(deleted["state"]) in ("STOPPING", "STOPPED")
    assert events[-1] == {"event": "end", "code": 0, "lastState": "SERVICE_STATE_STOPPED"}

    ready = stub.ListServices(S.ListServicesRequest(filter="state=READY"),
                              timeout=30)
    assert name not in {s.name for s in ready.services}
    final = stub.GetService(S.GetServiceRequest(name=name), timeout=30)
    assert final.service.state == S.SERVICE_STATE_STOPPED
