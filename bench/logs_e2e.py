"""Benchmark: log lines end to end, file -> logger agent -> collector -> Loki push receiver.

    .venv/bin/python bench/logs_e2e.py [--lines 300000] [--line-bytes 100] [--baseline-rev REV]

Each part runs in its own process so its CPU is its own (one warm-up line goes through first,
outside the measurement): a Loki push receiver (decodes the
snappy block body and the `logproto.PushRequest`, checks every stream's labels and time order,
counts lines; 400 for anything else), the collector forwarding to it, and the logger agent
(`aifb logger serve`) tailing one file of LINES lines of LINE_BYTES bytes written
beforehand. Measured in the same run:
  - end to end: lines and MiB per second of wall time until the receiver holds every line, and
    per core: MiB over the CPU seconds of the logger and collector processes (each also alone);
  - direct: the same lines pre-encoded into 1 MiB PushRequests and posted straight to the
    receiver (the receiver's own rate: the peer the pipeline is compared with);
  - ceiling: one core building, serializing and compressing PushRequests of these lines;
  - with --baseline-rev REV, the same run first with the collector and logger of commit REV
    (a git worktree laid out as the `aifb` import root on PYTHONPATH), and the ratio of this
    tree's end-to-end rates to REV's (e.g. the acknowledgement path before issue 16).
It is not a test and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from operator import le
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _net import free_port, wait_port

__all__ = ["main"]

_LABELS = re.compile(r'\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(?:, )?)+\}')


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the processes ------------------------------------------------------------------------

def run_receiver(port: int) -> None:
    """A fast, strict Loki push receiver: protobuf + snappy block only; GET /count."""
    import cramjam

    from aifb.wire import logproto_pb2

    state: dict[str, Any] = {"lines": 0, "bytes": 0, "requests": 0, "last": {}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, text: str = "") -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(200, json.dumps({k: v for k, v in state.items() if k != "last"}))

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/loki/api/v1/push" or \
                    self.headers.get("Content-Type") != "application/x-protobuf":
                return self._answer(400, "expected a protobuf push")
            try:
                request = logproto_pb2.PushRequest.FromString(
                    bytes(cramjam.snappy.decompress_raw(body)))
            except Exception as exc:  # any decoding fault is the client's
                return self._answer(400, f"bad push body: {exc}")
            lines = size = 0
            for stream in request.streams:
                if not _LABELS.fullmatch(stream.labels):
                    return self._answer(400, f"bad labels {stream.labels!r}")
                stamps = [e.timestamp.seconds * 10**9 + e.timestamp.nanos for e in stream.entries]
                last = state["last"].get(stream.labels, 0)
                if stamps and (stamps[0] < last or not all(map(le, stamps, stamps[1:]))):
                    return self._answer(400, "entry out of order")
                if stamps:
                    state["last"][stream.labels] = stamps[-1]
                lines += len(stamps)
                size += sum(len(e.line) for e in stream.entries)
            state["lines"] += lines
            state["bytes"] += size
            state["requests"] += 1
            self._answer(204)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def run_collector(port: int, loki: str) -> None:
    from aifb.collector import CollectorConfig, start_collector
    from aifb.mesh.auth import Authenticator
    from aifb.mesh.config import MeshConfig
    from aifb.mesh.server import create_server

    async def serve() -> None:
        app = await start_collector(CollectorConfig(loki_url=loki, metrics_listen=""))
        mesh = await create_server(MeshConfig(listen=f"127.0.0.1:{port}"), app.bindings,
                                   authenticator=Authenticator(None, enabled=False),
                                   listen=f"127.0.0.1:{port}")
        try:
            await asyncio.Event().wait()  # until SIGTERM
        finally:
            await mesh.stop(0)

    asyncio.run(serve())


# -- measures -----------------------------------------------------------------------------

def make_lines(n: int, size: int) -> list[str]:
    levels = ("INFO", "INFO", "INFO", "WARNING", "ERROR", "DEBUG")
    out = []
    for i in range(n):
        head = f"2026-11-28T12:00:00.{i % 1000:03d}Z {levels[i % 6]} worker-{i % 8} request {i} "
        out.append((head + "x" * size)[:size - 1])
    return out


def _count(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return dict(json.loads(r.read()))


def direct(url: str, lines: list[str]) -> float:
    """Pre-encoded 1 MiB pushes straight to the receiver; returns lines/s (wall)."""
    from aifb.collector.loki import encode_protobuf

    now = time.time_ns()
    per = max(1, (1 << 20) // max(1, len(lines[0])))
    bodies = [encode_protobuf([((("job", "direct"),),
                                [(now + j, line) for j, line in enumerate(lines[i:i + per], i)])])
              for i in range(0, len(lines), per)]
    import httpx

    t0 = time.perf_counter()
    with httpx.Client() as http:
        for body in bodies:
            r = http.post(url, content=body, headers={"Content-Type": "application/x-protobuf"})
            assert r.status_code == 204, r.text
    return len(lines) / (time.perf_counter() - t0)


def ceiling(lines: list[str]) -> float:
    from aifb.collector.loki import encode_protobuf

    now = time.time_ns()
    sample = lines[:100_000]
    per = 10_000
    t0 = time.process_time()
    for i in range(0, len(sample), per):
        encode_protobuf([((("job", "c"),), [(now + j, s) for j, s in
                                            enumerate(sample[i:i + per], i)])])
    return len(sample) / (time.process_time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--line-bytes", type=int, default=100, help="bytes per line, newline included")
    ap.add_argument("--timeout", type=float, default=240.0)
    ap.add_argument("--role", default="", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--loki", default="", help=argparse.SUPPRESS)
    ap.add_argument("--baseline-rev", default="", metavar="REV",
                    help="also measure the collector and logger of this git revision")
    ap.add_argument("--json-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "receiver":
        return run_receiver(args.port)
    if args.role == "collector":
        return run_collector(args.port, args.loki)
    baseline = _baseline(args) if args.baseline_rev else None
    result = measure(args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result))
    if baseline is not None:
        print(f"\nagainst {args.baseline_rev} (same run, same machine):\n")
        print(f"| {'end to end':<34} | {args.baseline_rev[:12]:>12} | {'this tree':>10} | "
              f"{'ratio':>6} |")
        print(f"|{'-' * 36}|{'-' * 14}|{'-' * 12}|{'-' * 8}|")
        for key, name in (("wall_mib_s", "MiB/s (wall)"), ("core_mib_s", "MiB/s per core")):
            print(f"| {name:<34} | {baseline[key]:>12.2f} | {result[key]:>10.2f} | "
                  f"{result[key] / baseline[key]:>6.2f} |")


def _baseline(args: argparse.Namespace) -> dict[str, float]:
    """Run this script with the collector and logger of `--baseline-rev` (its results only)."""
    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="aifb-bench-rev-"))
    tree = tmp / "tree" / "aifb"
    try:
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q",
                        str(tmp / "rev"), args.baseline_rev], check=True)
        tree.mkdir(parents=True)
        for part in ("mesh", "job", "server", "client", "monitor", "logger", "collector", "cli"):
            (tree / part).symlink_to(tmp / "rev" / part)
        for part in ("v1", "wire"):
            (tree / part).symlink_to(tmp / "rev" / "gen" / "python" / "aifb" / part)
        out = tmp / "baseline.json"
        print(f"measuring {args.baseline_rev} first ...", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--lines",
                        str(args.lines), "--line-bytes", str(args.line_bytes), "--timeout",
                        str(args.timeout), "--json-out", str(out)], check=True,
                       env={**os.environ, "PYTHONPATH": str(tree.parent)})
        return dict(json.loads(out.read_text()))
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force",
                        str(tmp / "rev")], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One run of the pipeline and the peers; prints the table, returns the key rates."""
    from aifb.collector import ingest

    print(f"collector: {Path(ingest.__file__).resolve().parents[1]}")

    tmp = Path(tempfile.mkdtemp(prefix="aifb-bench-logs-"))
    procs: list[subprocess.Popen[bytes]] = []
    script = str(Path(__file__).resolve())
    try:
        lines = make_lines(args.lines, args.line_bytes)
        data = "".join(line + "\n" for line in lines).encode()
        mib = len(data) / (1 << 20)
        log_file = tmp / "job.out"
        log_file.touch()
        r_port, c_port, d_port = free_port(), free_port(), free_port()
        spawn = [sys.executable, script, "--role"]
        procs.append(subprocess.Popen([*spawn, "receiver", "--port", str(r_port)]))
        procs.append(subprocess.Popen([*spawn, "receiver", "--port", str(d_port)]))
        wait_port(r_port)
        wait_port(d_port)
        d_rate = direct(f"http://127.0.0.1:{d_port}/loki/api/v1/push", lines)
        collector = subprocess.Popen([*spawn, "collector", "--port", str(c_port), "--loki",
                                      f"http://127.0.0.1:{r_port}"])
        procs.append(collector)
        wait_port(c_port)
        config = tmp / "config.yaml"
        config.write_text(
            f"logger:\n  node: bench\n  state_dir: {tmp / 'state'}\n  targets:\n"
            f"    - {{service: services/bench, job_id: '1', stdout_path: '{log_file}'}}\n"
            "mesh:\n  auth: false\n")
        env = {**os.environ, "HOME": str(tmp), "AIFB_CONFIG": str(config)}
        count_url = f"http://127.0.0.1:{r_port}/count"
        # The node daemon users run: `aifb logger serve`, its file from the config, no server.
        logger = subprocess.Popen([str(Path(sys.executable).with_name("aifb")), "logger",
                                   "serve", "--listen", "", "--watch-server", "",
                                   "--collector", f"127.0.0.1:{c_port}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(logger)
        time.sleep(4.0)  # the logger starts, connects and follows the (empty) file
        # One line through the whole path first: connections, lazy imports and caches are
        # then in place, and what is measured is the steady state.
        with log_file.open("ab") as fh:
            fh.write(b"2026-11-28T12:00:00.000Z INFO warm-up\n")
        warm_deadline = time.monotonic() + 30
        while _count(f"http://127.0.0.1:{r_port}/count")["lines"] < 1:
            if time.monotonic() > warm_deadline:
                raise RuntimeError("the warm-up line did not arrive")
            time.sleep(0.05)
        if os.environ.get("BENCH_PROFILE"):
            spy = [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "200", "-f",
                   "raw", "-o"]
            procs.append(subprocess.Popen([*spy, os.environ["BENCH_PROFILE"], "--pid",
                                           str(logger.pid)]))
            procs.append(subprocess.Popen([*spy, os.environ["BENCH_PROFILE"] + ".collector",
                                           "--pid", str(collector.pid)]))
            time.sleep(1.0)
        c0, l0 = _cpu(collector.pid), _cpu(logger.pid)
        t0 = time.perf_counter()
        with log_file.open("ab") as fh:  # the whole job output appears at once
            fh.write(data)
        got: dict[str, int] = {"lines": 0}
        while got["lines"] < args.lines and time.perf_counter() - t0 < args.timeout:
            time.sleep(0.05)
            got = _count(count_url)
            got["lines"] -= 1  # the warm-up line
        wall = time.perf_counter() - t0
        l_cpu, c_cpu = _cpu(logger.pid) - l0, _cpu(collector.pid) - c0
    finally:
        for p in reversed(procs):
            if p.poll() is None:  # py-spy writes its profile on SIGINT
                p.send_signal(signal.SIGINT if "py-spy" in str(p.args) else signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    arrived = got["lines"]
    c_rate = ceiling(lines)
    e_rate = arrived / wall
    print(f"\n{args.lines:,} lines of {args.line_bytes} bytes ({mib:.1f} MiB); {arrived:,} "
          f"arrived in {wall:.2f} s; {os.cpu_count()} CPUs\n")
    print(f"| {'measure':<58} | {'lines/s':>10} | {'MiB/s':>7} |")
    print(f"|{'-' * 60}|{'-' * 12}|{'-' * 9}|")
    per_mib = args.line_bytes / (1 << 20)
    rows = [
        ("end to end: file -> logger -> collector -> receiver (wall)", e_rate),
        ("end to end per core (logger + collector CPU-s)", arrived / (l_cpu + c_cpu)),
        ("  logger alone per core", arrived / l_cpu),
        ("  collector alone per core", arrived / c_cpu),
        ("direct push of the same lines into a receiver (wall)", d_rate),
        ("ceiling: PushRequest build + serialize + snappy (1 core)", c_rate),
    ]
    for name, rate in rows:
        print(f"| {name:<58} | {rate:>10,.0f} | {rate * per_mib:>7.2f} |")
    print(f"\nratio end-to-end / direct (wall): {e_rate / d_rate:.2f}; CPU-s: logger {l_cpu:.2f}, "
          f"collector {c_cpu:.2f}")
    if arrived != args.lines:
        print(f"WARNING: {args.lines - arrived} lines did not arrive within {args.timeout:g} s")
    return {"wall_mib_s": e_rate * per_mib, "core_mib_s": arrived / (l_cpu + c_cpu) * per_mib}


if __name__ == "__main__":
    main()
