"""The fast metric ingest path: byte-identical to the general path, and it steps aside exactly
when a batch is irregular (the general path then answers as before)."""

from __future__ import annotations

import asyncio
import time

import cramjam
import httpx
import pytest

from aifb.collector import CollectorConfig, start_collector
from aifb.collector.convert import metric_batch_from_proto
from aifb.collector.fast_metrics import FastMetrics, read_metric_view
from aifb.collector.packed import PackedSeries, pack_series, varint
from aifb.collector.remote_write import encode_write_request
from aifb.collector.validate import Validator
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import collector_pb2, telemetry_pb2
from aifb.wire import prompb_pb2

pytestmark = pytest.mark.unit

NOW = int(time.time() * 1000)


def _batch(seq: int = 1, n_series: int = 5, samples: int = 4, step: int = 1000,
           **labels: str) -> telemetry_pb2.MetricBatch:
    base = NOW - 60_000
    return telemetry_pb2.MetricBatch(
        agent_id="agent", sequence=seq,
        resource=telemetry_pb2.TelemetryResource(attributes={"node": "n1"}),
        series=[telemetry_pb2.MetricSeries(
            name="aifb_fast", labels={"i": str(i), "zone": "ø\"x", **labels},
            type=telemetry_pb2.METRIC_TYPE_GAUGE, help="A gauge.",
            timestamps_ms=[base + j * step for j in range(samples)],
            values=[i + j / 8 for j in range(samples)]) for i in range(n_series)])


def _wire(batch: telemetry_pb2.MetricBatch) -> bytes:
    return collector_pb2.PushMetricsRequest(batch=batch).SerializeToString()


def _fast(batch: telemetry_pb2.MetricBatch | bytes) -> tuple[FastMetrics, object]:
    fast = FastMetrics(Validator(CollectorConfig()))
    view = read_metric_view(batch if isinstance(batch, bytes) else _wire(batch))
    return fast, (None if view is None else fast.prepare(view, NOW))


def test_fast_path_output_is_byte_identical_to_the_general_path() -> None:
    batch = _batch(n_series=7, samples=5)
    fast = FastMetrics(Validator(CollectorConfig()))
    for _ in range(2):  # the second pass runs on cached label sets and heads
        view = read_metric_view(_wire(batch))
        assert view is not None
        prepared = fast.prepare(view, NOW)
        assert prepared is not None
        general = Validator(CollectorConfig()).metrics(metric_batch_from_proto(batch), NOW)
        assert prepared.packed.body() == encode_write_request(general.series)
        assert prepared.packed.labels == [s.labels for s in general.series]
        assert prepared.last_timestamps == [s.timestamps[-1] for s in general.series]
        assert prepared.last_values == [s.values[-1] for s in general.series]
        assert prepared.received == 35


def test_packed_slices_and_concatenation_encode_like_their_series() -> None:
    series = Validator(CollectorConfig()).metrics(metric_batch_from_proto(_batch()), NOW).series
    packed = pack_series(series)
    assert packed.slice(1, 4).body() == encode_write_request(series[1:4])
    joined = PackedSeries.concat([packed.slice(0, 2), packed.slice(2, 5)])
    assert joined.body() == encode_write_request(series)
    parsed = prompb_pb2.WriteRequest.FromString(joined.body())
    assert sum(len(t.samples) for t in parsed.timeseries) == joined.sample_count == 20
    # Series of unequal sizes (the body is cut per series, not in equal chunks) read back as
    # upb's (not byte-equal: zero values are written explicitly).
    short = Validator(CollectorConfig()).metrics(
        metric_batch_from_proto(_batch(samples=2, tag="x")), NOW).series
    mixed = PackedSeries.concat([packed, pack_series(short)])
    reference = prompb_pb2.WriteRequest(timeseries=[prompb_pb2.TimeSeries(
        labels=[prompb_pb2.Label(name=n, value=v) for n, v in s.labels],
        samples=[prompb_pb2.Sample(value=v, timestamp=t)
                 for t, v in zip(s.timestamps, s.values, strict=True)])
        for s in series + short])
    assert prompb_pb2.WriteRequest.FromString(mixed.body()) == reference


@pytest.mark.parametrize("case", ["unsorted", "duplicate", "too old", "future", "empty series",
                                  "small timestamps", "several runs"])
def test_irregular_batches_leave_the_fast_path(case: str) -> None:
    batch = _batch()
    s = batch.series[2]
    if case == "unsorted":
        s.timestamps_ms[1], s.timestamps_ms[2] = s.timestamps_ms[2], s.timestamps_ms[1]
    elif case == "duplicate":
        s.timestamps_ms[2] = s.timestamps_ms[1]
    elif case == "too old":
        s.timestamps_ms[0] = NOW - 10 * 3600_000
    elif case == "future":
        s.timestamps_ms[3] = NOW + 3600_000
    elif case == "empty series":
        del s.timestamps_ms[:]
        del s.values[:]
    elif case == "small timestamps":
        s.timestamps_ms[:] = [1, 2, 3, 4]
    wire = _wire(batch)
    if case == "several runs":  # legal: a series' samples in two packed runs (they concatenate)
        extra = telemetry_pb2.MetricSeries(timestamps_ms=[NOW - 1], values=[9.0])
        raw = batch.series[4].SerializeToString() + extra.SerializeToString()
        del batch.series[4]
        body = batch.SerializeToString() + b"\x22" + varint(len(raw)) + raw
        wire = b"\x0a" + varint(len(body)) + body
        assert len(collector_pb2.PushMetricsRequest.FromString(wire).batch.series[4]
                   .timestamps_ms) == 5
    assert _fast(wire)[1] is None


def _unpacked_series(name: str, ts: list[int], values: list[float]) -> bytes:
    """A MetricSeries with its repeated scalars unpacked (legal protobuf, unusual)."""
    import struct

    body = b"\x0a" + varint(len(name)) + name.encode()
    for t in ts:
        body += b"\x20" + varint(t)
    for v in values:
        body += b"\x29" + struct.pack("<d", v)
    return body


def test_unpacked_encodings_and_unknown_fields_are_read_by_the_general_path() -> None:
    series = _unpacked_series("aifb_unpacked", [NOW - 2000, NOW - 1000], [1.5, 2.5])
    batch = b"\x0a\x01a\x10\x01" + b"\x22" + varint(len(series)) + series
    wire = b"\x0a" + varint(len(batch)) + batch
    assert read_metric_view(wire) is None
    parsed = collector_pb2.PushMetricsRequest.FromString(wire).batch
    assert list(parsed.series[0].timestamps_ms) == [NOW - 2000, NOW - 1000]
    unknown = _wire(_batch()) + b"\x98\x06\x01"  # field 99, varint 1
    assert read_metric_view(unknown) is None


def test_a_bad_label_name_on_the_fast_path_is_refused_naming_the_field() -> None:
    batch = _batch()
    batch.series[3].labels["bad-name"] = "x"
    with pytest.raises(InvalidArgument) as err:
        _fast(batch)
    assert err.value.field == "batch.series[3].labels"


def test_wire_pushes_forward_exactly_what_message_pushes_forward() -> None:
    """The same batches through push_metrics_wire (fast and general paths mixed) and through
    push_metrics give the same acks and the same remote-write requests."""
    irregular = _batch(seq=2)
    irregular.series[0].timestamps_ms[0] = NOW + 3600_000  # one rejected sample
    batches = [_batch(seq=1), irregular, _batch(seq=3, samples=2), _batch(seq=3)]

    async def run(wire: bool) -> tuple[list[tuple[int, bool, int, int]], list[bytes]]:
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
        latest = sorted((k, v.value, v.timestamp_ms, v.kind, v.help)
                        for k, v in app.ingest.latest.series.items())
        assert len(latest) == 5 and latest[0][3:] == (1, "A gauge.")
        return acks, bodies

    fast_acks, fast_bodies = asyncio.run(run(True))
    slow_acks, slow_bodies = asyncio.run(run(False))
    assert fast_acks == slow_acks == [(1, False, 20, 0), (2, False, 19, 1), (3, False, 10, 0),
                                      (3, True, 0, 0)]
    assert fast_bodies == slow_bodies and len(fast_bodies) == 3
