"""Status propagation on real SLURM: from the moment SLURM's state changes to the WatchService
message, median and p99, beside the configured poll interval.

N sleeper services run (STARTING: the poller stays on its fast tick); N stays below the
node's CPUs so every job runs at once, and `--rounds` repeats the cycle for more samples.
Each job is then cancelled from outside aifb (`scancel`, as an admin or the time limit would),
one at a time at random intervals so the change lands at a random phase of the poll. A
separate thread runs a tight `squeue -t all` loop and records when it first sees each job
CANCELLED (the SLURM change); one WatchService stream per service records when FAILED
("cancelled outside aifb") arrives. The squeue loop's own period is printed: it is the
resolution of the SLURM-side timestamp.

    .venv/bin/python bench/server_status_propagation.py [--services 6] [--rounds 4]
        [--polls 0.5,0.1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field

from _server import ensure_slurm, sleeper_request, slurm_server

from aifb.server.embedded import ThreadedServer
from aifb.v1 import server_pb2 as S
from aifb.v1 import server_pb2_grpc

TERMINAL = (S.SERVICE_STATE_STOPPED, S.SERVICE_STATE_FAILED)
ENDED = ("CANCELLED", "COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


@dataclass
class SqueueLoop:
    """A tight external squeue loop: first time each job is seen in an ended state."""

    job_ids: list[str]
    seen: dict[str, float] = field(default_factory=dict)
    periods: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        ids = ",".join(self.job_ids)
        while not self.stop.is_set() and len(self.seen) < len(self.job_ids):
            t0 = time.monotonic()
            out = subprocess.run(["squeue", "-h", "-t", "all", "-j", ids, "-o", "%i %T"],
                                 capture_output=True, text=True, check=False).stdout
            now = time.monotonic()
            # The change happened somewhere during this call: take its midpoint.
            mid = (t0 + now) / 2
            for line in out.splitlines():
                job, _, state = line.partition(" ")
                if state in ENDED and job not in self.seen:
                    self.seen[job] = mid
            self.periods.append(now - t0)


def _watch(stub: server_pb2_grpc.ServerServiceStub, name: str, arrived: dict[str, float]
           ) -> None:
    for msg in stub.WatchService(S.WatchServiceRequest(name=name), timeout=600):
        if msg.service.state in TERMINAL:
            arrived[name] = time.monotonic()
            return


def run_once(poll: float, n: int, rng: random.Random) -> tuple[list[float], list[float]]:
    srv = slurm_server(poll=poll, poll_max=max(poll, 5.0))
    try:
        return _cycle(srv, poll, n, rng)
    finally:
        srv.cancel_all(wait=0)  # jobs left by an interrupted run would hold the node's CPUs
        srv.stop()


def _cycle(srv: ThreadedServer, poll: float, n: int, rng: random.Random
           ) -> tuple[list[float], list[float]]:
    stub = srv.stub()
    services = [stub.CreateService(sleeper_request(), timeout=60).service for _ in range(n)]
    for svc in services:  # all running: the poller is on its fast tick
        for msg in stub.WatchService(S.WatchServiceRequest(name=svc.name), timeout=120):
            if msg.service.state == S.SERVICE_STATE_STARTING:
                break
    by_job = {s.job.job_id: s.name for s in services}
    arrived: dict[str, float] = {}
    watchers = [threading.Thread(target=_watch, args=(stub, s.name, arrived), daemon=True)
                for s in services]
    for w in watchers:
        w.start()
    time.sleep(1.0)
    loop = SqueueLoop(list(by_job))
    looper = threading.Thread(target=loop.run, daemon=True)
    looper.start()
    for job in by_job:
        subprocess.run(["scancel", job], check=True)
        time.sleep(rng.uniform(0.1, 0.1 + 2 * poll))
    for w in watchers:
        w.join(120)
    loop.stop.set()
    looper.join(30)
    lat = [arrived[by_job[j]] - loop.seen[j] for j in by_job
           if j in loop.seen and by_job[j] in arrived]
    return lat, loop.periods


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=6, help="at once (below the node's CPUs)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--polls", default="0.5,0.1", help="poll intervals to run, in seconds")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not 1 <= args.services <= 200 or not 1 <= args.rounds <= 50:
        raise SystemExit("--services must be 1..200 and --rounds 1..50")
    polls = [float(p) for p in args.polls.split(",")]
    if any(not 0.05 <= p <= 10 for p in polls):
        raise SystemExit("--polls: each interval must be 0.05..10 s")
    ensure_slurm()
    rng = random.Random(args.seed)
    rows = []
    for poll in polls:
        lat, periods = [], []
        for _ in range(args.rounds):
            more_lat, more_periods = run_once(poll, args.services, rng)
            lat += more_lat
            periods += more_periods
        rows.append((poll, len(lat), statistics.median(lat), pct(lat, 0.99),
                     statistics.median(periods)))
    print(f"{'poll s':>6} {'samples':>7} {'median ms':>9} {'p99 ms':>7} "
          f"{'median/poll':>11} {'squeue loop ms':>14}")
    for poll, k, med, p99, period in rows:
        print(f"{poll:>6.2f} {k:>7} {med * 1000:>9.0f} {p99 * 1000:>7.0f} "
              f"{med / poll:>11.2f} {period * 1000:>14.0f}")


if __name__ == "__main__":
    main()
