"""1,000 concurrent WatchService streams: the server's CPU while they idle and during one
transition, and how long that transition takes to reach all of them (p50/p99/max).

The server is a real `aifb up` process (local scheduler) so its CPU time is its own
(/proc via psutil); the streams come from this process on one channel. Peer: the same
measurement with 1 stream, in the same run. Latency of a stream = the moment the message
arrived here - the transition's `update_time` (the server's clock when it committed the change;
same machine, so the same clock).

    .venv/bin/python bench/server_watch_fanout.py [--streams 1000] [--rounds 3] [--idle 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from _server import TEST_RECIPES, sleeper_request

from aifb.mesh.auth import read_token_file
from aifb.mesh.channel import open_channel
from aifb.v1 import server_pb2 as S
from aifb.v1 import server_pb2_grpc

AIFB = Path(sys.executable).with_name("aifb")
TERMINAL = (S.SERVICE_STATE_STOPPED, S.SERVICE_STATE_FAILED)


def start_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AIFB_SERVER__RECIPE_DIRS": f"[{TEST_RECIPES}]",
           "AIFB_CONFIG": str(home / "none.yaml")}
    (home / "none.yaml").write_text("mesh: {}\n")
    proc = subprocess.Popen([str(AIFB), "--home", str(home), "up", "--listen",
                             f"127.0.0.1:{port}", "--scheduler", "local"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("aifb up exited") from None
            time.sleep(0.05)
    raise SystemExit("aifb up did not listen")


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


@dataclass
class Result:
    streams: int
    idle_cpu_ms_per_s: list[float] = field(default_factory=list)
    transition_cpu_ms: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    setup_s: list[float] = field(default_factory=list)


async def _watch(stub: server_pb2_grpc.ServerServiceStub, name: str, snapshot: asyncio.Event,
                 arrivals: dict[int, tuple[float, float]]) -> None:
    """Follow one service; record (arrival, update_time) of each state after the snapshot."""
    first = True
    async for msg in stub.WatchService(S.WatchServiceRequest(name=name)):
        now = time.time()
        if first:
            first = False
            snapshot.set()
            continue
        arrivals.setdefault(msg.service.state, (now, msg.service.update_time.ToNanoseconds()
                                                / 1e9))


async def one_round(stub: server_pb2_grpc.ServerServiceStub, server: psutil.Process,
                    streams: int, idle: float, result: Result) -> None:
    svc = (await stub.CreateService(sleeper_request(), timeout=60)).service
    async for msg in stub.WatchService(S.WatchServiceRequest(name=svc.name), timeout=60):
        if msg.service.state == S.SERVICE_STATE_STARTING:
            break
    await asyncio.sleep(1.0)  # let the job's own reports and the poller settle
    t0 = time.perf_counter()
    snaps = [asyncio.Event() for _ in range(streams)]
    arrivals: list[dict[int, tuple[float, float]]] = [{} for _ in range(streams)]
    tasks = [asyncio.create_task(_watch(stub, svc.name, snaps[i], arrivals[i]))
             for i in range(streams)]
    for ev in snaps:
        await ev.wait()
    result.setup_s.append(time.perf_counter() - t0)
    await asyncio.sleep(0.5)
    c0 = cpu_seconds(server)
    await asyncio.sleep(idle)
    result.idle_cpu_ms_per_s.append((cpu_seconds(server) - c0) * 1000 / idle)
    c0 = cpu_seconds(server)
    await stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=60)
    while not all(S.SERVICE_STATE_STOPPING in a for a in arrivals):
        await asyncio.sleep(0.002)
    result.transition_cpu_ms.append((cpu_seconds(server) - c0) * 1000)
    for a in arrivals:
        got, committed = a[S.SERVICE_STATE_STOPPING]
        result.latencies_ms.append((got - committed) * 1000)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)


async def measure(address: str, token: str, server: psutil.Process, streams: int, rounds: int,
                  idle: float) -> Result:
    channel = open_channel(address, token=token)
    stub = server_pb2_grpc.ServerServiceStub(channel)
    result = Result(streams)
    try:
        for _ in range(rounds):
            await one_round(stub, server, streams, idle, result)
    finally:
        await channel.close()
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measurement")
    ap.add_argument("--py-spy", metavar="SVG", default="",
                    help="record the server with py-spy (.svg flame graph, .txt collapsed stacks)")
    args = ap.parse_args()
    if not 1 <= args.streams <= 5000 or not 1 <= args.rounds <= 20:
        raise SystemExit("--streams must be 1..5000 and --rounds 1..20")
    home = Path(tempfile.mkdtemp(prefix="aifb-bench-fanout-"))
    proc, address = start_server(home)
    spy = None
    if args.py_spy:
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-o",
                                args.py_spy, "-p", str(proc.pid), "-r", "200",
                                *(["-f", "raw"] if args.py_spy.endswith(".txt") else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = psutil.Process(proc.pid)
        token = read_token_file(home / "token")
        results = [asyncio.run(measure(address, token, server, n, args.rounds, args.idle))
                   for n in (1, args.streams)]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if spy is not None:
            spy.wait(60)
    print(f"{'streams':>7} {'open s':>7} {'idle cpu ms/s':>13} {'transition cpu ms':>17} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for r in results:
        print(f"{r.streams:>7} {statistics.median(r.setup_s):>7.2f} "
              f"{statistics.median(r.idle_cpu_ms_per_s):>13.1f} "
              f"{statistics.median(r.transition_cpu_ms):>17.1f} "
              f"{pct(r.latencies_ms, 0.5):>7.1f} {pct(r.latencies_ms, 0.99):>7.1f} "
              f"{max(r.latencies_ms):>7.1f}")
    one, many = results
    per_stream_us = statistics.median(many.transition_cpu_ms) * 1000 / many.streams
    print(f"server cpu per stream per transition: {per_stream_us:.0f} us "
          f"(cpu clock resolution 10 ms); p99 latency {many.streams} vs 1 stream: "
          f"{pct(many.latencies_ms, 0.99) / pct(one.latencies_ms, 0.99):.1f}x")


if __name__ == "__main__":
    main()
