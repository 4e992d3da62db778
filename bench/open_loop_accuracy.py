"""Open-loop accuracy at 2k, 5k and 10k req/s: achieved/target and schedule lag, vs naive aiohttp.

nginx is pinned to CPU 1, the generator to CPU 0; GET /hello on 127.0.0.1 only, constant
arrivals, 1 s warm-up excluded. The peer is the usual aiohttp open loop (sleep until each send
time, then a task per request), timed the same way (lag = actual - intended send time).
Stops by itself.

    .venv/bin/python bench/open_loop_accuracy.py [--rates 2000,5000,10000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    from aifb.client.http_workload import HttpTarget, HttpWorkload
    from aifb.client.load import run_load
    from aifb.client.spec import LoadSpec

    wl = HttpWorkload(HttpTarget(url, path="/hello", connections=512))
    res = await run_load(LoadSpec(mode="open", rate=rate, duration_s=seconds + 1.0,  # type: ignore[arg-type]
                                  warmup_s=1.0, max_in_flight=512), wl)
    lag, lat = res.histograms["lag"], res.histograms["latency"]
    return {"achieved": res.achieved_rate, "lag_p50": lag.percentile_us(50),
            "lag_p99": lag.percentile_us(99), "p50": lat.percentile_us(50),
            "p99": lat.percentile_us(99), "dropped": res.counters["dropped"],
            "errors": res.counters["errors"], "late": res.counters["late"]}


async def _aiohttp(url: str, rate: float, seconds: float) -> dict[str, float]:
    import aiohttp

    lags: list[int] = []
    lats: list[int] = []
    errors = 0
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
    span = seconds
    lags.sort()
    lats.sort()
    return {"achieved": len(lats) / span, "lag_p50": lags[len(lags) // 2] / 1e3,
            "lag_p99": lags[int(len(lags) * 0.99)] / 1e3, "p50": lats[len(lats) // 2] / 1e3,
            "p99": lats[int(len(lats) * 0.99)] / 1e3, "dropped": 0, "errors": errors,
            "late": sum(1 for v in lags if v > 1_000_000)}


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
    print(f"{'tool':<8}{'target':>8}{'achieved/target':>26}{'lag p50 us':>26}"
          f"{'lag p99 us':>26}{'lat p99 us':>28}{'late>1ms':>10}{'dropped':>9}")
    for kind, rate, runs in rows:
        def col(key: str, scale: float = 1.0, fmt: str = "{:.0f}",
                runs: list[dict[str, float]] = runs) -> str:
            vals = [r[key] * scale for r in runs]
            return (fmt.format(statistics.median(vals)) + " [" + fmt.format(min(vals)) + "-"
                    + fmt.format(max(vals)) + "]")
        print(f"{kind:<8}{rate:>8.0f}{col('achieved', 1 / rate, '{:.4f}'):>26}"
              f"{col('lag_p50'):>26}{col('lag_p99'):>26}{col('p99'):>28}"
              f"{statistics.median(r['late'] for r in runs):>10.0f}"
              f"{statistics.median(r['dropped'] for r in runs):>9.0f}")


if __name__ == "__main__":
    main()
