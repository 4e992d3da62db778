"""A metrics agent for the delivery fault tests: numbered samples through the agents' sender.

    python -m tests.integration.numbered_metrics --collector H:P --run ID --count N

It pushes `aifb_test_numbered{run=ID}` with values 1..N, 10 ms apart in time, `per_batch`
samples per batch every `every` seconds, through `aifb.mesh.push.BatchSender` (the delivery
layer of the monitor and logger agents: bounded buffer, spool, resend after a reconnect) with
the token of $HOME/.aifb, then waits until every batch is acknowledged and prints its counters
as one JSON line. So Prometheus must end with exactly N samples summing to N(N+1)/2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from pathlib import Path

from aifb.mesh.channel import load_token
from aifb.mesh.discovery import channel_factory
from aifb.mesh.push import Backoff, BatchSender
from aifb.v1 import telemetry_pb2


async def push(args: argparse.Namespace) -> dict[str, int]:
    token = load_token(Path.home() / ".aifb")
    sender = BatchSender("metrics", f"numbered@{args.run}",
                         channel_factory(args.collector, token=token),
                         spool_dir=Path(args.spool), backoff=Backoff(0.1, 1.0))
    sender.start()
    start_ms = int(time.time() * 1000) - 10 * args.count  # all in the past: none in future
    started = time.monotonic()
    for first in range(0, args.count, args.per_batch):
        numbers = range(first, min(first + args.per_batch, args.count))
        sender.submit(telemetry_pb2.MetricBatch(series=[telemetry_pb2.MetricSeries(
            name="aifb_test_numbered", labels={"run": args.run},
            type=telemetry_pb2.METRIC_TYPE_GAUGE,
            timestamps_ms=[start_ms + 10 * i for i in numbers],
            values=[float(i + 1) for i in numbers])]))
        await asyncio.sleep(max(0.0, started + (first // args.per_batch + 1) * args.every
                                - time.monotonic()))
    flushed = await sender.flush(args.flush_timeout)
    await sender.close()
    return {"flushed": int(flushed), **dataclasses.asdict(sender.stats)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--collector", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--per-batch", type=int, default=5)
    ap.add_argument("--every", type=float, default=0.05)
    ap.add_argument("--spool", required=True)
    ap.add_argument("--flush-timeout", type=float, default=240.0)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(push(args))), flush=True)


if __name__ == "__main__":
    main()
