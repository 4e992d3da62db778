"""Benchmark: the collector's share of a log batch, in process, on one core.

    .venv/bin/python bench/logs_collector.py [--lines 10000] [--line-bytes 100] [--repeat 7]

One PushLogsRequest of LINES lines (one stream, one timestamp, as a logger agent sends a read)
goes through the two ways PushLogs can take it: the fast path (`fast_logs`: the view message,
lines kept as UTF-8 bytes) and the general path (the real message, a `str` per line, then
`Validator.logs`, which is the peer). Each is followed by the Loki PushRequest body it feeds
(build, serialize, snappy). Best of REPEAT rounds of CPU time; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["main"]


def _best(fn: Callable[[], object], repeat: int, number: int = 20) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, (time.process_time() - t0) / number)
    return best


def main() -> None:
    from aifb.collector.config import CollectorConfig
    from aifb.collector.convert import log_batch_from_proto
    from aifb.collector.fast_logs import prepare_logs, read_log_view
    from aifb.collector.loki import encode_protobuf_columns
    from aifb.collector.validate import PreparedLogs, Validator
    from aifb.v1 import collector_pb2, telemetry_pb2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--line-bytes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    now = time.time_ns()
    lines = [(f"2026-11-28T12:00:00.{i % 1000:03d}Z INFO worker-{i % 8} request {i} "
              + "x" * args.line_bytes)[:args.line_bytes - 1] for i in range(args.lines)]
    data = collector_pb2.PushLogsRequest(batch=telemetry_pb2.LogBatch(
        agent_id="bench", sequence=1,
        resource=telemetry_pb2.TelemetryResource(attributes={"node": "n1"}),
        streams=[telemetry_pb2.LogStream(labels={"service": "s", "level": "info"},
                                         timestamps_ns=[now] * len(lines), lines=lines)])
    ).SerializeToString()
    validator = Validator(CollectorConfig())

    def general() -> PreparedLogs:
        request = collector_pb2.PushLogsRequest.FromString(data)
        return validator.logs(log_batch_from_proto(request.batch))

    def fast() -> PreparedLogs:
        view = read_log_view(data)
        assert view is not None
        prepared = prepare_logs(validator, view)
        assert prepared is not None
        return prepared

    paths = (("general path (message, str lines)", general),
             ("fast path (view, bytes lines)", fast))
    for _, path in paths:  # warm-up: allocator, caches of label names and entry heads
        encode_protobuf_columns(path().streams)
    best: dict[str, list[float]] = {name: [float("inf")] * 2 for name, _ in paths}
    for _ in range(args.repeat):  # rounds alternate, so drifting load hits both alike
        for name, path in paths:
            prepared = path()
            got = best[name]
            got[0] = min(got[0], _best(path, 1))
            got[1] = min(got[1], _best(
                lambda p=prepared: encode_protobuf_columns(p.streams), 1))  # type: ignore[misc]
    rows = [(name, *best[name]) for name, _ in paths]
    mib = len(lines) * args.line_bytes / (1 << 20)
    print(f"\none batch of {len(lines):,} lines of {args.line_bytes} bytes ({mib:.2f} MiB); "
          f"best of {args.repeat} rounds, CPU time on one core\n")
    print(f"| {'path':<34} | {'parse+validate ms':>17} | {'+ Loki body ms':>14} | "
          f"{'MiB/s per core':>14} |")
    print(f"|{'-' * 36}|{'-' * 19}|{'-' * 16}|{'-' * 16}|")
    for name, ingest, body in rows:
        print(f"| {name:<34} | {ingest * 1e3:>17.2f} | {(ingest + body) * 1e3:>14.2f} | "
              f"{mib / (ingest + body):>14.1f} |")
    (_, gi, gb), (_, fi, fb) = rows
    print(f"\nratio fast / general (parse + validate + Loki body CPU): "
          f"{(fi + fb) / (gi + gb):.2f}")


if __name__ == "__main__":
    main()
