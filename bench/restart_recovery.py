"""Recovery from killed programs: time to detect and to serve again, and goodput under kills.

    .venv/bin/python bench/restart_recovery.py [--kills 20] [--rate 200] [--gap 1.0]
        [--scheduler local|slurm]

The path users run: one `aifb up --scheduler SCHEDULER --no-telemetry` (its own home, a free
loopback port), then
    aifb services create nginx --param port=0 --param workers=2 --restart on-failure \\
        --max-restarts KILLS+5 --restart-backoff 0 --wait
and two benchmarks of the same load against it (`aifb bench run --service ID --workload http
--rate RATE --duration D --error-budget 1`, D long enough for the kills):
  - with kills: while the benchmark runs, KILLS times: `kill -9` of nginx's master (its
    workers are left behind, as in a real crash), wait until the service is READY again, then
    --gap seconds;
  - without kills, the same benchmark (the peer).
For each kill, from one WatchService stream (the server's update_time of each change, the same
host's clock as the kill's time.time()): detect = kill -> the RESTARTING report (restarts + 1),
ready = kill -> READY again. Printed: detect and ready (p50, max) beside what they are measured
against: nginx's own start time (exec -> its port answers, measured here with the same config,
the median of 5 starts) and the bound the issue names:, the readiness check's interval (1 s: its
probes start 50 ms apart and grow to it) plus that start time; then the goodput (ok requests/s)
with and without kills, their ratio, and the errors, which only the outage windows may hold.
It asserts nothing about time; the server and everything it started are stopped by PID at the
end.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _net import free_port
from _up import Up

__all__ = ["main"]

NGINX_CONF = """daemon off;
master_process on;
worker_processes 2;
pid {dir}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/cb; proxy_temp_path {dir}/pt; fastcgi_temp_path {dir}/ft;
    uwsgi_temp_path {dir}/ut; scgi_temp_path {dir}/st;
    server {{ listen {port}; location / {{ return 200 "ok\\n"; }} }}
}}
"""


def nginx_start_seconds(runs: int = 5) -> float:
    """nginx's own start time: exec -> a TCP connect to its port succeeds (median of `runs`)."""
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="aifb-bench-nginx-") as tmp:
            port = free_port()
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=tmp, port=port))
            t0 = time.perf_counter()
            proc = subprocess.Popen(["nginx", "-p", tmp, "-c", str(conf), "-e", "stderr"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        if proc.poll() is not None or time.perf_counter() - t0 > 30:
                            raise RuntimeError("nginx did not start") from None
                        time.sleep(0.002)
                times.append(time.perf_counter() - t0)
            finally:
                proc.send_signal(signal.SIGQUIT)  # by PID: the nginx this bench started
                proc.wait(30)
    return statistics.median(times)


class Changes:
    """One WatchService stream: (server update_time, state, restarts) of every change."""

    def __init__(self, up: Up, name: str) -> None:
        import grpc

        from aifb.mesh.auth import read_token_file
        from aifb.mesh.channel import open_sync_channel
        from aifb.v1 import server_pb2, server_pb2_grpc

        self._channel = open_sync_channel(up.address, token=read_token_file(up.token_path))
        grpc.channel_ready_future(self._channel).result(timeout=30)
        self._call = server_pb2_grpc.ServerServiceStub(self._channel).WatchService(
            server_pb2.WatchServiceRequest(name=name))
        self.ready = server_pb2.SERVICE_STATE_READY
        self.seen: list[tuple[float, int, int]] = []
        self._lock = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for msg in self._call:
                s = msg.service
                with self._lock:
                    self.seen.append((s.update_time.ToNanoseconds() / 1e9, s.state, s.restarts))
                    self._lock.notify_all()
        except Exception:  # cancelled at the end
            pass

    def first(self, test: Any, after: float, timeout: float = 60) -> float:
        """The server time of the first change after `after` that passes `test`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for at, state, restarts in self.seen:
                    if at >= after and test(state, restarts):
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no such change within {timeout}s: {self.seen[-5:]}")
                self._lock.wait(left)

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()


def kill_round(up: Up, watch: Changes, pid_file: Path, kills: int, gap: float
               ) -> tuple[list[float], list[float]]:
    detect, ready = [], []
    for i in range(1, kills + 1):
        master = int(pid_file.read_text())
        at = time.time()
        os.kill(master, signal.SIGKILL)  # nginx's master of the service this bench created
        detect.append(watch.first(lambda _s, r, i=i: r >= i, at) - at)
        ready.append(watch.first(lambda s, r, i=i: r >= i and s == watch.ready, at) - at)
        while pid_file.exists() and pid_file.read_text().strip() == str(master):
            time.sleep(0.01)  # nginx writes its new pid a moment after it answers
        time.sleep(gap)
    return detect, ready


def bench(up: Up, sid: str, rate: float, duration: float) -> dict[str, Any]:
    out = up.json("bench", "run", "--service", sid, "--workload", "http", "--rate", f"{rate:g}",
                  "--duration", f"{duration:g}s", "--error-budget", "1",
                  timeout=duration + 120)
    counters = out["report"]["figures"]["counters"]
    return {"ok": counters["ok"], "errors": counters["errors"], "sent": counters["sent"],
            "goodput": counters["ok"] / duration}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between READY and a kill")
    ap.add_argument("--scheduler", choices=["local", "slurm"], default="local")
    args = ap.parse_args()
    start = nginx_start_seconds()
    up = Up(args.scheduler, "restarts")
    try:
        svc = up.json("services", "create", "nginx", "--param", "port=0", "--param",
                      "workers=2", "--restart", "on-failure", "--max-restarts",
                      str(args.kills + 5), "--restart-backoff", "0", "--wait")
        sid = svc["name"].removeprefix("services/")
        pid_file = Path(svc["job"]["stdout_path"]).parent / "nginx.pid"
        watch = Changes(up, svc["name"])
        duration = args.kills * (args.gap + 1.5) + 5
        result: dict[str, Any] = {}
        runner = threading.Thread(target=lambda: result.update(
            bench(up, sid, args.rate, duration)))
        runner.start()
        time.sleep(2.0)  # the benchmark is under way
        detect, ready = kill_round(up, watch, pid_file, args.kills, args.gap)
        runner.join()
        calm = bench(up, sid, args.rate, duration)
        watch.close()
        final = up.json("services", "get", sid)
    finally:
        up.stop()
    bound = 1.0 + start

    def q(values: list[float]) -> str:
        return (f"p50 {statistics.median(values) * 1000:7.1f} ms   "
                f"max {max(values) * 1000:7.1f} ms")

    print(f"aifb up --scheduler {args.scheduler}; nginx, 2 workers; {args.kills} kill -9 of the "
          f"master at {args.rate:g} req/s for {duration:g} s "
          f"(restarts counted by the server: {final['restarts']})")
    print(f"  detect (kill -> RESTARTING)  {q(detect)}")
    print(f"  ready again (kill -> READY)  {q(ready)}")
    print(f"  nginx's own start {start * 1000:.1f} ms; ready p50 - own start = "
          f"{(statistics.median(ready) - start) * 1000:.1f} ms (exit seen, helpers ended, "
          "reports, probes)")
    print(f"  bound: readiness interval 1 s + own start = {bound * 1000:.1f} ms; "
          f"ready max / bound = {max(ready) / bound:.2f}")
    print(f"  goodput with kills     {result['goodput']:8.1f} ok/s  (errors {result['errors']} "
          f"of {result['sent']})")
    print(f"  goodput without kills  {calm['goodput']:8.1f} ok/s  (errors {calm['errors']} "
          f"of {calm['sent']})")
    print(f"  ratio with/without     {result['goodput'] / calm['goodput']:.3f}; errors per kill "
          f"{result['errors'] / args.kills:.1f} (at {args.rate:g} req/s: "
          f"{result['errors'] / args.kills / args.rate * 1000:.0f} ms of requests each)")


if __name__ == "__main__":
    main()
