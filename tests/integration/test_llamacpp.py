"""A real LLM served by aifb (issue 15, parts 1 and 3): the llamacpp recipe (llama.cpp's server,
Gemma 3 270M on CPU) deployed on the local executor and on real SLURM, READY, then an
openai-chat run of 20 requests with prompts exact in tokens (the model's own tokenizer) and
exactly 32 reply tokens each, checked against the server's `usage`; each request's TTFT against
the server's own prefill time for it (its `timings`, also in the job's timings.jsonl), and the
server's /metrics against what was sent.

The model is the `llm` extra's (scripts/test.sh installs it); without it these tests skip, and
fail under AIFB_REQUIRE_LLM=1 (CI), as the Chroma tests do.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import statistics
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aifb.server.schedulers import make_scheduler
from aifb.v1 import client_pb2 as C
from tests.integration.bench_harness import bench_mesh, create, follow, seconds
from tests.integration.flow import S, state_name

pytestmark = pytest.mark.integration
REQUESTS, PROMPT, REPLY = 20, 64, 32
TRACE = 8


@pytest.fixture
def llm_extra() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("AIFB_REQUIRE_LLM") == "1":  # CI: a missing extra is a failure
            pytest.fail("llama-cpp-python is not installed but AIFB_REQUIRE_LLM=1")
        pytest.skip("the llm extra is not installed (scripts/setup.sh --extra llm; "
                    "scripts/test.sh installs it)")


def _ready(stub: object, name: str, timeout: float = 600) -> S.Service:
    seen = []
    for msg in stub.WatchService(S.WatchServiceRequest(name=name),  # type: ignore[attr-defined]
                                 timeout=timeout):
        seen.append(state_name(msg.service.state))
        if msg.service.state == S.SERVICE_STATE_READY:
            return msg.service
        if msg.service.state in (S.SERVICE_STATE_FAILED, S.SERVICE_STATE_STOPPED):
            break
    raise AssertionError(f"not READY: {seen}: {msg.service.state_message}")


@pytest.mark.parametrize("scheduler", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_llamacpp_serves_exact_lengths_and_ttft_tracks_the_servers_prefill(
        llm_extra: None, aifb_home: Path, scheduler: str, request: pytest.FixtureRequest,
        tmp_path: Path) -> None:
    kw = {}
    if scheduler == "slurm":
        request.getfixturevalue("slurm_cluster")
        kw = {"scheduler": "slurm", "make_scheduler": lambda: make_scheduler("slurm")}
    with bench_mesh(aifb_home, **kw) as mesh:  # type: ignore[arg-type]
        server = mesh.stub()
        svc = server.CreateService(S.CreateServiceRequest(
            recipe="llamacpp", parameters={"port": "0", "threads": "1"}), timeout=60).service
        ready = _ready(server, svc.name)
        base = f"http://{ready.endpoint.host}:{ready.endpoint.port}"
        bench = mesh.bench_stub()
        run = create(bench, workload="openai-chat", service=svc.name, parameters={
            "tokenizer": "gemma3-270m", "input_tokens": str(PROMPT),
            "output_tokens": str(REPLY), "exact_output_tokens": "true",
            "num_prompts": str(REQUESTS), "seed": "5"},
            load=C.LoadProfile(mode=C.LOAD_MODE_CLOSED, concurrency=1,
                               duration=seconds(600), max_requests=REQUESTS,
                               record_samples=True))
        final, _ = follow(bench, run.name, timeout=600)
        assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
        report = bench.GetBenchmarkReport(C.GetBenchmarkReportRequest(
            name=run.name, format=C.REPORT_FORMAT_JSON), timeout=60)
        doc = json.loads(report.content)
        with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        # Multi-turn sessions on the same server: each turn carries the history.
        chat = create(bench, workload="openai-chat", service=svc.name, parameters={
            "tokenizer": "gemma3-270m", "turns": "3", "input_tokens": "16",
            "output_tokens": "16", "exact_output_tokens": "true", "num_prompts": "2"},
            load=C.LoadProfile(mode=C.LOAD_MODE_CLOSED, concurrency=1,
                               duration=seconds(600), max_requests=6))
        done, _ = follow(bench, chat.name, timeout=600)
        assert done.state == C.BENCHMARK_STATE_SUCCEEDED, done.state_message
        sessions = json.loads(bench.GetBenchmarkReport(C.GetBenchmarkReportRequest(
            name=chat.name, format=C.REPORT_FORMAT_JSON), timeout=60).content)["sessions"]
        # A trace replayed on its schedule (one request every 300 ms, more than the one slot
        # serves: they queue), a quarter of them cancelled after 0.3 s, in 1 s slices.
        trace = tmp_path / "trace.jsonl"
        trace.write_text("".join(json.dumps({
            "timestamp": 300 * i, "input_length": 32, "output_length": 16,
            "hash_ids": [7] if i % 2 else []}) + "\n" for i in range(TRACE)))
        replay = create(bench, workload="openai-chat", service=svc.name, parameters={
            "tokenizer": "gemma3-270m", "exact_output_tokens": "true"},
            load=C.LoadProfile(mode=C.LOAD_MODE_TRACE, trace_file=str(trace), time_scale=1.0,
                               cancel_fraction=0.25, cancel_after=seconds(0.3),
                               time_slice=seconds(1), seed=3))
        done, _ = follow(bench, replay.name, timeout=600)
        assert done.state == C.BENCHMARK_STATE_SUCCEEDED, done.state_message
        replayed = json.loads(bench.GetBenchmarkReport(C.GetBenchmarkReportRequest(
            name=replay.name, format=C.REPORT_FORMAT_JSON), timeout=60).content)
        server.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)

    f = doc["figures"]
    values, counters = f["values"], f["counters"]
    assert counters["ok"] == REQUESTS and counters["errors"] == 0
    # Exactly 32 tokens a reply, by the server's usage and by the chunks received.
    assert values["usage_reported"] == REQUESTS
    assert values["output_tokens"] == REQUESTS * REPLY
    assert values["client_output_tokens"] == REQUESTS * REPLY
    # The prompts are exact in the model's tokens: the server counts the same plus its chat
    # template's tokens, the same on every request.
    assert values["client_input_tokens"] == REQUESTS * PROMPT
    check = f["usage_check"]
    assert check["agree"] and check["output_mismatches"] == 0 and check["prompt_offset_sd"] == 0
    assert 0 < check["prompt_offset_mean"] < 32  # <bos>, turn markers
    # Each request's TTFT includes the server's prefill for it (timed by the server) and is
    # close to it: the client's overhead is small at the median.
    samples = pq.read_table(Path(report.directory) / "samples.parquet").to_pydict()
    assert len(samples["ttft_s"]) == REQUESTS
    overheads = []
    for ttft_s, prefill_ms in zip(samples["ttft_s"], samples["server_prompt_ms"], strict=True):
        assert ttft_s * 1000 >= prefill_ms
        overheads.append(ttft_s * 1000 - prefill_ms)
    assert statistics.median(overheads) <= 50, overheads
    assert values["server_decode_runs"] == REQUESTS * (REPLY - 1)
    # The server's own /metrics counted every request and every decode run.
    scraped = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
               if line.startswith("llamacpp:")}
    assert scraped["llamacpp:requests_total"] == REQUESTS
    assert scraped["llamacpp:tokens_predicted_total"] == REQUESTS * (REPLY - 1)
    assert scraped["llamacpp:prompt_seconds_total"] > 0
    assert scraped["llamacpp:requests_processing"] == 0
    # Per turn, the server's prompt tokens grow by the user's 16 tokens and the reply's 16
    # (re-tokenized from its text, give or take one) plus the turn markers.
    assert sessions["completed"] == 2 and sessions["failed"] == 0
    inputs = [t["input_tokens_mean"] for t in sessions["turns"]]
    outputs = [t["output_tokens_mean"] for t in sessions["turns"]]
    assert [t["turn"] for t in sessions["turns"]] == [1, 2, 3] and outputs == [16, 16, 16]
    assert all(30 <= b - a <= 45 for a, b in itertools.pairwise(inputs)), inputs
    # The replay: every entry sent on time (the open loop's lag), each either answered with
    # exactly its 16 tokens or cancelled (counted apart, not an error), slices adding up.
    rf = replayed["figures"]
    c = rf["counters"]
    assert c["sent"] == TRACE and c["errors"] == 0
    assert c["completed"] + c["cancelled"] == TRACE and 0 < c["cancelled"] < TRACE
    assert rf["values"]["output_tokens"] == 16 * c["completed"]
    assert rf["histograms"]["lag"]["max"] < 0.2, rf["histograms"]["lag"]
    rows, total = replayed["slices"]["rows"], replayed["slices"]["total"]
    for key, counter in (("requests", "completed"), ("cancelled", "cancelled")):
        assert sum(r[key] for r in rows) == total[key] == c[counter]


def test_a_model_that_is_not_there_fails_the_start_with_the_reason(
        llm_extra: None, aifb_home: Path) -> None:
    with bench_mesh(aifb_home) as mesh:
        server = mesh.stub()
        svc = server.CreateService(S.CreateServiceRequest(
            recipe="llamacpp", parameters={"port": "0", "model": "/nonexistent/m.gguf"}),
            timeout=60).service
        for msg in server.WatchService(S.WatchServiceRequest(name=svc.name), timeout=120):
            if msg.service.state in (S.SERVICE_STATE_FAILED, S.SERVICE_STATE_STOPPED):
                break
        assert msg.service.state == S.SERVICE_STATE_FAILED
        assert "neither a GGUF file nor a packaged model" in msg.service.state_message
