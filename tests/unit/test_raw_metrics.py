"""The raw metric ingest path: byte-identical to the general path for the batches agents send,
and it steps aside whenever a batch is laid out otherwise or is irregular."""

from __future__ import annotations

import asyncio
import math
import struct
import time

import cramjam
import httpx
import pytest

from aifb.collector import CollectorConfig, start_collector
from aifb.collector.convert import metric_batch_from_proto
from aifb.collector.packed import varint
from aifb.collector.raw_metrics import RawMetrics, read_raw_batch
from aifb.collector.remote_write import encode_write_request
from aifb.collector.validate import Validator
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import collector_pb2, telemetry_pb2

pytestmark = pytest.mark.unit

NOW = int(time.time() * 1000)


def _batch(seq: int = 1, n_series: int = 6, samples: int = 3, help_: str = "",
           **labels: str) -> telemetry_pb2.MetricBatch:
    """Series as upb writes them: with no help, the samples are each series' last fields."""
    base = NOW - 60_000
    return telemetry_pb2.MetricBatch(
        agent_id="agent", sequence=seq,
        resource=telemetry_pb2.TelemetryResource(attributes={"node": "n1"}),
        series=[telemetry_pb2.MetricSeries(
            name="aifb_raw", labels={"i": str(i), "zone": "ø\"x", **labels},
            type=telemetry_pb2.METRIC_TYPE_COUNTER, help=help_,
            timestamps_ms=[base + j * 1000 for j in range(samples)],
            values=[i + j / 8 for j in range(samples)]) for i in range(n_series)])


def _wire(batch: telemetry_pb2.MetricBatch) -> bytes:
    return collector_pb2.PushMetricsRequest(batch=batch).SerializeToString()


def _prepare(data: bytes, raw: RawMetrics | None = None) -> object:
    raw = raw or RawMetrics(Validator(CollectorConfig()))
    batch = read_raw_batch(data)
    return None if batch is None else raw.prepare(batch, NOW)


def _help_first() -> bytes:
    """A request whose series carry their help before their samples (legal field order; the
    raw path reads it), one of them NaN."""
    batch = _batch(n_series=4, samples=1)
    batch.series[1].values[0] = math.nan
    series = []
    for s in batch.series:
        ident = telemetry_pb2.MetricSeries(name=s.name, labels=s.labels, type=s.type,
                                           help="Help text.")
        points = telemetry_pb2.MetricSeries(timestamps_ms=s.timestamps_ms, values=s.values)
        series.append(ident.SerializeToString() + points.SerializeToString())
    body = b"".join(b"\x22" + varint(len(x)) + x for x in series)
    head = telemetry_pb2.MetricBatch(agent_id="agent", sequence=1,
                                     resource=batch.resource).SerializeToString()
    return b"\x0a" + varint(len(head + body)) + head + body


@pytest.mark.parametrize("wire", [_wire(_batch()), _help_first()], ids=["upb", "help first"])
def test_raw_path_output_is_byte_identical_to_the_general_path(wire: bytes) -> None:
    batch = collector_pb2.PushMetricsRequest.FromString(wire).batch
    raw = RawMetrics(Validator(CollectorConfig()))
    for _ in range(2):  # the second pass runs on cached identities and heads
        prepared = _prepare(wire, raw)
        assert prepared is not None
        general = Validator(CollectorConfig()).metrics(metric_batch_from_proto(batch), NOW)
        assert prepared.packed.body() == encode_write_request(general.series)  # type: ignore[attr-defined]
        assert prepared.packed.labels == [s.labels for s in general.series]  # type: ignore[attr-defined]
        assert prepared.last_timestamps == [s.timestamps[-1] for s in general.series]  # type: ignore[attr-defined]
        last = [struct.pack("<d", v) for v in prepared.last_values]  # type: ignore[attr-defined]
        assert last == [struct.pack("<d", s.values[-1]) for s in general.series]  # NaN bits too
        assert [(s.type, s.help) for s in prepared.series] == [  # type: ignore[attr-defined]
            (s.kind, s.help) for s in general.series]


@pytest.mark.parametrize("case", ["unsorted", "duplicate", "too old", "future", "small timestamps",
                                  "unequal counts", "help after samples", "samples in identity",
                                  "unknown field in identity", "no samples"])
def test_batches_laid_out_otherwise_or_irregular_leave_the_raw_path(case: str) -> None:
    batch = _batch()
    s = batch.series[2]
    if case == "unsorted":
        s.timestamps_ms[0], s.timestamps_ms[1] = s.timestamps_ms[1], s.timestamps_ms[0]
    elif case == "duplicate":
        s.timestamps_ms[2] = s.timestamps_ms[1]
    elif case == "too old":
        s.timestamps_ms[0] = NOW - 10 * 3600_000
    elif case == "future":
        s.timestamps_ms[2] = NOW + 3600_000
    elif case == "small timestamps":
        s.timestamps_ms[:] = [1, 2, 3]
    elif case == "unequal counts":
        s.timestamps_ms.append(NOW - 1)
        s.values.append(1.0)
    elif case == "help after samples":
        batch = _batch(help_="Written by upb after the samples.")
    elif case == "no samples":
        del s.timestamps_ms[:]
        del s.values[:]
    wire = _wire(batch)
    if case in ("samples in identity", "unknown field in identity"):
        # A legal series whose identity part holds a packed run (they concatenate), or a
        # field this collector does not know: exactly what the raw view cannot see.
        extra = (telemetry_pb2.MetricSeries(timestamps_ms=[NOW - 99_000], values=[9.0])
                 .SerializeToString() if case == "samples in identity" else b"\x98\x06\x01")
        series = [x.SerializeToString() for x in batch.series]
        series[4] = extra + series[4]
        body = b"".join(b"\x22" + varint(len(x)) + x for x in series)
        head = telemetry_pb2.MetricBatch(agent_id="agent", sequence=1,
                                         resource=batch.resource).SerializeToString()
        wire = b"\x0a" + varint(len(head + body)) + head + body
    assert _prepare(wire) is None


def test_unknown_fields_and_undecodable_requests_are_not_read_raw() -> None:
    assert read_raw_batch(_wire(_batch()) + b"\x98\x06\x01") is None
    assert read_raw_batch(b"\x0a\x05\x0a\x03\xff\xfe\xfd") is None  # agent_id not UTF-8


def test_a_bad_label_name_on_the_raw_path_is_refused_naming_the_field() -> None:
    batch = _batch()
    batch.series[3].labels["bad-name"] = "x"
    with pytest.raises(InvalidArgument) as err:
        _prepare(_wire(batch))
    assert err.value.field == "batch.series[3].labels"


def test_wire_pushes_of_raw_batches_forward_what_message_pushes_forward() -> None:
    """Raw, view and general paths mixed through push_metrics_wire give the acks, remote-write
    requests and latest values that push_metrics gives."""
    irregular = _batch(seq=2)
    irregular.series[0].timestamps_ms[0] = NOW + 3600_000  # one rejected: the general path
    newer = _batch(seq=4)
    for s in newer.series:
        s.timestamps_ms[:] = [t + 10_000 for t in s.timestamps_ms]
    batches = [_batch(seq=1), irregular, _batch(seq=3, help_="h"), _batch(seq=3), newer]

    async def run(wire: bool) -> tuple[list[tuple[int, bool, int, int]], list[bytes],
                                       list[object]]:
        bodies: list[bytes] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            bodies.append(bytes(cramjam.snappy.decompress_raw(request.content)))
            return httpx.Response(204)

        app = await start_collector(
            CollectorConfig(remote_write_url="http://prom.test/api/v1/write", metrics_listen="",
                            forward_workers=1, remote_write_max_samples=1),
            client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        acks = []
        for b in batches:
            out = await (app.ingest.push_metrics_wire(_wire(b)) if wire
                         else app.ingest.push_metrics(metric_batch_from_proto(b)))
            acks.append((out.sequence, out.duplicate, out.accepted, out.rejected))
        await app.stop()
        assert bool(app.ingest.raw._series) == wire  # the raw path took the regular batches
        latest = sorted((k, v.value, v.timestamp_ms, v.kind, v.help)
                        for k, v in app.ingest.latest.snapshot() if not math.isnan(v.value))
        return acks, bodies, latest  # type: ignore[return-value]

    raw_acks, raw_bodies, raw_latest = asyncio.run(run(True))
    acks, bodies, latest = asyncio.run(run(False))
    assert raw_acks == acks == [(1, False, 18, 0), (2, False, 17, 1), (3, False, 18, 0),
                                (3, True, 0, 0), (4, False, 18, 0)]
    assert raw_bodies == bodies and len(bodies) == 4
    assert raw_latest == latest and len(latest) == 6
    assert latest[0][2] == NOW - 60_000 + 12_000  # the newest batch's last sample
