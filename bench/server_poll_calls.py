"""Scheduler calls per poll tick with 1, 50 and 200 services on real SLURM (must stay 1).

Peer: a per-job poller (one `squeue -j ID` per job per tick, the naive design) measured on the
same jobs in the same run: its calls per tick and wall time per tick, against ours.

    .venv/bin/python bench/server_poll_calls.py [--sizes 1,50,200] [--ticks 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time

from _server import ensure_slurm, sleeper_request, slurm_server


def naive_tick(job_ids: list[str]) -> float:
    t0 = time.perf_counter()
    for job in job_ids:
        subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, check=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,50,200")
    ap.add_argument("--ticks", type=int, default=10)
    args = ap.parse_args()
    ensure_slurm()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        srv = slurm_server(poll=3600, poll_max=3600)  # ticks driven by hand below
        try:
            stub = srv.stub()
            for _ in range(n):
                stub.CreateService(sleeper_request(), timeout=60)
            app = srv.app
            assert app is not None
            calls0 = sum(app.scheduler.calls.values())  # type: ignore[attr-defined]
            queries0 = app.poller.queries  # our ticks plus any the background loop made
            times = []
            for _ in range(args.ticks):
                t0 = time.perf_counter()
                srv.run(app.poller.tick())
                times.append(time.perf_counter() - t0)
            calls = sum(app.scheduler.calls.values()) - calls0  # type: ignore[attr-defined]
            jobs = app.manager.active_job_ids()
            naive = [naive_tick(jobs) for _ in range(min(3, args.ticks))]
            queries = app.poller.queries - queries0
            rows.append((n, calls / queries, statistics.median(times) * 1000, len(jobs),
                         statistics.median(naive) * 1000))
            srv.cancel_all(wait=0)
        finally:
            srv.stop()
    print(f"{'services':>8} {'calls/query':>11} {'tick ms':>8} | {'naive calls/tick':>16} "
          f"{'naive tick ms':>13} {'ratio':>7}")
    for n, calls, ms, jobs, naive_ms in rows:
        print(f"{n:>8} {calls:>11.2f} {ms:>8.1f} | {jobs:>16} {naive_ms:>13.1f} "
              f"{naive_ms / ms:>6.1f}x")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
