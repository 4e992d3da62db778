"""Orchestration overhead per trial: `aifb experiment run` against the same steps by hand.

    .venv/bin/python bench/experiment_overhead.py [--levels 50,100,150,200,250]
        [--duration 2s] [--repeat 1] [--scheduler local|slurm]

One `aifb up --scheduler SCHEDULER --no-telemetry` on a free loopback port, with a temporary
home of its own, serves both sides in turns (alternating which goes first on each repeat,
after one untimed round of each to warm both paths):
  - experiment: a study with one nginx configuration (`port: 0`), `rates: LEVELS`, `duration`
    per trial, one repeat, run with `aifb --output json experiment run STUDY --watch`;
  - shell loop (the peer, what a user writes without experiments):
        id=$(aifb --output json services create nginx --param port=0 --wait | jq -r .name)
        for r in LEVELS; do
            aifb --output json bench run --service $id --workload http --rate $r \\
                --duration DURATION
        done
        aifb services delete $id
    (the same load: constant arrivals at each rate for DURATION, the same http parameters).
Both sides are measured from the same server-side timestamps:
  - READY: the service's `update_time` in the WatchServices message that carried READY (the
    Service message has no state history; this bench keeps one WatchServices stream open);
  - a benchmark's start and end: `Benchmark.start_time` (the run goes RUNNING; its worker
    process starts and the first request follows, the same on both sides: the time of the
    first request itself is only in the run's trace, not in the API) and `end_time`, from
    `aifb bench list --output json`;
  - total: the client's wall clock from the first command's start to the last one's exit
    (the client's time.time() also brackets the server's stamps: the same host, one clock).
Printed: first command -> READY, READY -> first benchmark start, the gaps between one
benchmark's end and the next one's start on the same deployment (mean, max), the runs
themselves, last benchmark end -> last command's exit, the total (these add up to it) and the
overhead per trial = (total - sum of the runs' start->end) / trials, each as experiment |
shell loop | ratio (median [min-max] over --repeat), then whether the experiment is not slower
(total) and adds < 1 s per trial (its overhead per trial). It is not a test and asserts
nothing about time; everything is on loopback and the server is stopped (by its PID) at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

from _up import ROOT, Up, seconds, stamp

__all__ = ["main"]


class ReadyTimes:
    """A WatchServices stream kept open: the server's update_time of each service's READY."""

    def __init__(self, up: Up) -> None:
        import grpc

        from aifb.mesh.auth import read_token_file
        from aifb.mesh.channel import open_sync_channel
        from aifb.v1 import server_pb2, server_pb2_grpc

        self._channel = open_sync_channel(up.address, token=read_token_file(up.token_path))
        grpc.channel_ready_future(self._channel).result(timeout=30)
        self._call = server_pb2_grpc.ServerServiceStub(self._channel).WatchServices(
            server_pb2.WatchServicesRequest(include_snapshot=True))
        self._ready_state = server_pb2.SERVICE_STATE_READY
        self._cancelled = grpc.StatusCode.CANCELLED
        self.ready: dict[str, float] = {}
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for msg in self._call:
                s = msg.service
                if s.state == self._ready_state:
                    at = s.update_time.ToNanoseconds() / 1e9
                    self.ready[s.name] = min(self.ready.get(s.name, at), at)
        except Exception as exc:
            if getattr(exc, "code", lambda: None)() != self._cancelled:
                self.error = exc

    def of(self, service: str, timeout: float = 5) -> float:
        deadline = time.monotonic() + timeout
        while service not in self.ready:
            if self.error is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no READY seen for {service} on WatchServices: {self.error}")
            time.sleep(0.05)
        return self.ready[service]

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)
        self._channel.close()


@dataclass
class Round:
    to_ready: float  # the first command's start (client clock) -> READY (server clock)
    ready_to_first: float
    gaps: list[float]
    runs: list[float]  # each benchmark's start -> end
    after_last: float  # the last benchmark's end (server clock) -> the last command's exit
    total: float

    @property
    def overhead_per_trial(self) -> float:
        return (self.total - sum(self.runs)) / len(self.runs)


def measure(ready: float, benchmarks: list[dict[str, Any]], began: float, ended: float,
            total: float) -> Round:
    """`began`, `ended`: the client's time.time() (the server's clock: the same host)."""
    times = sorted((stamp(b["start_time"]), stamp(b["end_time"])) for b in benchmarks)
    return Round(to_ready=ready - began, ready_to_first=times[0][0] - ready,
                 gaps=[b[0] - a[1] for a, b in itertools.pairwise(times)],
                 runs=[end - start for start, end in times], after_last=ended - times[-1][1],
                 total=total)


STUDY = """name: {name}
services:
  - recipe: nginx
    parameters: {{port: 0}}
workloads:
  - name: rates
    workload: http
    load: {{duration: {duration}}}
    rates: [{rates}]
repeats: 1
limits: {{deploy_timeout: 120s}}
"""


def experiment_round(up: Up, watch: ReadyTimes, levels: list[float], duration: str,
                     name: str) -> Round:
    study = up.tmp / f"{name}.yaml"
    study.write_text(STUDY.format(name=name, duration=duration,
                                  rates=", ".join(f"{r:g}" for r in levels)))
    limit = 180 + len(levels) * (seconds(duration) + 60)
    began, t0 = time.time(), time.perf_counter()
    x = json.loads(up.cli("--output", "json", "experiment", "run", str(study), "--watch",
                          timeout=limit).stdout)
    total, ended = time.perf_counter() - t0, time.time()
    if x["state"] != "EXPERIMENT_STATE_SUCCEEDED":
        raise RuntimeError(f"{x['name']} {x['state']}: {x.get('state_message', '')}")
    service = x["configurations"][0]["service"]
    eid = x["name"].removeprefix("experiments/")
    benchmarks = up.json("bench", "list", "--filter", f"label.experiment={eid}")
    assert len(benchmarks) == len(levels), benchmarks
    return measure(watch.of(service), benchmarks, began, ended, total)


def loop_round(up: Up, watch: ReadyTimes, levels: list[float], duration: str) -> Round:
    limit = seconds(duration) + 120
    began, t0 = time.time(), time.perf_counter()
    svc = up.json("services", "create", "nginx", "--param", "port=0", "--wait", timeout=180)
    sid = svc["name"].removeprefix("services/")
    for rate in levels:
        up.cli("--output", "json", "bench", "run", "--service", sid, "--workload", "http",
               "--rate", f"{rate:g}", "--duration", duration, timeout=limit)
    up.cli("services", "delete", sid)
    total, ended = time.perf_counter() - t0, time.time()
    benchmarks = [b for b in up.json("bench", "list") if b.get("service") == svc["name"]]
    assert len(benchmarks) == len(levels), benchmarks
    return measure(watch.of(svc["name"]), benchmarks, began, ended, total)


ROWS: list[tuple[str, Any]] = [
    ("first command start -> READY (s)", lambda r: r.to_ready),
    ("READY -> first benchmark start (s)", lambda r: r.ready_to_first),
    ("gap between trials, mean (s)", lambda r: statistics.fmean(r.gaps) if r.gaps else 0.0),
    ("gap between trials, max (s)", lambda r: max(r.gaps, default=0.0)),
    ("benchmark run start -> end, mean (s)", lambda r: statistics.fmean(r.runs)),
    ("last benchmark end -> last exit (s)", lambda r: r.after_last),
    ("total, client wall clock (s)", lambda r: r.total),
    ("overhead per trial (s)", lambda r: r.overhead_per_trial),
]


def cell(values: list[float]) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.3f}"
    return f"{med:.3f} [{min(values):.3f}-{max(values):.3f}]"


def report(args: argparse.Namespace, ours: list[Round], loop: list[Round]) -> None:
    width = 27 if args.repeat > 1 else 10
    print(f"\n{len(args.levels)} trials at {', '.join(f'{r:g}' for r in args.levels)} req/s, "
          f"{args.duration} each, one nginx deployment per side; scheduler {args.scheduler}; "
          f"{os.cpu_count()} CPUs; {args.repeat} round(s) per side"
          + (" (median [min-max])" if args.repeat > 1 else "") + "\n")
    print(f"| {'metric':<38} | {'experiment':>{width}} | {'shell loop':>{width}} | "
          f"{'ratio':>6} |")
    print(f"|{'-' * 40}|{'-' * (width + 2)}|{'-' * (width + 2)}|{'-' * 8}|")
    for name, get in ROWS:
        a, b = [get(r) for r in ours], [get(r) for r in loop]
        ratio = statistics.median(a) / statistics.median(b) if statistics.median(b) else None
        print(f"| {name:<38} | {cell(a):>{width}} | {cell(b):>{width}} | "
              f"{'-' if ratio is None else f'{ratio:.2f}':>6} |")
    total_a = statistics.median([r.total for r in ours])
    total_b = statistics.median([r.total for r in loop])
    per_a = statistics.median([r.overhead_per_trial for r in ours])
    per_b = statistics.median([r.overhead_per_trial for r in loop])
    print(f"\nexperiment not slower: {'yes' if total_a <= total_b else 'no'} "
          f"(total {total_a:.2f} s against {total_b:.2f} s)")
    print(f"adds < 1 s per trial: {'yes' if per_a < 1.0 else 'no'} "
          f"({per_a:.3f} s per trial, the shell loop {per_b:.3f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="What is measured and how: see the module docstring (python -m pydoc "
               "bench/experiment_overhead.py).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="50,100,150,200,250",
                    type=lambda s: [float(v) for v in s.split(",") if v.strip()],
                    help="the trials' rates in req/s, comma-separated and distinct (one trial "
                         "each; default: 5 levels, 50 to 250 in steps of 50)")
    ap.add_argument("--duration", default="2s", help="each trial's load (default 2s)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds per side; the table shows median [min-max]")
    ap.add_argument("--scheduler", choices=("local", "slurm"), default="local",
                    help="what `aifb up` deploys nginx with (slurm: a running cluster, "
                         "scripts/start-slurm.sh status)")
    args = ap.parse_args()
    seconds(args.duration)
    if not args.levels or len(set(args.levels)) != len(args.levels):
        ap.error("--levels: give distinct rates (a study refuses repeated ones)")
    if args.scheduler == "slurm" and subprocess.run(
            [str(ROOT / "scripts" / "start-slurm.sh"), "status"], capture_output=True,
            check=False).returncode != 0:
        ap.error("--scheduler slurm: SLURM is not running (scripts/start-slurm.sh start)")
    up = Up(args.scheduler, "experiment")
    watch: ReadyTimes | None = None
    ours: list[Round] = []
    loop: list[Round] = []
    try:
        watch = ReadyTimes(up)
        print(f"aifb up on {up.address} (pid {up.proc.pid if up.proc else '?'}); warming up "
              "both paths (one untimed round each) ...", flush=True)
        experiment_round(up, watch, args.levels[:1], "1s", "warm-up")
        loop_round(up, watch, args.levels[:1], "1s")
        for i in range(args.repeat):
            for side in (("experiment", "loop") if i % 2 == 0 else ("loop", "experiment")):
                up.quiesce()
                if side == "experiment":
                    ours.append(experiment_round(up, watch, args.levels, args.duration,
                                                 f"overhead-{i}"))
                else:
                    loop.append(loop_round(up, watch, args.levels, args.duration))
                print(f"round {i + 1}/{args.repeat} {side}: "
                      f"{(ours if side == 'experiment' else loop)[-1].total:.2f} s",
                      flush=True)
    finally:
        if watch is not None:
            watch.close()
        up.stop()
    report(args, ours, loop)


if __name__ == "__main__":
    main()
