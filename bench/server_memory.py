"""What large hostile requests leave behind in a real `aifb up` (issue 11, item 13).

Starts `aifb up` (local scheduler, fresh home), then sends every method (found through
reflection) `--calls` requests of `--mib` MiB each, all refused, and prints the server's RSS:
at start, at its peak, and after `--idle` seconds without calls. The peer is the server's own
RSS at start: the table prints what is left over it. Before the fix a burst of 140 calls of
10 MiB left 1.8-2.1 GiB for good (glibc kept freed 10 MB blocks in its heap, and every refused
call kept its request alive in a reference cycle until a rare full collection).

    .venv/bin/python bench/server_memory.py [--mib 10] [--calls 5] [--idle 25]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aifb.mesh.channel import auth_metadata, open_sync_channel
from tests.integration.rpc_probe import call_raw, methods
from tests.integration.test_cli_telemetry import cli_env, start_up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=10, help="size of each request (MiB, < 16)")
    ap.add_argument("--calls", type=int, default=5, help="requests per method")
    ap.add_argument("--idle", type=float, default=25.0, help="seconds to wait after the burst")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aifb-bench-memory-"))
    up = start_up(tmp, None, "--scheduler", "local")
    try:
        token = (Path(cli_env(tmp)["HOME"]) / ".aifb" / "token").read_text().strip()
        proc = psutil.Process(up.daemon.proc.pid)
        rss = lambda: proc.memory_info().rss / 2**20  # noqa: E731
        start = peak = rss()
        size = args.mib * 2**20
        # Field 1 (a string in every request) of `size` bytes: a valid message that is refused.
        varint, n = b"", size
        while n >= 0x80:
            varint, n = varint + bytes([n & 0x7F | 0x80]), n >> 7
        body = b"\x0a" + varint + bytes([n]) + b"x" * size
        md = auth_metadata(token)
        sent = 0
        with open_sync_channel(up.address, token="") as channel:
            for method in methods(channel):
                for _ in range(args.calls):
                    call_raw(channel, method, body, md, timeout=0.5 if method[2] else 15)
                    sent += 1
                peak = max(peak, rss())
        time.sleep(args.idle)
        after = rss()
    finally:
        up.daemon.stop()
    print(f"{sent} refused requests of {args.mib} MiB ({sent * args.mib / 1024:.1f} GiB)")
    print(f"{'RSS':<28}{'MiB':>8}{'x start':>9}")
    for name, value in (("at start (the peer)", start), ("peak during the burst", peak),
                        (f"after {args.idle:g} s idle", after)):
        print(f"{name:<28}{value:8.0f}{value / start:9.2f}")


if __name__ == "__main__":
    main()
