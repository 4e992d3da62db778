"""Open-loop accuracy at 2k, 5k and 10k req/s: achieved/target and schedule lag, vs naive aiohttp.

nginx is pinned to CPU 1, the generator to CPU 0; GET /hello on 127.0.0.1 only, constant
arrivals, 1 s warm-up excluded, 512 keep-alive connections at most for both tools. The peer is
the usual aiohttp open loop (sleep until each send time, then a task per request), timed the
same way: lag = actual - intended send time (for aifb, taken at the socket write), latency from
the intended send time. Neither tool drops a request: one that finds no free connection waits
for one (aifb counts these as `waits`; its lag includes the wait); `dropped` (over aifb's
max_in_flight, 10 000) is printed and would be counted, never skipped. Also printed: the
generator's CPU time per request (user + system, from getrusage) and how often the kernel took
the core away from it (involuntary context switches per second): on a shared machine these say
whether the lag came from the generator or from the neighbours. Each run is a fresh process;
the table gives the median and [min-max] over the repeats, and the last lines the ratio peer/aifb
of the lag p99 and aifb's achieved/target. Stops by itself.

    .venv/bin/python bench/open_loop_accuracy.py [--rates 2000,5000,10000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

__all__ = ["main"]


async def _aifb(url: str, rate: float, seconds: float) -> dict[str, float]:
    from aifb.client.engine.load import run_load
    from aifb.client.engine.spec import LoadSpec
    from aifb.client.workloads.http import HttpTarget, HttpWorkload

    wl = HttpWorkload(HttpTarget(url, path="/hello", connections=512))
    usage = _usage()
    res = await run_load(LoadSpec(mode="open", rate=rate, duration_s=seconds + 1.0,  # type: ignore[arg-type]
                                  warmup_s=1.0), wl)
    cpu_s, switches = _since(usage)
    lag, lat = res.histograms["lag"], res.histograms["latency"]
    total = rate * (seconds + 1.0)
    return {"achieved": res.achieved_rate, "lag_p50": lag.percentile_us(50),
            "lag_p99": lag.percentile_us(99), "p50": lat.percentile_us(50),
            "p99": lat.percentile_us(99), "dropped": res.counters["dropped"],
            "errors": res.counters["errors"], "late": res.counters["late"],
            "waits": res.extra["connection_waits"], "cpu_us": cpu_s / total * 1e6,
            "preempt_s": switches / (seconds + 1.0)}


def _usage() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_SELF)


def _since(before: resource.struct_rusage) -> tuple[float, int]:
    now = _usage()
    return (now.ru_utime - before.ru_utime + now.ru_stime - before.ru_stime,
            now.ru_nivcsw - before.ru_nivcsw)


async def _aiohttp(url: str, rate: float, seconds: float) -> dict[str, float]:
    import aiohttp

    lags: list[int] = []
    lats: list[int] = []
    errors = 0
    usage = _usage()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
        start = time.perf_counter_ns()
        window = start + 1_000_000_000  # the same 1 s warm-up, excluded

        async def one(intended: int) -> None:
            nonlocal errors
            lag = time.perf_counter_ns() - intended
            try:
                async with session.get(url + "/hello") as resp:
                    await resp.read()
            except aiohttp.ClientError:
                errors += 1
                return
            if intended >= window:
                lags.append(lag)
                lats.append(time.perf_counter_ns() - intended)

        tasks = []
        for i in range(int(rate * (seconds + 1.0))):
            intended = start + int(i * 1e9 / rate)
            delay = intended - time.perf_counter_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            tasks.append(asyncio.create_task(one(intended)))
        await asyncio.gather(*tasks)
    cpu_s, switches = _since(usage)
    span = seconds
    lags.sort()
    lats.sort()
    total = rate * (seconds + 1.0)
    return {"achieved": len(lats) / span, "lag_p50": lags[len(lags) // 2] / 1e3,
            "lag_p99": lags[int(len(lags) * 0.99)] / 1e3, "p50": lats[len(lats) // 2] / 1e3,
            "p99": lats[int(len(lats) * 0.99)] / 1e3, "dropped": 0, "errors": errors,
            "late": sum(1 for v in lags if v > 1_000_000), "waits": float("nan"),
            "cpu_us": cpu_s / total * 1e6, "preempt_s": switches / (seconds + 1.0)}


def _pinned_worker(kind: str, url: str, rate: float, seconds: float) -> dict[str, float]:
    argv = [sys.executable, __file__, "--worker", kind, "--url", url, "--rates", str(rate),
            "--seconds", str(seconds)]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "0", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-800:])
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="2000,5000,10000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--worker", choices=("aifb", "aiohttp"))
    ap.add_argument("--url", default="")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if args.worker:
        import uvloop

        fn = _aifb if args.worker == "aifb" else _aiohttp
        print(json.dumps(uvloop.run(fn(args.url, rates[0], args.seconds))))
        return
    from tests.fixtures.nginx import start_nginx

    kinds = ["aifb", "aiohttp"] if args.peer else ["aifb"]
    rows: list[tuple[str, float, list[dict[str, float]]]] = []
    with tempfile.TemporaryDirectory(prefix="aifb-bench-") as tmpdir:
        server = start_nginx(Path(tmpdir) / "nginx", access_log=False, cpu=1)
        try:
            for rate in rates:
                for kind in kinds:
                    runs = [_pinned_worker(kind, server.base_url, rate, args.seconds)
                            for _ in range(args.repeat)]
                    rows.append((kind, rate, runs))
        finally:
            server.stop()
    print(f"\nopen loop, constant arrivals, {args.seconds:g}s measured after 1s warm-up, "
          f"x{args.repeat} (median [min-max]); generator CPU 0, nginx CPU 1")
    print(f"{'tool':<8}{'target':>7}{'achieved/target':>25}{'lag p50 us':>22}"
          f"{'lag p99 us':>24}{'lat p99 us':>26}{'late>1ms':>9}{'dropped':>8}{'waits':>7}"
          f"{'cpu us/req':>11}{'preempt/s':>10}")
    for kind, rate, runs in rows:
        def col(key: str, scale: float = 1.0, fmt: str = "{:.0f}",
                runs: list[dict[str, float]] = runs) -> str:
            vals = [r[key] * scale for r in runs]
            return (fmt.format(statistics.median(vals)) + " [" + fmt.format(min(vals)) + "-"
                    + fmt.format(max(vals)) + "]")
        waits = statistics.median(r["waits"] for r in runs)
        print(f"{kind:<8}{rate:>7.0f}{col('achieved', 1 / rate, '{:.4f}'):>25}"
              f"{col('lag_p50'):>22}{col('lag_p99'):>24}{col('p99'):>26}"
              f"{statistics.median(r['late'] for r in runs):>9.0f}"
              f"{statistics.median(r['dropped'] for r in runs):>8.0f}"
              f"{'-' if waits != waits else f'{waits:.0f}':>7}"
              f"{statistics.median(r['cpu_us'] for r in runs):>11.1f}"
              f"{statistics.median(r['preempt_s'] for r in runs):>10.0f}")
    if args.peer:
        print("\nratio peer/aifb of the median lag p99 (> 1: aifb sends closer to schedule):")
        for rate in rates:
            lag = (_median(rows, "aiohttp", rate, "lag_p99")
                   / max(_median(rows, "aifb", rate, "lag_p99"), 1))
            cpu = _median(rows, "aiohttp", rate, "cpu_us") / _median(rows, "aifb", rate, "cpu_us")
            ach = _median(rows, "aifb", rate, "achieved") / rate
            print(f"  {rate:>7.0f}/s  lag p99 aiohttp/aifb = {lag:.1f}   "
                  f"cpu/req aiohttp/aifb = {cpu:.1f}   aifb achieved/target = {ach:.4f}")

def _median(rows: list[tuple[str, float, list[dict[str, float]]]], kind: str, rate: float,
            key: str) -> float:
    return statistics.median(r[key] for k, r_rate, runs in rows if k == kind and r_rate == rate
                             for r in runs)

if __name__ == "__main__":
    main()
