"""Monitor agent overhead: CPU % of one core and RSS at a 1 s interval, beside its peers.

Setup: 200 `sleep` processes in 4 fake services (50 each, under one shell per service), one
prometheus_client exporter as the scrape target, and a collector that acknowledges every batch
(each in its own process, so only the agents are measured). Measured in the same run:
  - aifb:   `aifb monitor serve` at 1 s, pushing to the collector
  - psutil: a plain psutil loop doing the same collection (host, process trees, scrape)
  - node_exporter: prometheus-node-exporter scraped once a second (host metrics only), when
    installed (`apt-get install prometheus-node-exporter`)
Usage: python bench/monitor_overhead.py [--seconds 30] [--processes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil  # type: ignore[import-untyped]
from _net import free_port, wait_port

__all__ = ["main"]


# -- helper processes ---------------------------------------------------------------------

def run_exporter(port: int) -> None:
    from prometheus_client import Counter, Gauge, Histogram, start_http_server

    c = Counter("bench_requests", "Requests.", ["route"])
    g = Gauge("bench_queue_depth", "Queue depth.")
    h = Histogram("bench_latency_seconds", "Latency.", ["route"])
    start_http_server(port, addr="127.0.0.1")
    n = 0
    while True:
        n += 1
        for route in ("a", "b", "c", "d"):
            c.labels(route=route).inc()
            h.labels(route=route).observe((n % 100) / 100)
        g.set(n % 17)
        time.sleep(0.5)


def run_collector(port: int) -> None:
    import grpc

    from aifb.v1 import collector_pb2, collector_pb2_grpc

    class Acker(collector_pb2_grpc.CollectorServiceServicer):  # type: ignore[misc]
        async def PushMetrics(self, request_iterator, context):  # type: ignore[no-untyped-def]
            async for request in request_iterator:
                yield collector_pb2.PushMetricsResponse(sequence=request.batch.sequence)

    async def serve() -> None:
        server = grpc.aio.server()
        collector_pb2_grpc.add_CollectorServiceServicer_to_server(Acker(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def run_psutil_peer(roots: list[int], url: str, interval: float) -> None:
    """The same collection as the agent, written as a plain psutil loop."""
    from prometheus_client.parser import text_string_to_metric_families

    procs: dict[int, psutil.Process] = {}
    while True:
        started = time.monotonic()
        psutil.cpu_times()
        psutil.getloadavg()
        psutil.virtual_memory()
        psutil.swap_memory()
        psutil.disk_io_counters(perdisk=True)
        psutil.net_io_counters(pernic=True)
        for part in psutil.disk_partitions():
            with contextlib.suppress(OSError):
                psutil.disk_usage(part.mountpoint)
        for root in roots:
            try:
                parent = procs.setdefault(root, psutil.Process(root))
                members = [parent, *parent.children(recursive=True)]
            except psutil.Error:
                continue
            for p in members:
                p = procs.setdefault(p.pid, p)
                try:
                    with p.oneshot():
                        p.cpu_times()
                        p.memory_info()
                        p.num_threads()
                        p.num_fds()
                except psutil.Error:
                    procs.pop(p.pid, None)
        with urllib.request.urlopen(url, timeout=3) as response:
            list(text_string_to_metric_families(response.read().decode()))
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def run_node_exporter_scraper(url: str, interval: float) -> None:
    while True:
        with urllib.request.urlopen(url, timeout=3) as response:
            response.read()
        time.sleep(interval)


# -- the measurement ----------------------------------------------------------------------

def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--processes", type=int, default=200)
    ap.add_argument("--services", type=int, default=4)
    ap.add_argument("--role", default="", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--roots", default="", help=argparse.SUPPRESS)
    ap.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "exporter":
        return run_exporter(args.port)
    if args.role == "collector":
        return run_collector(args.port)
    if args.role == "peer":
        return run_psutil_peer([int(r) for r in args.roots.split(",")], args.url, 1.0)
    if args.role == "scraper":
        return run_node_exporter_scraper(args.url, 1.0)

    started: list[subprocess.Popen[bytes]] = []
    sleeps: list[int] = []
    tmp = Path(tempfile.mkdtemp(prefix="aifb-bench-"))
    try:
        per = args.processes // args.services
        shells = [subprocess.Popen(
            ["/bin/sh", "-c", f"for i in $(seq {per}); do sleep 3600 & done; wait"])
            for _ in range(args.services)]
        started += shells
        exporter_port, collector_port = free_port(), free_port()
        script = str(Path(__file__).resolve())
        started.append(_spawn(script, "--role", "exporter", "--port", str(exporter_port)))
        started.append(_spawn(script, "--role", "collector", "--port", str(collector_port)))
        wait_port(exporter_port)
        wait_port(collector_port)
        url = f"http://127.0.0.1:{exporter_port}/metrics"
        deadline = time.monotonic() + 20
        while sum(len(psutil.Process(s.pid).children()) for s in shells) < per * len(shells):
            if time.monotonic() > deadline:
                raise RuntimeError("the sleep processes did not start")
            time.sleep(0.05)
        sleeps = [c.pid for s in shells for c in psutil.Process(s.pid).children()]
        targets = "".join(
            f"    - {{service: services/bench{i}, job_id: '{100 + i}', pid: {s.pid}"
            + (f", metrics_url: '{url}'" if i == 0 else "") + "}\n"
            for i, s in enumerate(shells))
        config = tmp / "config.yaml"
        config.write_text(f"monitor:\n  interval_seconds: 1.0\n  node: bench\n  gpu: true\n"
                          f"  targets:\n{targets}")
        env = {**os.environ, "HOME": str(tmp), "AIFB_CONFIG": str(config)}
        aifb = str(Path(sys.executable).with_name("aifb"))
        agents: dict[str, subprocess.Popen[bytes]] = {
            # The node daemon users run, its targets from the config, no server to watch.
            "aifb monitor agent": subprocess.Popen(
                [aifb, "monitor", "serve", "--listen", "", "--watch-server", "",
                 "--collector", f"127.0.0.1:{collector_port}"], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            "plain psutil loop (peer)": _spawn(script, "--role", "peer", "--url", url, "--roots",
                                               ",".join(str(s.pid) for s in shells)),
        }
        node_exporter = shutil.which("prometheus-node-exporter")
        if node_exporter:
            ne_port = free_port()
            agents["prometheus-node-exporter (host only)"] = subprocess.Popen(
                [node_exporter, f"--web.listen-address=127.0.0.1:{ne_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(ne_port)
            started.append(_spawn(script, "--role", "scraper", "--url",
                                  f"http://127.0.0.1:{ne_port}/metrics"))
        started += agents.values()
        time.sleep(5.0)  # warm-up: imports, first collections, connections
        if os.environ.get("BENCH_PROFILE"):  # a developer's option: profile the aifb agent
            spy = [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "500", "-f",
                   "raw", "-o", os.environ["BENCH_PROFILE"]]
            started.append(subprocess.Popen(
                [*spy, "--pid", str(agents["aifb monitor agent"].pid)]))
        handles = {name: psutil.Process(p.pid) for name, p in agents.items()}
        cpu0 = {name: _cpu(h) for name, h in handles.items()}
        rss_max = dict.fromkeys(handles, 0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            for name, h in handles.items():
                rss_max[name] = max(rss_max[name], h.memory_info().rss)
            time.sleep(1.0)
        wall = time.monotonic() - t0
        cpu = {name: (_cpu(h) - cpu0[name]) / wall * 100 for name, h in handles.items()}
        base = "aifb monitor agent"
        print(f"\nmonitor overhead: {args.processes} processes in {args.services} services, "
              f"1 scrape target, 1 s interval, {wall:.0f} s, {os.cpu_count()} CPUs\n")
        print(f"{'agent':<40}{'CPU % of a core':>16}{'max RSS MB':>12}{'CPU ratio':>11}")
        for name in handles:
            ratio = cpu[base] / cpu[name] if cpu[name] > 0 else float("inf")
            print(f"{name:<40}{cpu[name]:>16.2f}{rss_max[name] / 1e6:>12.1f}"
                  f"{'' if name == base else f'{ratio:.2f}':>11}")
        print(f"\ntargets: aifb <= 1 % of a core and <= 60 MB: CPU "
              f"{'met' if cpu[base] <= 1 else 'NOT met'}, RSS "
              f"{'met' if rss_max[base] <= 60e6 else 'NOT met'}")
        print("CPU ratio = aifb agent CPU / peer CPU (below 1: aifb is cheaper)")
    finally:
        for p in reversed(started):
            if p.poll() is None:  # py-spy writes its profile on SIGINT
                p.send_signal(signal.SIGINT if "py-spy" in str(p.args) else signal.SIGTERM)
        for p in started:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pid in sleeps:  # the shells' children, which SIGTERM to a shell leaves behind
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
