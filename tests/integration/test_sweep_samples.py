"""A sweep through the BenchmarkService against a real nginx keeps every step's per-request rows
in the run's one samples.parquet, each row tagged with its step, the step's name and target
rate, and the file's rows are exactly the requests the steps completed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import pytest

from aifb.v1 import client_pb2 as C
from tests.integration.bench_harness import bench_mesh, create, follow, seconds

if TYPE_CHECKING:
    from tests.fixtures.nginx import NginxServer

pytestmark = pytest.mark.integration


def test_a_sweeps_samples_hold_every_step_tagged_with_its_target_rate(
        nginx: NginxServer, aifb_home: Path) -> None:
    with bench_mesh(aifb_home) as mesh:
        stub = mesh.bench_stub()
        run = create(stub, workload="http", url=nginx.base_url,
                     parameters={"connections": "4"},
                     load=C.LoadProfile(mode=C.LOAD_MODE_SWEEP, concurrency=4,
                                        duration=seconds(0.5), record_samples=True))
        final, _ = follow(stub, run.name)
        assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
        report = stub.GetBenchmarkReport(C.GetBenchmarkReportRequest(
            name=run.name, format=C.REPORT_FORMAT_JSON), timeout=30)
        doc = json.loads(report.content)
        stored = json.loads((Path(report.directory) / "result.json").read_text())
    steps = doc["sweep"]["steps"]
    assert len(steps) >= 3  # synchronous, throughput, then at least one open-loop rate
    table = pq.read_table(Path(report.directory) / "samples.parquet")
    rows = table.select(["step", "step_name", "target_rate", "phase", "ok"]).to_pylist()
    by_step: dict[int, int] = {}
    for row in rows:
        by_step[row["step"]] = by_step.get(row["step"], 0) + 1
    assert sorted(by_step) == list(range(len(steps)))  # every step has rows
    for i, step in enumerate(stored["steps"]):
        mine = [r for r in rows if r["step"] == i]
        counters = step["result"]["counters"]
        # No cap: one row per request the step completed (its window's and the rest).
        assert len(mine) == counters["completed"] + counters["excluded"], i
        assert sum(r["phase"] == "measure" for r in mine) == counters["completed"]
        assert {r["step_name"] for r in mine} == {step["name"]}
        assert {r["target_rate"] for r in mine} == {step["target_rate"]}
    assert [s["name"] for s in stored["steps"]][:2] == ["synchronous", "throughput"]
    assert all(r["ok"] for r in rows)
    assert doc["samples"]["rows"] == doc["samples"]["requests"] == table.num_rows
    assert doc["samples"]["parts"] == len(steps) and not doc["samples"]["capped"]
