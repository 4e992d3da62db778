"""Requests/s per core against nginx: aifb as users run it vs wrk, k6, Locust and aiohttp.

nginx runs pinned to one CPU, each generator pinned to the other, 16 keep-alive connections,
GET /hello on 127.0.0.1 only; every tool runs --repeat times for --seconds, in turns, in the same
run. `aifb` is the path users run: `aifb up` (all its threads, and the load worker process it
spawns, pinned to the generator's CPU) and `aifb bench run --concurrency 16`, the rate of the
run's measurement window; `aifb-engine` is the engine alone in one uvloop process, for reference.
Tools that are not installed are reported as such. Stops by itself.

    .venv/bin/python bench/http_load.py [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VENV_BIN = Path(sys.executable).parent

__all__ = ["main"]

K6_SCRIPT = """import http from 'k6/http';
export const options = { vus: %d, duration: '%ds', discardResponseBodies: true };
export default function () { http.get('%s'); }
"""
LOCUST_FILE = """from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser
class U(FastHttpUser):
    wait_time = constant(0)
    @task
    def hello(self):
        self.client.get("/hello")
"""


def _pin(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else argv


def _run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0:4]} exited {proc.returncode}: {proc.stderr[-500:]}")
    return proc.stdout


def run_wrk(url: str, conns: int, seconds: int, cpu: int, tmp: Path) -> float:
    out = _run(_pin(cpu, ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url]), seconds + 30)
    return float(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("Requests/sec")))


def run_k6(url: str, conns: int, seconds: int, cpu: int, tmp: Path) -> float:
    script, summary = tmp / "k6.js", tmp / "k6.json"
    script.write_text(K6_SCRIPT % (conns, seconds, url))
    _run(_pin(cpu, [_tool("k6") or "k6", "run", "--quiet", "--no-usage-report",
                    "--summary-export", str(summary), str(script)]), seconds + 60,
         env={"GOMAXPROCS": "1", "K6_NO_USAGE_REPORT": "true"})
    return float(json.loads(summary.read_text())["metrics"]["http_reqs"]["rate"])


def run_locust(url: str, conns: int, seconds: int, cpu: int, tmp: Path) -> float:
    locustfile = tmp / "locustfile.py"
    locustfile.write_text(LOCUST_FILE)
    prefix = tmp / "locust"
    _run(_pin(cpu, [_tool("locust") or "locust", "-f", str(locustfile), "--headless",
                    "-u", str(conns), "-r", str(conns), "-t", f"{seconds}s", "--host", url,
                    "--csv", str(prefix), "--only-summary", "--loglevel", "ERROR"]),
         seconds + 60)
    with open(f"{prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return float(row["Requests/s"])


def _self_worker(kind: str, url: str, conns: int, seconds: int, cpu: int) -> float:
    argv = [sys.executable, __file__, "--worker", kind, "--url", url, "--connections",
            str(conns), "--seconds", str(seconds)]
    return float(json.loads(_run(_pin(cpu, argv), seconds + 60).splitlines()[-1])["rps"])


def run_aifb(url: str, conns: int, seconds: int, cpu: int, tmp: Path) -> float:
    """`aifb up` + `aifb bench run`: the control plane and its load worker on one CPU."""
    from tests.integration.test_cli_telemetry import start_up

    home = tmp / f"up-{time.monotonic_ns()}"
    home.mkdir()
    up = start_up(home, None, "--scheduler", "local")
    try:
        _run(["taskset", "-a", "-cp", str(cpu), str(up.daemon.proc.pid)], 30)
        out = up.json("bench", "run", "--url", url, "--workload", "http", "--concurrency",
                      str(conns), "--duration", f"{seconds}s", "--warmup", "0.5s")
    finally:
        up.daemon.stop()
    figures = out["report"]["figures"]
    if figures["counters"]["errors"]:
        raise RuntimeError(f"errors: {figures['counters']}")
    return float(figures["achieved_rate"])


def run_aifb_engine(url: str, conns: int, seconds: int, cpu: int, tmp: Path) -> float:
    return _self_worker("aifb", url, conns, seconds, cpu)


def run_aiohttp(url: str, conns: int, seconds: int, cpu: int, tmp: Path) -> float:
    return _self_worker("aiohttp", url, conns, seconds, cpu)


def _tool(name: str) -> str | None:
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def _have(name: str) -> bool:
    if name in ("aifb", "aifb-engine"):
        return True
    if name == "aiohttp":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            return False
        return True
    return _tool(name) is not None


async def _worker_aifb(url: str, conns: int, seconds: int) -> float:
    from aifb.client.engine.load import run_load
    from aifb.client.engine.spec import LoadSpec
    from aifb.client.workloads.http import HttpTarget, HttpWorkload

    wl = HttpWorkload(HttpTarget(url.rsplit("/", 1)[0], path="/hello", connections=conns))
    res = await run_load(LoadSpec(users=conns, duration_s=float(seconds), warmup_s=0.5), wl)
    if res.counters["errors"]:
        raise RuntimeError(f"errors: {res.errors_by_kind}")
    return res.achieved_rate


async def _worker_aiohttp(url: str, conns: int, seconds: int) -> float:
    import aiohttp

    done = 0
    end = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as session:
        async def user() -> None:
            nonlocal done
            while time.perf_counter() < end:
                async with session.get(url) as resp:
                    await resp.read()
                done += 1
        start = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(conns)))
        return done / (time.perf_counter() - start)


TOOLS = {"wrk": run_wrk, "k6": run_k6, "locust": run_locust, "aiohttp": run_aiohttp,
         "aifb-engine": run_aifb_engine, "aifb": run_aifb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--worker", choices=("aifb", "aiohttp"))
    ap.add_argument("--url", default="")
    args = ap.parse_args()
    if args.worker:
        import uvloop

        worker = _worker_aifb if args.worker == "aifb" else _worker_aiohttp
        rps = uvloop.run(worker(args.url, args.connections, args.seconds))
        print(json.dumps({"rps": rps}))
        return
    from tests.fixtures.nginx import start_nginx

    tools = [t for t in args.tools.split(",") if t]
    with tempfile.TemporaryDirectory(prefix="aifb-bench-") as tmpdir:
        tmp = Path(tmpdir)
        server = start_nginx(tmp / "nginx", access_log=False, cpu=1)
        url = f"{server.base_url}/hello"
        results: dict[str, list[float]] = {t: [] for t in tools}
        notes: dict[str, str] = {}
        try:
            for _ in range(args.repeat):
                for tool in tools:
                    if not _have(tool):
                        notes[tool] = "not installed"
                        continue
                    try:
                        results[tool].append(TOOLS[tool](url, args.connections, args.seconds,
                                                         0, tmp))
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                        notes[tool] = str(exc)[:120]
        finally:
            server.stop()
    _print_table(results, notes, args)


def _print_table(results: dict[str, list[float]], notes: dict[str, str],
                 args: argparse.Namespace) -> None:
    ours = statistics.median(results["aifb"]) if results.get("aifb") else 0.0
    print(f"\nGET /hello, nginx on CPU 1, generator on CPU 0, {args.connections} keep-alive "
          f"connections, {args.seconds}s x {args.repeat}")
    print(f"{'tool':<12}{'median req/s':>14}{'min':>10}{'max':>10}{'aifb / tool':>13}  runs")
    for tool, vals in results.items():
        if not vals:
            print(f"{tool:<12}{'-':>14}  {notes.get(tool, 'no result')}")
            continue
        med = statistics.median(vals)
        ratio = f"{ours / med:.2f}x" if ours and tool != "aifb" else ""
        runs = ", ".join(f"{v:.0f}" for v in vals)
        print(f"{tool:<12}{med:>14.0f}{min(vals):>10.0f}{max(vals):>10.0f}{ratio:>13}  {runs}")


if __name__ == "__main__":
    main()
