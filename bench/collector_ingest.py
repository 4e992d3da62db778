"""Benchmark: collector samples/s per core end to end, beside Prometheus' own remote-write rate.

    .venv/bin/python bench/collector_ingest.py [--batches 100] [--agents 2] [--series 1000]
                                                [--samples 10]

Three measures on the same data shape (SERIES series x SAMPLES samples per batch):
  1. end to end: agents (a separate process) stream MetricBatches over gRPC -> the collector ->
     remote write into a real Prometheus; rate = samples / wall time until Prometheus has
     acknowledged them all; "per core" = samples / the collector process's CPU seconds;
  2. direct: the same number of samples, pre-encoded, POSTed straight to the same Prometheus
     (its acceptance rate: the peer the collector is compared with);
  3. in-process ceilings on one core: the raw ingest path (series as bytes, numpy checks and
     packing: the path these batches take), the view path (wire views, validate, pack), the
     general path (full parse, convert, validate, pack) and request body + snappy.
It is not a test and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aifb.collector import CollectorConfig, start_collector
from aifb.collector.convert import metric_batch_from_proto, metric_batch_from_wire
from aifb.collector.fast_metrics import FastMetrics, read_metric_view
from aifb.collector.packed import pack_series
from aifb.collector.raw_metrics import RawMetrics, read_raw_batch
from aifb.collector.remote_write import (
    REMOTE_WRITE_HEADERS,
    compress,
    encode_write_request,
)
from aifb.collector.validate import Validator
from aifb.mesh.auth import Authenticator
from aifb.mesh.config import MeshConfig
from aifb.mesh.server import create_server
from aifb.v1 import collector_pb2, collector_pb2_grpc, telemetry_pb2
from tests.fixtures.prometheus import start_prometheus

__all__ = ["main"]


def make_batches(agent: str, metric: str, batches: int, series: int, samples: int,
                 base_ms: int) -> list[telemetry_pb2.MetricBatch]:
    rng = random.Random(agent)
    out = []
    for b in range(batches):
        t0 = base_ms + b * samples
        ts = [t0 + j for j in range(samples)]
        out.append(telemetry_pb2.MetricBatch(
            agent_id=agent, sequence=b + 1,
            resource=telemetry_pb2.TelemetryResource(attributes={"node": agent, "job_id": "1"}),
            series=[telemetry_pb2.MetricSeries(
                name=metric, labels={"series": str(i), "cpu": str(i % 64)},
                type=telemetry_pb2.METRIC_TYPE_GAUGE, timestamps_ms=ts,
                values=[rng.random() for _ in range(samples)]) for i in range(series)]))
    return out


def client_main(address: str, agents: int, batches: int, series: int, samples: int,
                base_ms: int) -> None:
    """The agents: one gRPC stream each, in threads; prints nothing on success."""
    per_agent = [make_batches(f"bench{a}", "aifb_bench_e2e", batches, series, samples, base_ms)
                 for a in range(agents)]
    channel = grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", 64 << 20)])
    stub = collector_pb2_grpc.CollectorServiceStub(channel)
    print("ready", flush=True)
    sys.stdin.readline()

    def run(items: list[telemetry_pb2.MetricBatch]) -> None:
        acks = list(stub.PushMetrics(collector_pb2.PushMetricsRequest(batch=b) for b in items))
        assert len(acks) == len(items) and all(a.rejected_samples == 0 for a in acks), acks[:1]

    threads = [threading.Thread(target=run, args=(items,)) for items in per_agent]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("done", flush=True)


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def end_to_end(prom_url: str, prom_pid: int, args: argparse.Namespace, base_ms: int
                     ) -> tuple[float, float, float, float]:
    config = CollectorConfig(remote_write_url=f"{prom_url}/api/v1/write", metrics_listen="",
                             forward_workers=args.agents, queue_max_batches=64)
    app = await start_collector(config)
    mesh = await create_server(MeshConfig(listen="127.0.0.1:0"), app.bindings,
                               authenticator=Authenticator(None, enabled=False),
                               listen="127.0.0.1:0")
    client = subprocess.Popen(
        [sys.executable, __file__, "--client", f"127.0.0.1:{mesh.port}",
         "--agents", str(args.agents), "--batches", str(args.batches),
         "--series", str(args.series), "--samples", str(args.samples), "--base", str(base_ms)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None and client.stdin is not None
    loop = asyncio.get_running_loop()
    assert (await loop.run_in_executor(None, client.stdout.readline)).strip() == "ready"
    total = args.agents * args.batches * args.series * args.samples
    cpu0, prom0, t0 = _self_cpu(), _proc_cpu(prom_pid), time.perf_counter()
    client.stdin.write("go\n")
    client.stdin.flush()
    while app.stats.metric_samples_forwarded + app.stats.metric_samples_returned \
            + app.stats.metric_samples_remote_rejected < total:
        await asyncio.sleep(0.005)
    wall, cpu, prom_cpu = time.perf_counter() - t0, _self_cpu() - cpu0, _proc_cpu(prom_pid) - prom0
    await loop.run_in_executor(None, client.wait)
    await mesh.stop(0)
    await app.stop()
    if app.stats.metric_samples_forwarded != total:
        print(f"WARNING: forwarded {app.stats.metric_samples_forwarded} of {total}: {app.stats}")
    return total / wall, total / cpu, wall, prom_cpu


def direct(prom_url: str, prom_pid: int, args: argparse.Namespace, base_ms: int
           ) -> tuple[float, float]:
    """Pre-encoded requests of the same shape, POSTed one after another (as the collector's
    per-agent worker does), `agents` streams in parallel."""
    v = Validator(CollectorConfig())
    bodies: list[list[bytes]] = []
    for a in range(args.agents):
        items = make_batches(f"direct{a}", "aifb_bench_direct", args.batches, args.series,
                             args.samples, base_ms)
        bodies.append([compress(encode_write_request(v.metrics(metric_batch_from_proto(b)).series))
                       for b in items])
    total = args.agents * args.batches * args.series * args.samples

    def run(items: list[bytes]) -> None:
        with httpx.Client() as http:
            for body in items:
                r = http.post(f"{prom_url}/api/v1/write", content=body,
                              headers=REMOTE_WRITE_HEADERS)
                assert r.status_code == 204, r.text

    prom0, t0 = _proc_cpu(prom_pid), time.perf_counter()
    threads = [threading.Thread(target=run, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total / (time.perf_counter() - t0), _proc_cpu(prom_pid) - prom0


def ceilings(args: argparse.Namespace, base_ms: int) -> tuple[float, float, float, float]:
    """One core, no I/O: (raw path: raw parse + validate + pack; view path: view parse +
    validate + pack; the general path: full parse + convert + validate + pack; request body +
    snappy), in samples/s."""
    items = make_batches("ceil", "aifb_bench_ceiling", 20, args.series, args.samples, base_ms)
    wire = [collector_pb2.PushMetricsRequest(batch=b).SerializeToString() for b in items]
    n = len(items) * args.series * args.samples
    raw = RawMetrics(Validator(CollectorConfig()))
    raw.prepare(read_raw_batch(wire[0]))  # type: ignore[arg-type]  # identities cached
    t0 = time.process_time()
    prepared = [raw.prepare(read_raw_batch(w)) for w in wire]  # type: ignore[arg-type]
    raw_rate = n / (time.process_time() - t0)
    assert all(p is not None for p in prepared), "the bench batches must take the raw path"
    fast = FastMetrics(Validator(CollectorConfig()))
    fast.prepare(read_metric_view(wire[0]))  # type: ignore[arg-type]  # label sets cached
    t0 = time.process_time()
    viewed = [fast.prepare(read_metric_view(w)) for w in wire]  # type: ignore[arg-type]
    fast_rate = n / (time.process_time() - t0)
    assert all(p is not None for p in viewed), "the bench batches must suit the view path"
    v = Validator(CollectorConfig())
    t0 = time.process_time()
    for w in wire:
        pack_series(v.metrics(metric_batch_from_wire(w)).series)
    general_rate = n / (time.process_time() - t0)
    t0 = time.process_time()
    for p in prepared:
        assert p is not None
        compress(p.packed.body())
    return raw_rate, fast_rate, general_rate, n / (time.process_time() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100, help="batches per agent")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--client", default="", help=argparse.SUPPRESS)
    parser.add_argument("--base", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.agents, args.batches, args.series, args.samples, args.base)
        return
    base_ms = int(time.time() * 1000) - 30 * 60 * 1000
    with tempfile.TemporaryDirectory(prefix="aifb-bench-") as tmp:
        prom = start_prometheus(Path(tmp))
        try:
            prom_pid = int((prom.data_dir / "prometheus.pid").read_text())
            d_rate, d_prom_cpu = direct(prom.url, prom_pid, args, base_ms)
            e_rate, e_core, e_wall, e_prom_cpu = asyncio.run(
                end_to_end(prom.url, prom_pid, args, base_ms))
        finally:
            prom.stop()
    raw_rate, fast_rate, general_rate, encode_rate = ceilings(args, base_ms)
    total = args.agents * args.batches * args.series * args.samples
    print(f"\n{total:,} samples: {args.agents} agents x {args.batches} batches x "
          f"{args.series} series x {args.samples} samples; {os.cpu_count()} CPUs\n")
    print(f"| {'measure':<58} | {'samples/s':>12} |")
    print(f"|{'-' * 60}|{'-' * 14}|")
    rows = [
        ("end to end: gRPC -> collector -> Prometheus (wall)", e_rate),
        ("end to end per collector core (samples / CPU-s)", e_core),
        ("direct remote write into the same Prometheus (wall)", d_rate),
        ("ratio end-to-end / direct (wall)", e_rate / d_rate),
        ("Prometheus CPU-s, end to end / direct", e_prom_cpu / max(d_prom_cpu, 1e-9)),
        ("ceiling: raw path, raw parse + validate + pack (1 core)", raw_rate),
        ("ceiling: view path, view parse + validate + pack (1 core)", fast_rate),
        ("ceiling: general path, parse + convert + validate + pack", general_rate),
        ("ceiling: request body + snappy (1 core)", encode_rate),
    ]
    for name, value in rows:
        text = f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
        print(f"| {name:<58} | {text:>12} |")
    print(f"\nend-to-end wall {e_wall:.2f}s")


if __name__ == "__main__":
    main()
