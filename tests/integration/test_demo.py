"""`aifb demo`, the README's main command, end to end (local scheduler and real SLURM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

AIFB = Path(sys.executable).with_name("aifb")


@pytest.mark.parametrize("scheduler", ["local", "slurm"])
def test_demo_deploys_nginx_benchmarks_it_and_tears_down(scheduler: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    if scheduler == "slurm":
        request.getfixturevalue("slurm_cluster")
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(AIFB), "--output", "json", "demo", "--duration", "3", "--rate", "100",
         "--scheduler", scheduler],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["state"] == "SUCCEEDED"
    assert summary["counters"]["errors"] == 0
    assert summary["counters"]["completed"] >= 150  # ~2 s measured at 100/s after warm-up
    assert 95 <= summary["achieved_rate"] <= 105
    assert "is STOPPED" in proc.stderr
    # The load went through the BenchmarkService, and its reports outlive the demo's mesh.
    assert summary["benchmark"].startswith("benchmarks/")
    report = Path(summary["report"])
    assert report.is_relative_to(tmp_path / ".aifb" / "demo-reports")
    assert "<svg" in report.read_text() and summary["benchmark"] in report.read_text()
    for name in ("report.json", "report.md", "series.parquet", "latency_cdf.svg"):
        assert (report.parent / name).stat().st_size > 0, name
    assert summary["histograms"]["latency"]["p99"] >= summary["histograms"]["latency"]["p50"]
