"""recall@k and QPS of Chroma and pgvector on the same vectors and queries, in the same run.

As vector-database benchmarks compare engines: one seeded data set (float32, standard normal)
and one query set, inserted into each engine with the same HNSW settings (m, ef_construction,
search beam), then queried by the `vectordb` workload in closed loop with --users users for
--seconds after a 1 s warm-up; recall@k is over the measured queries, against the exact
neighbours numpy computes (the workload's own, from the same seed for both). The engines are real
servers on free loopback ports, started as the tests start them (`chroma run`; the `pgvector`
recipe's launcher), one at a time, in turns, --repeat times; each turn re-creates its
collection. Stops by itself and stops what it started.

    .venv/bin/python bench/vectordb_engines.py [--count 5000] [--dim 128] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

__all__ = ["main"]

ENGINES = ("chroma", "pgvector")


@dataclass
class Turn:
    recall: float
    qps: float
    p50_ms: float
    p99_ms: float
    insert_per_s: float


def run_turn(engine: str, url: str, args: argparse.Namespace) -> Turn:
    import uvloop

    from aifb.client.engine.load import run_load
    from aifb.client.engine.spec import LoadSpec, Mode
    from aifb.client.workloads.registry import build_workload

    params: dict[str, Any] = {
        "backend": engine, "collection": "bench-engines", "metric": args.metric,
        "dim": args.dim, "count": args.count, "query_count": args.queries, "k": args.k,
        "seed": args.seed, "batch_size": 500, "m": args.m,
        "ef_construction": args.ef_construction, "hnsw_ef": args.ef_search,
        "connections": args.users}
    wl = build_workload("vectordb", url, params)
    spec = LoadSpec(mode=Mode.CLOSED, users=args.users, duration_s=float(args.seconds),
                    warmup_s=1.0)
    res = uvloop.run(run_load(spec, wl))
    if res.reason or res.counters["errors"]:
        raise RuntimeError(f"{engine}: {res.state.name} {res.reason} {res.errors_by_kind}")
    lat = res.histograms["latency"]
    return Turn(res.values["recall_hits"] / res.values["recall_checked"], res.achieved_rate,
                lat.percentile_us(50) / 1000, lat.percentile_us(99) / 1000,
                res.extra["insert_vectors_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000, help="vectors inserted")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200, help="distinct query vectors")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--metric", default="cosine", choices=("cosine", "l2", "ip"))
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--ef-search", type=int, default=64)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (1 <= args.count <= 200_000 and 1 <= args.seconds <= 120 and 1 <= args.repeat <= 10
            and 1 <= args.users <= 64):
        ap.error("bounds: --count 1..200000, --seconds 1..120, --repeat 1..10, --users 1..64")
    from tests.fixtures.chroma import find_chroma, start_chroma
    from tests.fixtures.pgvector import pgvector_available, start_pgvector

    missing = {"chroma": find_chroma() is None, "pgvector": not pgvector_available()}
    turns: dict[str, list[Turn]] = {e: [] for e in ENGINES}
    notes: dict[str, str] = {e: "not installed (the vectordb extra)" for e in ENGINES
                             if missing[e]}
    with tempfile.TemporaryDirectory(prefix="aifb-bench-") as tmpdir:
        for _ in range(args.repeat):
            for engine in ENGINES:
                if missing[engine] or engine in notes:
                    continue
                root = Path(tmpdir) / f"{engine}-{len(turns[engine])}"
                if engine == "chroma":
                    server: Any = start_chroma(root)
                    url = server.base_url
                else:
                    server = start_pgvector(root)
                    url = server.url
                try:
                    turns[engine].append(run_turn(engine, url, args))
                except RuntimeError as exc:
                    notes[engine] = str(exc)[:160]
                finally:
                    server.stop()
    _print_table(turns, notes, args)


def _print_table(turns: dict[str, list[Turn]], notes: dict[str, str],
                 args: argparse.Namespace) -> None:
    print(f"\n{args.count} x {args.dim}-d {args.metric} vectors, {args.queries} queries, "
          f"k={args.k}; HNSW m={args.m} ef_construction={args.ef_construction} "
          f"ef_search={args.ef_search}; {args.users} users, {args.seconds}s x {args.repeat}")
    print(f"{'engine':<10}{'recall@' + str(args.k):>10}{'QPS':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'insert/s':>10}{'QPS / chroma':>14}  QPS runs")
    base = statistics.median(t.qps for t in turns["chroma"]) if turns["chroma"] else 0.0
    for engine in ENGINES:
        runs = turns[engine]
        if not runs:
            print(f"{engine:<10}{'-':>10}  {notes.get(engine, 'no result')}")
            continue
        qps = statistics.median(t.qps for t in runs)
        ratio = f"{qps / base:.2f}x" if base else ""
        print(f"{engine:<10}{statistics.median(t.recall for t in runs):>10.4f}{qps:>10.0f}"
              f"{statistics.median(t.p50_ms for t in runs):>9.2f}"
              f"{statistics.median(t.p99_ms for t in runs):>9.2f}"
              f"{statistics.median(t.insert_per_s for t in runs):>10.0f}{ratio:>14}  "
              + ", ".join(f"{t.qps:.0f}" for t in runs))
        if engine in notes:
            print(f"{'':<10}  {notes[engine]}")


if __name__ == "__main__":
    main()
