"""Agent identity: one process per agent id, refused clearly at the stream's start; default ids
that differ between `aifb up`'s embedded monitor and a node daemon on the same host."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from aifb.collector import CollectorConfig, start_collector
from aifb.mesh.auth import Authenticator
from aifb.mesh.config import MeshConfig
from aifb.mesh.push import AGENT_ID_HEADER, AGENT_INSTANCE_HEADER
from aifb.mesh.server import create_server
from aifb.v1 import collector_pb2, collector_pb2_grpc, telemetry_pb2
from tests.integration.cli_procs import Daemon, free_port, until
from tests.integration.test_cli_telemetry import cli_env, start_up

pytestmark = pytest.mark.integration


def _batch(agent: str, seq: int) -> collector_pb2.PushMetricsRequest:
    now = int(time.time() * 1000)
    return collector_pb2.PushMetricsRequest(batch=telemetry_pb2.MetricBatch(
        agent_id=agent, sequence=seq, series=[telemetry_pb2.MetricSeries(
            name="aifb_test_identity", labels={"a": agent}, timestamps_ms=[now],
            values=[1.0])]))


def test_a_second_process_with_the_same_agent_id_is_refused_at_the_streams_start() -> None:
    async def main() -> None:
        app = await start_collector(CollectorConfig(metrics_listen=""))
        mesh = await create_server(MeshConfig(listen="127.0.0.1:0"), app.bindings,
                                   authenticator=Authenticator(None, enabled=False),
                                   listen="127.0.0.1:0")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}") as channel:
                stub = collector_pb2_grpc.CollectorServiceStub(channel)

                def headers(instance: str) -> tuple[tuple[str, str], ...]:
                    return ((AGENT_ID_HEADER, "monitor@n1"), (AGENT_INSTANCE_HEADER, instance))

                first_open = asyncio.Event()
                release = asyncio.Event()

                async def first_requests() -> AsyncIterator[collector_pb2.PushMetricsRequest]:
                    yield _batch("monitor@n1", 1)
                    first_open.set()
                    await release.wait()

                first = stub.PushMetrics(first_requests(), metadata=headers("process-a"))
                assert (await first.read()).sequence == 1
                await first_open.wait()
                # Another process, same id: refused before any batch of it is read.
                other = stub.PushMetrics(iter([_batch("monitor@n1", 2)]),
                                         metadata=headers("process-b"))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await other.read()
                # The same process reconnecting (a second stream) is no collision.
                again = [r async for r in stub.PushMetrics(
                    iter([_batch("monitor@n1", 3)]), metadata=headers("process-a"))]
                # A batch naming another agent than its stream did is refused.
                wrong = stub.PushMetrics(iter([_batch("monitor@n2", 4)]),
                                         metadata=headers("process-a"))
                with pytest.raises(grpc.aio.AioRpcError) as mismatch:
                    await wrong.read()
                release.set()
                first.cancel()
                await asyncio.sleep(0.2)
                # Once the first process's stream is gone, the id is free again.
                after = [r async for r in stub.PushMetrics(
                    iter([_batch("monitor@n1", 5)]), metadata=headers("process-b"))]
        finally:
            await mesh.stop(0)
            await app.stop()
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "'monitor@n1' is already pushing metrics from another process" in (
            refused.value.details() or "")
        assert "AIFB_MONITOR__AGENT_ID" in (refused.value.details() or "")
        assert [r.sequence for r in again] == [3]
        assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'monitor@n2' is not the agent this stream named" in (mismatch.value.details() or "")
        assert [r.sequence for r in after] == [5]

    asyncio.run(main())


def test_a_node_daemon_beside_aifb_up_pushes_as_its_own_agent(tmp_path: Path) -> None:
    up = start_up(tmp_path, None, "--scheduler", "local")
    env = cli_env(tmp_path)
    node = socket.gethostname().split(".", 1)[0]
    up_port = up.address.rsplit(":", 1)[1]
    daemons: list[Daemon] = []
    try:
        port = free_port()
        daemons.append(Daemon.start(
            ["--server", up.address, "monitor", "serve", "--listen", f"127.0.0.1:{port}",
             "--collector", up.address, "--all-nodes", "--interval", "1"],
            env=env, cwd=tmp_path, ready_text="monitor@"))

        def agents() -> set[str]:
            stats = up.json("collector", "stats")
            return set(stats.get("agents_last_sequence", {}))

        seen = until(lambda: {f"monitor@{node}:{up_port}", f"monitor@{node}:{port}"}
                     <= (a := agents()) and a, "both monitors at the collector")
        assert f"monitor@{node}" not in seen
        # A daemon told to use the embedded monitor's id is refused, and says why.
        clash = free_port()
        daemons.append(Daemon.start(
            ["--server", up.address, "monitor", "serve", "--listen", f"127.0.0.1:{clash}",
             "--collector", up.address, "--all-nodes", "--interval", "1"],
            env={**env, "AIFB_MONITOR__AGENT_ID": f"monitor@{node}:{up_port}"}, cwd=tmp_path,
            ready_text="monitor@"))
        until(lambda: "is already pushing metrics from another process" in daemons[-1].log(200),
              "the refusal in the clashing daemon's log")
        assert "ALREADY_EXISTS" in daemons[-1].log(200)
    finally:
        codes = [d.stop() for d in daemons]
        code = up.daemon.stop()
    assert codes == [0, 0] and code == 0, json.dumps([d.log() for d in daemons])
