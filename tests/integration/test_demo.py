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


def test_demo_llm_serves_a_real_model_and_prints_the_llm_figures(tmp_path: Path) -> None:
    """`aifb demo --llm` (issue 15, part 2): the llamacpp recipe with the llm extra's model,
    exact token counts, TTFT/ITL/TPOT/goodput and the client's overhead over the server's own
    prefill; torn down after."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("AIFB_REQUIRE_LLM") == "1":
            pytest.fail("llama-cpp-python is not installed but AIFB_REQUIRE_LLM=1")
        pytest.skip("the llm extra is not installed")
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(AIFB), "--output", "json", "demo", "--llm", "--requests", "3", "--scheduler",
         "local"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["state"] == "SUCCEEDED" and summary["counters"]["ok"] == 3
    assert summary["values"]["output_tokens"] == 3 * 32  # the server's usage
    assert summary["values"]["client_input_tokens"] == 3 * 64
    assert summary["usage_check"]["agree"]
    for name in ("ttft", "itl", "tpot"):
        assert summary["histograms"][name]["p50"] > 0, name
    assert summary["values"]["good_requests"] == 3  # generous demo SLOs
    assert summary["values"]["server_timed"] == 3
    assert "llamacpp is READY" in proc.stderr and "is STOPPED" in proc.stderr
    assert (tmp_path / ".cache" / "aifb" / "models" / "gemma-3-270m-q4_k_m.gguf").is_file()


def test_demo_llm_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(tmp_path / "shadow")}
    shadow = tmp_path / "shadow" / "llama_cpp"  # an import of llama_cpp that finds nothing
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    proc = subprocess.run([str(AIFB), "demo", "--llm", "--requests", "1"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "needs the llm extra" in proc.stderr
