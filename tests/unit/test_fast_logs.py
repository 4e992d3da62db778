"""The PushLogs fast path (`fast_logs`): the same streams, counts and faults as the general path,
lines kept as UTF-8 bytes, and bytes that are not UTF-8 refused."""

from __future__ import annotations

import asyncio
import time

import pytest

from aifb.collector import CollectorConfig
from aifb.collector.convert import log_batch_from_proto
from aifb.collector.fast_logs import log_batch_from_wire, prepare_logs, read_log_view
from aifb.collector.ingest import Ingest
from aifb.collector.stats import Stats
from aifb.collector.validate import PreparedLogs, Validator
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import collector_pb2, telemetry_pb2
from aifb.wire import telemetry_view_pb2

pytestmark = pytest.mark.unit

NOW = 1_800_000_000_000_000_000
DAY = 86_400 * 10**9


def _request(*streams: telemetry_pb2.LogStream, seq: int = 7, agent: str = "a",
             resource: dict[str, str] | None = None) -> bytes:
    return collector_pb2.PushLogsRequest(batch=telemetry_pb2.LogBatch(
        agent_id=agent, sequence=seq, streams=list(streams),
        resource=telemetry_pb2.TelemetryResource(attributes=resource or {}))).SerializeToString()


def _stream(lines: list[str], stamps: list[int] | None = None,
            labels: dict[str, str] | None = None) -> telemetry_pb2.LogStream:
    return telemetry_pb2.LogStream(labels={"service": "s"} if labels is None else labels,
                                   timestamps_ns=[NOW] * len(lines) if stamps is None else stamps,
                                   lines=lines)


def _as_text(prepared: PreparedLogs) -> PreparedLogs:
    return PreparedLogs([(labels, stamps, [line.decode() if isinstance(line, bytes) else line
                                           for line in lines])
                         for labels, stamps, lines in prepared.streams],
                        prepared.received, prepared.accepted, prepared.rejected, prepared.reasons)


def _both(data: bytes, config: CollectorConfig | None = None
          ) -> tuple[PreparedLogs | None, PreparedLogs]:
    config = config or CollectorConfig()
    view = read_log_view(data)
    assert view is not None
    fast = prepare_logs(Validator(config), view, now_ns=NOW)
    general = Validator(config).logs(log_batch_from_wire(data), now_ns=NOW)
    return fast, general


@pytest.mark.parametrize("data", [
    _request(_stream(["plain", "ünïcödé ✓", "x" * 300])),
    _request(_stream(["a", "b"], labels={"service": "s", "level": "info"}),
             _stream(["c"], labels={"service": "t"}), resource={"node": "n1", "job_id": "9"}),
    _request(_stream(["late", "ok", "early"], stamps=[NOW + 1, NOW, NOW - 1])),
    _request(_stream(["old", "ok", "future"], stamps=[NOW - 30 * DAY, NOW, NOW + DAY])),
    _request(_stream([], labels={"service": "empty"}), _stream(["one"])),
    _request(_stream(["r"], labels={}), resource={"service": "from-resource"}),
])
def test_the_view_gives_the_general_paths_streams_with_lines_as_bytes(data: bytes) -> None:
    fast, general = _both(data)
    assert fast is not None
    assert all(isinstance(line, bytes) for _, _, lines in fast.streams for line in lines)
    assert _as_text(fast) == general


@pytest.mark.parametrize(("data", "field"), [
    (_request(_stream(["a"]), seq=0), "batch.sequence"),
    (_request(_stream(["a"]), agent=""), "batch.agent_id"),
    (_request(_stream(["a"], labels={})), "batch.streams[0].labels"),
    (_request(_stream(["a", "b"], stamps=[NOW])), "batch.streams[0].lines"),
    (_request(_stream(["a"], labels={"bad-name": "x"})), "batch.streams[0].labels"),
    (_request(_stream(["a"]), resource={"__x": "y"}), "batch.resource.attributes"),
])
def test_faults_name_the_same_field_as_the_general_path(data: bytes, field: str) -> None:
    view = read_log_view(data)
    assert view is not None
    with pytest.raises(InvalidArgument) as fast:
        prepare_logs(Validator(CollectorConfig()), view, now_ns=NOW)
    with pytest.raises(InvalidArgument) as general:
        Validator(CollectorConfig()).logs(log_batch_from_wire(data), now_ns=NOW)
    assert fast.value.field == general.value.field == field
    assert str(fast.value) == str(general.value)


def test_limits_match_the_general_path() -> None:
    config = CollectorConfig(max_streams_per_batch=2, max_lines_per_batch=3,
                             max_labels_per_series=2)
    for data in (_request(*[_stream(["a"], labels={"service": str(i)}) for i in range(3)]),
                 _request(_stream(["a", "b"]), _stream(["c", "d"], labels={"service": "t"})),
                 _request(_stream(["a"], labels={"service": "s", "x": "1", "y": "2"}))):
        view = read_log_view(data)
        assert view is not None
        with pytest.raises(InvalidArgument) as fast:
            prepare_logs(Validator(config), view, now_ns=NOW)
        with pytest.raises(InvalidArgument) as general:
            Validator(config).logs(log_batch_from_wire(data), now_ns=NOW)
        assert str(fast.value) == str(general.value)


def test_a_line_too_long_in_bytes_is_left_to_the_general_path_which_counts_characters() -> None:
    config = CollectorConfig(max_line_bytes=1000)
    data = _request(_stream(["é" * 600, "x" * 1001, "fine"]))
    fast, general = _both(data, config)
    assert fast is None  # 1200 bytes but 600 characters: the general path decides
    assert (general.accepted, general.rejected) == (2, 1)


@pytest.mark.parametrize("lines", [
    [b"ok", b"caf\xc3"],  # a truncated sequence at the end
    [b"caf\xc3", b"\xa9 split across two lines"],  # valid only when the lines are joined
    [b"\xff"],
    [b"ok", b"surrogate \xed\xa0\x80"],
])
def test_lines_that_are_not_utf8_are_refused(lines: list[bytes]) -> None:
    data = telemetry_view_pb2.PushLogsRequestView(batch=telemetry_view_pb2.LogBatchView(
        agent_id="a", sequence=1, streams=[
            telemetry_view_pb2.LogStreamView(labels={"service": "s"}, timestamps_ns=[NOW],
                                             lines=[b"good"]),
            telemetry_view_pb2.LogStreamView(labels={"service": "s"},
                                             timestamps_ns=[NOW] * len(lines), lines=lines)])
    ).SerializeToString()
    with pytest.raises(InvalidArgument) as err:
        read_log_view(data)
    assert err.value.field == "batch.streams[1].lines"
    with pytest.raises(InvalidArgument) as general:  # the real message refuses them too
        log_batch_from_wire(data)
    assert general.value.field == "batch"


def test_undecodable_bytes_take_the_general_path_and_are_refused() -> None:
    assert read_log_view(b"\x0a\x05\x0a\x03") is None
    with pytest.raises(InvalidArgument):
        log_batch_from_wire(b"\x0a\x05\x0a\x03")


def test_ingest_wire_path_dedups_counts_and_keeps_lines_queryable() -> None:
    now = time.time_ns()
    data = _request(_stream(["hello", "wörld"], stamps=[now, now + 1]), seq=5)
    message = collector_pb2.PushLogsRequest.FromString(data)

    async def main() -> None:
        ingest = Ingest(CollectorConfig(metrics_listen=""), Stats())
        first = await ingest.push_logs_wire(data)
        again = await ingest.push_logs_wire(data)
        same = await ingest.push_logs(log_batch_from_proto(message.batch))
        with pytest.raises(InvalidArgument):
            await ingest.push_logs_wire(b"\x0a\x05\x0a\x03")
        with pytest.raises(InvalidArgument):
            await ingest.push_logs_wire(_request(_stream(["x"]), seq=0))
        assert (first.sequence, first.duplicate, first.accepted) == (5, False, 2)
        assert again.duplicate and same.duplicate
        stats = ingest.stats
        assert (stats.log_batches_received, stats.log_batches_duplicate,
                stats.log_batches_invalid, stats.log_lines_received,
                stats.log_lines_accepted) == (5, 2, 2, 2, 2)
        found = ingest.logs.query({"service": "s"}, 0, 0, 10, "wö")
        assert [(r.line, r.timestamp_ns) for r in found] == [("wörld", now + 1)]
        assert [r.line for r in ingest.logs.lines] == ["hello", "wörld"]

    asyncio.run(main())
