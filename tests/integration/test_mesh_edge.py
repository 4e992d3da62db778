"""The mesh's edge, on a real `aifb up` (every service in one process): every method (found
through reflection, so a new one is covered too) refuses a call without a token with
UNAUTHENTICATED before its body is read, refuses an undecodable body from an authenticated
caller with INVALID_ARGUMENT, and logs no traceback for either; grpc.health.v1.Health/Watch
streams (it failed with UNKNOWN under the tracing interceptor)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aifb.mesh.channel import open_sync_channel
from tests.integration.cli_procs import Daemon
from tests.integration.rpc_probe import call_raw, methods
from tests.integration.test_cli_telemetry import cli_env, start_up

pytestmark = pytest.mark.integration

GARBAGE = b"\xff\xff\xff\xff\x0f"  # a varint that never ends: no message parses it


@dataclass
class Edge:
    daemon: Daemon
    channel: grpc.Channel
    token: str
    home: Path  # $HOME of the `aifb up` process

    def tracebacks(self) -> list[str]:
        return [line for line in self.daemon.stderr if "Traceback" in line]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("edge")
    up = start_up(tmp, None)
    home = Path(cli_env(tmp)["HOME"])
    token = (home / ".aifb" / "token").read_text().strip()
    try:
        with open_sync_channel(up.address, token="") as ch:
            yield Edge(up.daemon, ch, token, home)
    finally:
        up.daemon.stop()


def test_every_method_refuses_a_garbage_body_without_a_token_as_unauthenticated(
        edge: Edge) -> None:
    found = methods(edge.channel)
    services = {path.split("/")[1] for path, _, _ in found}
    assert {"aifb.v1.ServerService", "aifb.v1.BenchmarkService", "aifb.v1.CollectorService",
            "aifb.v1.LoggerService", "aifb.v1.MonitorService"} <= services, services
    codes = {m[0]: call_raw(edge.channel, m, GARBAGE) for m in found}
    wrong = {p: c for p, c in codes.items() if c != grpc.StatusCode.UNAUTHENTICATED}
    assert not wrong, wrong
    assert not edge.tracebacks(), edge.daemon.log()


def test_every_method_refuses_an_undecodable_body_from_a_user_as_invalid_argument(
        edge: Edge) -> None:
    auth = (("authorization", f"Bearer {edge.token}"),)
    codes = {m[0]: call_raw(edge.channel, m, GARBAGE, auth) for m in methods(edge.channel)}
    # The collector's push streams read their own wire bytes and answer per batch (a refused
    # batch is an error in its ack); every other method must name the bad request.
    raw = {p for p in codes if p.endswith(("/PushMetrics", "/PushLogs"))}
    wrong = {p: c for p, c in codes.items()
             if p not in raw and c != grpc.StatusCode.INVALID_ARGUMENT}
    assert not wrong, wrong
    assert all(codes[p] in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT) for p in raw), \
        {p: codes[p] for p in raw}
    assert not edge.tracebacks(), edge.daemon.log()


def test_health_watch_streams_serving_first(edge: Edge) -> None:
    stream = health_pb2_grpc.HealthStub(edge.channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=10)
    first = next(stream)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()


def test_state_on_disk_is_owner_only_while_running(edge: Edge) -> None:
    """A fresh ~/.aifb is 0700 (the local scheduler made it 0755 before), every folder in it
    0700 and every file 0600, SQLite's -wal and -shm included (they were 0644)."""
    home = edge.home / ".aifb"
    found = {p.relative_to(home).as_posix(): p.stat().st_mode & 0o777
             for p in [home, *home.rglob("*")] if not p.is_symlink()}
    assert any(name.endswith("server.db-wal") for name in found), sorted(found)
    loose = {name: oct(mode) for name, mode in found.items()
             if mode & 0o077 or (Path(home / name).is_file() and mode & 0o111)}
    assert not loose, loose


def test_streams_cancelled_by_their_clients_end_without_a_traceback(edge: Edge) -> None:
    """A client that goes away mid-stream: grpc used to leave the handler's generator to
    asyncio's finaliser, which closed it in another task ("was created in a different Context",
    an error status sent on a finished call, a traceback in the log; seen in CI)."""
    from aifb.v1 import server_pb2, server_pb2_grpc

    auth = (("authorization", f"Bearer {edge.token}"),)
    stub = server_pb2_grpc.ServerServiceStub(edge.channel)
    for _ in range(100):
        stream = stub.WatchServices(server_pb2.WatchServicesRequest(include_snapshot=True),
                                    metadata=auth, timeout=10)
        stream.cancel()
        snapshots = health_pb2_grpc.HealthStub(edge.channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=10)
        next(snapshots)
        snapshots.cancel()
    # The server is still healthy, and said nothing alarming about any of it.
    reply = health_pb2_grpc.HealthStub(edge.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert not edge.tracebacks(), edge.daemon.log()
