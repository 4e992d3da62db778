"""Spark engine overhead: requests/s of one Spark executor vs the in-process engine, two vs one.

    .venv/bin/python bench/spark_overhead.py [--seconds 10] [--repeat 3] [--mode closed|open]

Against a real nginx on 127.0.0.1 (GET /hello, nginx pinned to CPU 1), each engine runs in its
own process, in turns, --repeat times: (a) the in-process engine (`run_load`) pinned to CPU 0;
(b) `--engine spark` on `local[1]` with one partition, pinned to CPU 0 (JVM, driver and the one
Python worker share it); (c) `local[2]` with two partitions, allowed CPUs 0 and 1. Closed loop
(default): --users keep-alive users, split across partitions; open loop: --rate split across
partitions, so the achieved rate shows whether the engine keeps up. The rate is the engine's
own `achieved_rate` over the measured window (1 s warm-up excluded); JVM and SparkSession
start-up is timed separately ("session s"), and so is the rest of a Spark run's fixed cost
(task launch, start barrier, merge: "run wall s" minus the load's duration). Wall-clock rates
are noisy on a shared machine, so CPU is reported too: requests (warm-up included) per CPU
second of the process(es) running the engine (this includes an executor's first-task imports),
and the CPU that Spark's driver and JVM spend besides during the run ("spark CPU-s").

On a 2-core machine (c) shares CPU 1 with nginx, so its "scaling" measures contention, not
what two executors on two free cores would give; the output says so. Not a test: it asserts
nothing about time. Stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

__all__ = ["main"]

# engine -> (Spark master or "" for in-process, partitions, CPUs the generator may use)
ENGINES: dict[str, tuple[str, int, str]] = {
    "inprocess": ("", 1, "0"),
    "spark-local1": ("local[1]", 1, "0"),
    "spark-local2": ("local[2]", 2, "0,1"),
}
NGINX_CPU = 1
WARMUP_S = 1.0


def _spec(args: argparse.Namespace) -> Any:
    from aifb.client.engine.spec import LoadSpec, Mode

    if args.mode == "open":
        return LoadSpec(mode=Mode.OPEN, rate=args.rate, duration_s=args.seconds + WARMUP_S,
                        warmup_s=WARMUP_S, max_in_flight=max(args.users, 1) * 64)
    return LoadSpec(mode=Mode.CLOSED, users=args.users, duration_s=args.seconds + WARMUP_S,
                    warmup_s=WARMUP_S)


def _summary(res: Any) -> dict[str, Any]:
    if res.state.value != "SUCCEEDED":
        raise RuntimeError(f"run {res.state.value}: {res.reason}")
    return {"rate": res.achieved_rate, "errors": res.counters["errors"],
            "requests": res.counters["completed"] + res.counters["excluded"],
            "dropped": res.counters["dropped"],
            "p99_us": res.histograms["latency"].percentile_us(99),
            "late_start_s": res.extra.get("spark_start_late_max_s", 0.0)}


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process; returns its numbers (printed as JSON by main).

    `engine_cpu_s` is the CPU of the process(es) running the engine over the run: this one, or
    the executors' Python workers (as each partition reports it); `spark_cpu_s` the rest of
    Spark's (this driver process and its JVM) over the same run.
    """
    master, partitions, _ = ENGINES[engine]
    params = {"path": "/hello", "connections": max(args.users, 1)}
    spec = _spec(args)
    samples: list[Any] = []
    if not master:
        import uvloop

        from aifb.client.engine.load import run_load
        from aifb.client.workloads.registry import build_workload

        workload = build_workload("http", args.url, params)
        t0, cpu0 = time.perf_counter(), time.process_time()
        res = uvloop.run(run_load(spec, workload, on_progress=samples.append))
        return {**_summary(res), "session_s": 0.0, "wall_s": time.perf_counter() - t0,
                "engine_cpu_s": time.process_time() - cpu0, "spark_cpu_s": 0.0}
    from aifb.client.scaleout.spark import SparkLoad
    from aifb.client.scaleout.spark_session import get_session, stop_session

    t0 = time.perf_counter()
    session = get_session(master, "aifb-spark-overhead")
    session_s = time.perf_counter() - t0
    gateway = session.sparkContext._gateway
    jvm_pid = int(gateway.proc.pid) if gateway is not None and gateway.proc else 0
    try:
        load = SparkLoad(spec, "http", args.url, params, master=master, partitions=partitions,
                         on_progress=samples.append)
        t0, cpu0 = time.perf_counter(), time.process_time()
        jvm0 = _proc_cpu_s(jvm_pid) if jvm_pid else 0.0
        res = load.run()
        wall_s = time.perf_counter() - t0
        spark_cpu_s = (time.process_time() - cpu0
                       + (_proc_cpu_s(jvm_pid) - jvm0 if jvm_pid else 0.0))
        engine_cpu_s = sum(float(info.get("cpu_s", 0.0)) for info in load.partition_info)
    finally:
        stop_session()
    return {**_summary(res), "session_s": session_s, "wall_s": wall_s,
            "engine_cpu_s": engine_cpu_s, "spark_cpu_s": spark_cpu_s}


def _run_pinned(engine: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    cpus = ENGINES[engine][2]
    argv = [sys.executable, __file__, "--worker", engine, "--url", url, "--mode", args.mode,
            "--seconds", str(args.seconds), "--users", str(args.users), "--rate", str(args.rate)]
    if args.pin and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=args.seconds + WARMUP_S + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} exited {proc.returncode}: {proc.stderr[-800:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _fmt(vals: list[float], spec: str = "{:.0f}") -> str:
    if not vals:
        return "-"
    return (spec.format(statistics.median(vals)) + " [" + spec.format(min(vals)) + "-"
            + spec.format(max(vals)) + "]")


def _ratio(num: list[float], den: list[float]) -> str:
    """Median ratio, and the range over the runs paired by repeat."""
    if not num or not den:
        return "-"
    median = f"{statistics.median(num) / statistics.median(den):.2f}"
    if len(num) != len(den) or not all(b > 0 for b in den):
        return median  # a run failed: the runs no longer pair up by repeat
    pairs = [a / b for a, b in zip(num, den, strict=True)]
    return f"{median} [{min(pairs):.2f}-{max(pairs):.2f}]"


def _print_table(runs: dict[str, list[dict[str, Any]]], notes: dict[str, str],
                 args: argparse.Namespace) -> None:
    load = (f"closed loop, {args.users} users" if args.mode == "closed"
            else f"open loop, constant {args.rate:g}/s, {args.users * 64} max in flight")
    print(f"\nGET /hello on nginx (CPU {NGINX_CPU}), {load}, {args.seconds:g}s measured after "
          f"{WARMUP_S:g}s warm-up, x{args.repeat} in turns; median [min-max]"
          + ("" if args.pin else "; not pinned"))
    print(f"{'engine':<14}{'cpus':>6}{'req/s':>22}{'vs inprocess':>20}{'vs local1':>20}"
          f"{'req/engine CPU-s':>22}{'spark CPU-s':>16}{'p99 us':>22}{'session s':>18}"
          f"{'run wall s':>18}")
    rates = {e: [r["rate"] for r in rs] for e, rs in runs.items()}
    for engine, rs in runs.items():
        if not rs:
            print(f"{engine:<14}  {notes.get(engine, 'no result')}")
            continue
        vs_a = _ratio(rates[engine], rates.get("inprocess", [])) if engine != "inprocess" else ""
        vs_b = (_ratio(rates[engine], rates.get("spark-local1", []))
                if engine == "spark-local2" else "")
        session = _fmt([r["session_s"] for r in rs], "{:.1f}") if ENGINES[engine][0] else ""
        cpus = ENGINES[engine][2] if args.pin else "any"
        print(f"{engine:<14}{cpus:>6}{_fmt(rates[engine]):>22}{vs_a:>20}{vs_b:>20}"
              f"{_fmt([r['requests'] / r['engine_cpu_s'] for r in rs if r['engine_cpu_s']]):>22}"
              f"{_fmt([r['spark_cpu_s'] for r in rs], '{:.1f}') if session else '':>16}"
              f"{_fmt([r['p99_us'] for r in rs]):>22}{session:>18}"
              f"{_fmt([r['wall_s'] for r in rs], '{:.1f}'):>18}")
        if engine in notes:
            print(f"{'':<14}  note: {notes[engine]}")
    per_cpu = {e: [r["requests"] / r["engine_cpu_s"] for r in rs if r["engine_cpu_s"]]
               for e, rs in runs.items()}
    if per_cpu.get("inprocess"):
        print("requests per engine CPU-s vs inprocess (CPU overhead per request, less noisy): "
              + ", ".join(f"{e} {_ratio(v, per_cpu['inprocess'])}" for e, v in per_cpu.items()
                          if e != "inprocess" and v))
    errors = sum(r["errors"] + r["dropped"] for rs in runs.values() for r in rs)
    print(f"load duration {args.seconds + WARMUP_S:g}s per run; errors + dropped over all runs: "
          f"{errors}")
    print(f"note: this machine has {os.cpu_count()} CPUs; spark-local2's second executor shares a "
          "CPU with nginx, so 'vs local1' shows contention here, not scaling on free cores.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mode", choices=("closed", "open"), default="closed")
    ap.add_argument("--users", type=int, default=16, help="closed loop: users (= connections)")
    ap.add_argument("--rate", type=float, default=4000.0, help="open loop: total target rate")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--worker", choices=tuple(ENGINES))
    ap.add_argument("--url", default="")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args)))
        return
    from tests.fixtures.nginx import start_nginx

    engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        ap.error(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="aifb-bench-") as tmpdir:
        server = start_nginx(Path(tmpdir) / "nginx", access_log=False,
                             cpu=NGINX_CPU if args.pin else None)
        try:
            for i in range(args.repeat):
                for engine in engines:
                    try:
                        got = _run_pinned(engine, server.base_url, args)
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                        notes[engine] = str(exc).strip().splitlines()[-1][:160]
                        got = None
                    if got is not None:
                        runs[engine].append(got)
                    print(f"repeat {i + 1}/{args.repeat} {engine}: "
                          f"{'failed' if got is None else round(got['rate'])}",
                          file=sys.stderr, flush=True)
        finally:
            server.stop()
    _print_table(runs, notes, args)


if __name__ == "__main__":
    main()
