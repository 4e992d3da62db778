"""A run's per-second figures as metrics for the collector, with the run id as a label.

Each progress sample becomes one `MetricBatch` (gauges and counters, Prometheus base units)
handed to the mesh's `BatchSender`, which numbers, buffers and resends it until the collector
acknowledges: a collector restart during a run loses nothing the buffer holds. Without a
collector address the sink is a no-op, so a run never fails because telemetry has nowhere to go.

Every series is labelled `run`, `workload` and, when the target was a service, `service`. A
run an experiment started (its record's labels hold `experiment` and `trial`) also carries those
two labels, and no other of its record's labels: their values are bounded by the experiment's
own trials (dashboards/experiment.json groups by them).

    aifb_bench_requests_total{run, workload}            counter (completed, errors included)
    aifb_bench_errors_total{run, workload}              counter
    aifb_bench_requests_per_second{run, workload}       gauge, achieved in the last second
    aifb_bench_target_requests_per_second{run, ...}     gauge, open loop's intended rate
    aifb_bench_latency_seconds{run, quantile}           gauge, 0.5 and 0.99 of the last second
    aifb_bench_schedule_lag_seconds{run, quantile}      gauge, 0.99
    aifb_bench_in_flight_requests{run, workload}        gauge
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import grpc

from aifb.client.engine.progress import Progress
from aifb.client.runs.record import BenchmarkRecord
from aifb.mesh.push import BatchSender
from aifb.v1 import telemetry_pb2

__all__ = ["TelemetrySink", "progress_batch"]

log = logging.getLogger(__name__)

GAUGE = telemetry_pb2.METRIC_TYPE_GAUGE
COUNTER = telemetry_pb2.METRIC_TYPE_COUNTER
# The record labels that become metric labels (set by the ExperimentService on each trial's run).
EXPERIMENT_LABELS = ("experiment", "trial")


def progress_batch(record: BenchmarkRecord, p: Progress, *, now_ms: int | None = None
                   ) -> telemetry_pb2.MetricBatch:
    """The metrics of one progress sample (the run's labels once per series; an experiment's
    trial adds `experiment` and `trial`)."""
    ts = now_ms if now_ms is not None else int(time.time() * 1000)
    base = {"run": record.id, "workload": record.workload}
    if record.service:
        base["service"] = record.service
    if all(record.labels.get(key) for key in EXPERIMENT_LABELS):
        base.update({key: record.labels[key] for key in EXPERIMENT_LABELS})

    def series(name: str, kind: telemetry_pb2.MetricType, value: float, help_: str,
               **extra: str) -> telemetry_pb2.MetricSeries:
        return telemetry_pb2.MetricSeries(name=name, labels={**base, **extra}, type=kind,
                                          timestamps_ms=[ts], values=[float(value)], help=help_)

    out = [
        series("aifb_bench_requests_total", COUNTER, p.total_requests,
               "Requests completed by the run (errors included)."),
        series("aifb_bench_errors_total", COUNTER, p.total_errors, "Failed requests."),
        series("aifb_bench_requests_per_second", GAUGE, p.achieved_rate,
               "Requests completed in the last second."),
        series("aifb_bench_target_requests_per_second", GAUGE, p.target_rate,
               "Intended rate (open loop); 0 in closed loop."),
        series("aifb_bench_latency_seconds", GAUGE, p.p50_s,
               "Latency quantile over the last second.", quantile="0.5"),
        series("aifb_bench_latency_seconds", GAUGE, p.p99_s,
               "Latency quantile over the last second.", quantile="0.99"),
        series("aifb_bench_schedule_lag_seconds", GAUGE, p.lag_p99_s,
               "Intended-to-actual send delay quantile over the last second.", quantile="0.99"),
        series("aifb_bench_in_flight_requests", GAUGE, p.in_flight,
               "Requests sent and not yet answered."),
    ]
    return telemetry_pb2.MetricBatch(
        resource=telemetry_pb2.TelemetryResource(attributes={"node": socket.gethostname()}),
        series=out)


class TelemetrySink:
    """Sends progress to the collector at `connect()`'s channel; a no-op without one."""

    def __init__(self, connect: Callable[[], grpc.aio.Channel] | None, *,
                 agent_id: str = "") -> None:
        self._sender = (BatchSender("metrics", agent_id or f"bench@{socket.gethostname()}",
                                    connect, max_batches=4096) if connect else None)

    @property
    def enabled(self) -> bool:
        return self._sender is not None

    def start(self) -> None:
        if self._sender is not None:
            self._sender.start()

    def publish(self, record: BenchmarkRecord, progress: Progress) -> None:
        if self._sender is not None:
            self._sender.submit(progress_batch(record, progress))

    async def flush(self, timeout: float) -> bool:
        return await self._sender.flush(timeout) if self._sender is not None else True

    async def close(self, flush_timeout: float = 2.0) -> None:
        if self._sender is not None:
            await self._sender.close(flush_timeout)
