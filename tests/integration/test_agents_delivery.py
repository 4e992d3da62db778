"""Agents to a collector over real gRPC: exactly once across collector restarts and agent
restarts (mid-file and mid-rotation), counted drops on overflow, and the agents' own services."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from aifb.logger.agent import LoggerAgent
from aifb.logger.config import LoggerConfig
from aifb.logger.servicer import logger_binding
from aifb.mesh.auth import Authenticator
from aifb.mesh.channel import open_channel
from aifb.mesh.config import MeshConfig
from aifb.mesh.discovery import TargetSpec, channel_factory
from aifb.mesh.push import Backoff, BatchSender, batch_items
from aifb.mesh.server import create_server
from aifb.monitor.agent import MonitorAgent
from aifb.monitor.config import MonitorConfig
from aifb.monitor.servicer import monitor_binding
from aifb.v1 import logger_pb2, logger_pb2_grpc, monitor_pb2, monitor_pb2_grpc, telemetry_pb2
from tests.unit.test_push import FakeCollector, run, wait_until

pytestmark = pytest.mark.integration


def record_submissions(sender: BatchSender) -> list[tuple[int, Any]]:
    """Wrap submit() so the test knows every batch the agent handed over."""
    seen: list[tuple[int, Any]] = []
    original = sender.submit

    def submit(batch: Any, meta: Any = None) -> int:
        copy = type(batch)()
        copy.CopyFrom(batch)
        seq = original(batch, meta)
        copy.agent_id, copy.sequence = batch.agent_id, seq
        seen.append((seq, copy))
        return seq

    sender.submit = submit  # type: ignore[method-assign]
    return seen


def fast(sender: BatchSender | None) -> None:
    assert sender is not None
    sender._backoff = Backoff(0.02, 0.2)


def monitor_config(**kw: Any) -> MonitorConfig:
    return MonitorConfig(interval_seconds=0.2, gpu=False, slurm=False, node="n1",
                         targets=[TargetSpec(service="services/me", job_id="1", pid=os.getpid())],
                         **kw)


def test_monitor_samples_arrive_exactly_once_across_a_collector_restart() -> None:
    async def scenario() -> None:
        collector = FakeCollector()
        port = await collector.start()
        agent = MonitorAgent(monitor_config(), collector=channel_factory(f"127.0.0.1:{port}"))
        fast(agent.sender)
        assert agent.sender is not None
        submitted = record_submissions(agent.sender)
        await agent.start()
        await wait_until(lambda: len(collector.metrics) >= 3, what="3 batches")
        collector.ack = False  # the next batches are stored, their acks lost in the crash
        stored_at_crash = len(collector.metrics)
        await wait_until(lambda: len(collector.metrics) >= stored_at_crash + 2, what="unacked")
        await collector.stop()
        ticks = agent.collections
        await wait_until(lambda: agent.collections >= ticks + 3, what="ticks while down")
        collector.ack = True
        await collector.start(port)
        await wait_until(lambda: agent.sender is not None and agent.sender.stats.resent_batches
                         > 0, what="resend")
        await agent.stop(flush_timeout=10)
        assert agent.sender.stats.buffered_batches == 0
        assert agent.sender.stats.dropped_batches == 0
        assert collector.duplicates >= 2
        stored = {seq: b for (_, seq), b in collector.metrics.items()}
        assert sorted(stored) == [seq for seq, _ in submitted]
        for seq, batch in submitted:
            assert stored[seq] == batch
        assert sum(batch_items(b) for b in stored.values()) == sum(
            batch_items(b) for _, b in submitted)
        await collector.stop()

    run(scenario)


def test_monitor_overflow_drop_counters_equal_what_was_dropped() -> None:
    async def scenario() -> None:
        collector = FakeCollector()
        port = await collector.start()
        await collector.stop()  # nothing listens there while the agent collects
        agent = MonitorAgent(monitor_config(buffer_batches=3),
                             collector=channel_factory(f"127.0.0.1:{port}"))
        fast(agent.sender)
        assert agent.sender is not None
        submitted = record_submissions(agent.sender)
        agent.sender.start()
        for _ in range(8):
            await agent.tick()
        stats = agent.sender.stats
        dropped, kept = submitted[:5], submitted[5:]
        assert stats.dropped_batches == 5
        assert stats.dropped_items == sum(batch_items(b) for _, b in dropped)
        await collector.start(port)
        assert await agent.sender.flush(10)
        stored = sorted(seq for _, seq in collector.metrics)
        assert stored == [seq for seq, _ in kept]
        assert sum(batch_items(b) for b in collector.metrics.values()) + stats.dropped_items == (
            sum(batch_items(b) for _, b in submitted))
        await agent.stop()
        await collector.stop()

    run(scenario)


def lines_of(collector: FakeCollector) -> Counter[str]:
    return Counter(line for b in collector.logs.values() for s in b.streams for line in s.lines)


def logger_config(state: Path, log: Path) -> LoggerConfig:
    return LoggerConfig(state_dir=str(state), node="n1", poll_interval_seconds=0.02,
                        idle_flush_seconds=0.1, max_batch_lines=7,
                        targets=[TargetSpec(service="services/a", job_id="5",
                                            stdout_path=str(log))])


def append(path: Path, lines: list[str]) -> None:
    with path.open("a") as fh:
        fh.writelines(f"{line}\n" for line in lines)


def start_logger(config: LoggerConfig, port: int) -> LoggerAgent:
    agent = LoggerAgent(config, collector=channel_factory(f"127.0.0.1:{port}"))
    fast(agent.sender)
    return agent


def test_logger_restarted_mid_file_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        log, state = tmp_path / "job.out", tmp_path / "state"
        expected = [f"line {i} INFO" for i in range(300)]
        append(log, expected[:60])
        collector = FakeCollector()
        port = await collector.start()
        agents: list[LoggerAgent] = []
        try:
            first = start_logger(logger_config(state, log), port)
            agents.append(first)
            await first.start()
            await wait_until(lambda: sum(lines_of(collector).values()) >= 60
                             and first.sender is not None
                             and first.sender.stats.buffered_batches == 0, what="60 lines acked")
            # The lines written from now on are stored but their acks are lost: the restarted
            # agent must resend them. (Written only now, so that they cannot all have gone,
            # acknowledged, before the collector stops acking.)
            collector.ack = False
            at = len(collector.logs)
            append(log, expected[60:200])
            await wait_until(lambda: len(collector.logs) >= at + 3, what="3 unacked batches")
            await first.stop(flush_timeout=0)  # the "crash": nothing more is acknowledged
            append(log, expected[200:])
            collector.ack = True
            second = start_logger(logger_config(state, log), port)
            agents.append(second)
            await second.start()
            await wait_until(lambda: sum(lines_of(collector).values()) >= 300, what="all lines")
            await wait_until(lambda: second.sender is not None
                             and second.sender.stats.buffered_batches == 0, what="all acked")
            await second.stop()
            assert lines_of(collector) == Counter(expected)
            assert collector.duplicates > 0
            assert second.checkpoint.positions[str(log)].offset == log.stat().st_size
        finally:
            for agent in agents:  # stopped here too when a check failed: nothing outlives
                await agent.stop(flush_timeout=0)  # this loop to be collected in a later test
            await collector.stop()

    run(scenario)


def test_logger_restarted_during_rotation_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        log, state = tmp_path / "job.out", tmp_path / "state"
        old = [f"a{i}" for i in range(90)]
        new = [f"b{i}" for i in range(30)]
        third = [f"c{i}" for i in range(10)]
        append(log, old[:50])
        collector = FakeCollector()
        port = await collector.start()
        first = start_logger(logger_config(state, log), port)
        await first.start()
        await wait_until(lambda: sum(lines_of(collector).values()) >= 50, what="50 lines")
        append(log, old[50:80])
        await first.stop(flush_timeout=0)
        log.rename(tmp_path / "job.out.1")  # rotated while the agent is down
        append(tmp_path / "job.out.1", old[80:])  # the writer had not reopened yet
        append(log, new)
        second = start_logger(logger_config(state, log), port)
        await second.start()
        await wait_until(lambda: sum(lines_of(collector).values()) >= 120, what="120 lines")
        log.rename(tmp_path / "job.out.2")  # and once more while it runs
        append(log, third)
        await wait_until(lambda: sum(lines_of(collector).values()) >= 130, what="130 lines")
        await wait_until(lambda: second.sender is not None
                         and second.sender.stats.buffered_batches == 0, what="all acked")
        await second.stop()
        assert lines_of(collector) == Counter(old + new + third)
        await collector.stop()

    run(scenario)


def test_monitor_and_logger_services_answer_over_grpc(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = tmp_path / "job.out"
        append(log, ["INFO hello", "ERROR boom", "  detail", "WARNING w"])
        monitor = MonitorAgent(monitor_config())
        logger = LoggerAgent(logger_config(tmp_path / "state", log))
        await monitor.start()
        await logger.start()
        mesh = await create_server(MeshConfig(), [monitor_binding(monitor), logger_binding(logger)],
                                   authenticator=Authenticator(None, enabled=False),
                                   listen="127.0.0.1:0")
        channel = open_channel(f"127.0.0.1:{mesh.port}")
        try:
            mon = monitor_pb2_grpc.MonitorServiceStub(channel)
            got = await mon.GetSnapshot(monitor_pb2.GetSnapshotRequest(include_metrics=True))
            assert got.snapshot.summary.node == "n1"
            assert got.snapshot.summary.gpu_status.startswith("no GPU")
            assert [j.service for j in got.snapshot.summary.jobs] == ["services/me"]
            names = {s.name for s in got.snapshot.metrics.series}
            assert "aifb_node_cpu_seconds_total" in names
            call = mon.WatchSnapshots(monitor_pb2.WatchSnapshotsRequest())
            first = await call.read()
            second = await call.read()
            assert second.snapshot.summary.time.ToNanoseconds() > (
                first.snapshot.summary.time.ToNanoseconds())
            assert not second.snapshot.HasField("metrics")
            call.cancel()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                bad = mon.WatchSnapshots(monitor_pb2.WatchSnapshotsRequest(interval_ms=50))
                await bad.read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            logs = logger_pb2_grpc.LoggerServiceStub(channel)
            await wait_until(lambda: logger.lines_read >= 3, what="records")
            sources = await logs.ListLogSources(logger_pb2.ListLogSourcesRequest())
            (src,) = sources.sources
            assert src.path == str(log) and src.labels["service"] == "services/a"
            assert src.offset == log.stat().st_size  # no collector: checkpointed on read
            tail = logs.TailLogs(logger_pb2.TailLogsRequest(
                labels={"level": "error"}, initial_lines=5))
            records = [r async for r in tail]
            assert [r.line for r in records] == ["ERROR boom\n  detail"]
            follow = logs.TailLogs(logger_pb2.TailLogsRequest(
                labels={"service": "services/a"}, follow=True))
            append(log, ["INFO later"])
            assert (await follow.read()).line == "INFO later"
            follow.cancel()
        finally:
            await channel.close()
            await mesh.stop(0)
            await monitor.stop()
            await logger.stop()

    run(scenario)


def test_log_batches_carry_service_job_node_stream_and_level_labels(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = tmp_path / "job.out"
        append(log, ["INFO a", "ERROR b"])
        collector = FakeCollector()
        port = await collector.start()
        agent = start_logger(logger_config(tmp_path / "state", log), port)
        await agent.start()
        await wait_until(lambda: sum(lines_of(collector).values()) >= 2, what="2 lines")
        await agent.stop()
        labels = sorted(tuple(sorted(s.labels.items())) for b in collector.logs.values()
                        for s in b.streams)
        assert labels == [
            tuple(sorted({"service": "services/a", "job_id": "5", "node": "n1",
                          "stream": "stdout", "level": level}.items()))
            for level in ("error", "info")]
        assert all(isinstance(b, telemetry_pb2.LogBatch) for b in collector.logs.values())
        await collector.stop()

    run(scenario)
