"""openai-chat / openai-completions against the fake OpenAI server with known token timing.

The server (a subprocess) sends the first token `ttft_ms` after a request arrives and each next
one `itl_ms` later on an absolute schedule; the measured TTFT, ITL and TPOT must come out at
those delays. Medians are compared (the CI machine is shared; a tail can be late), with a
tolerance of a few ms above and 1 ms below (timers fire on a 1 ms grid).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from aifb.client.engine.load import run_load
from aifb.client.engine.results import LoadResult, RunState
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.workloads.registry import build_workload
from aifb.mesh.errors import InvalidArgument
from tests.integration.flow import S, create, state_name, wait_for_state

if TYPE_CHECKING:
    from tests.fixtures.openai_server import FakeLlmServer
    from tests.fixtures.qdrant_fake import QdrantFake
    from tests.fixtures.server import RunningServer

pytestmark = pytest.mark.integration
StartLlm = Callable[..., "FakeLlmServer"]
MS = 1000  # histograms are in µs


def _run(kind: str, url: str, params: dict[str, Any], *, users: int = 4,
         requests: int = 16) -> LoadResult:
    wl = build_workload(kind, url, params)
    spec = LoadSpec(mode=Mode.CLOSED, users=users, duration_s=30.0, max_requests=requests)
    res = asyncio.run(run_load(spec, wl))
    assert res.state is RunState.SUCCEEDED, res.reason
    return res


@pytest.mark.parametrize("kind", ["openai-chat", "openai-completions"])
def test_ttft_itl_tpot_and_latency_equal_the_servers_configured_delays(
        fake_llm: StartLlm, kind: str) -> None:
    srv = fake_llm(ttft_ms=80, itl_ms=20, tokens=100)
    res = _run(kind, srv.base_url, {"output_tokens": 10, "input_tokens": 16, "num_prompts": 8})
    h = res.histograms
    assert res.counters["ok"] == 16 and res.counters["errors"] == 0
    assert h["ttft"].count == 16 and h["tpot"].count == 16
    assert h["itl"].count == 16 * 9  # ten token chunks: nine gaps each
    assert 79 * MS <= h["ttft"].percentile_us(50) <= 90 * MS
    assert 19 * MS <= h["itl"].percentile_us(50) <= 23 * MS
    assert 19 * MS <= h["tpot"].percentile_us(50) <= 23 * MS
    assert 259 * MS <= h["latency"].percentile_us(50) <= 280 * MS  # 80 + 9 * 20
    assert res.values["output_tokens"] == 160 and res.values["usage_reported"] == 16


def test_token_counts_are_exact_from_usage_and_from_counted_chunks(fake_llm: StartLlm) -> None:
    srv = fake_llm(ttft_ms=5, itl_ms=2, tokens=1000)
    params = {"input_tokens": 40, "input_dist": "uniform", "input_min": 10, "input_max": 40,
              "output_tokens": 12, "output_dist": "uniform", "output_min": 3, "output_max": 12,
              "num_prompts": 12, "seed": 7}
    with_usage = _run("openai-chat", srv.base_url, params, requests=12)
    stats = srv.stats()
    assert with_usage.values["usage_reported"] == 12
    assert with_usage.values["input_tokens"] == stats["prompt_tokens"]
    assert with_usage.values["output_tokens"] == stats["completion_tokens"]
    counted = _run("openai-chat", srv.base_url, {**params, "include_usage": False}, requests=12)
    assert counted.values["usage_reported"] == 0
    # without usage: the prompt estimate (words) and the token chunks, which here are exact too
    assert counted.values["input_tokens"] == with_usage.values["input_tokens"]
    assert counted.values["output_tokens"] == with_usage.values["output_tokens"]
    assert 3 * 12 <= counted.values["output_tokens"] < 12 * 12  # drawn lengths, not all equal


def test_several_tokens_per_chunk_count_from_usage_and_keep_tpot_per_token(
        fake_llm: StartLlm) -> None:
    srv = fake_llm(ttft_ms=20, itl_ms=10, tokens=1000, chunk_tokens=4)
    res = _run("openai-completions", srv.base_url, {"output_tokens": 12}, requests=8)
    assert res.values["output_tokens"] == 8 * 12  # from usage, not the 3 chunks per reply
    assert res.histograms["itl"].count == 8 * 2
    assert 39 * MS <= res.histograms["itl"].percentile_us(50) <= 44 * MS  # 4 tokens per chunk
    # TPOT = (end - first token) / 11: the first chunk already holds tokens 0..3 (due at 50 ms),
    # the last one token 11 (due at 130 ms): 80 ms / 11 tokens
    assert 6.8 * MS <= res.histograms["tpot"].percentile_us(50) <= 8.2 * MS  # 7.27 ms


def test_without_streaming_tokens_are_counted_and_there_is_no_ttft(fake_llm: StartLlm) -> None:
    srv = fake_llm(ttft_ms=20, itl_ms=5, tokens=100)
    res = _run("openai-chat", srv.base_url, {"stream": False, "output_tokens": 9}, requests=8)
    assert res.values["output_tokens"] == 72 and res.values["good_requests"] == 8
    assert res.histograms["ttft"].count == res.histograms["itl"].count == 0
    assert 59 * MS <= res.histograms["latency"].percentile_us(50) <= 75 * MS  # 20 + 8 * 5


def test_goodput_counts_only_requests_within_the_ttft_slo(fake_llm: StartLlm) -> None:
    # 8 users share 4 connections: the first 4 requests start at once (TTFT ~ 50 ms); every later
    # one waits a whole reply (~90 ms) for a connection first (TTFT ~ 140 ms > the 100 ms SLO).
    srv = fake_llm(ttft_ms=50, itl_ms=10, tokens=5)
    res = _run("openai-chat", srv.base_url, {"connections": 4, "slo_ttft_ms": 100,
                                              "output_tokens": 5},
               users=8, requests=16)
    assert res.counters["ok"] == 16
    assert res.values["good_requests"] == 4
    assert res.value_rates()["good_requests"] == pytest.approx(4 / res.measured_s, rel=1e-3)


def test_goodput_is_zero_when_tpot_misses_its_slo_and_full_when_met(fake_llm: StartLlm) -> None:
    srv = fake_llm(ttft_ms=10, itl_ms=15, tokens=6)
    missed = _run("openai-chat", srv.base_url, {"slo_tpot_ms": 10, "output_tokens": 6},
                  requests=8)
    met = _run("openai-chat", srv.base_url, {"slo_tpot_ms": 40, "slo_ttft_ms": 200,
                                             "output_tokens": 6}, requests=8)
    assert missed.values["good_requests"] == 0 and missed.counters["ok"] == 8
    assert met.values["good_requests"] == 8


def test_http_500s_are_errors_of_one_stable_kind_counted_exactly(fake_llm: StartLlm) -> None:
    srv = fake_llm(ttft_ms=1, itl_ms=1, tokens=3, error_rate=0.4, seed=3)
    res = _run("openai-chat", srv.base_url, {"output_tokens": 3}, requests=40)
    injected = srv.stats()["errors_injected"]
    assert 0 < injected < 40
    assert res.errors_by_kind == {"status_500": injected}
    assert res.counters["ok"] == 40 - injected


def test_an_unknown_model_is_a_404_error_kind(fake_llm: StartLlm) -> None:
    srv = fake_llm(ttft_ms=1, itl_ms=1, tokens=3)
    res = _run("openai-completions", srv.base_url, {"model": "no-such-model"}, requests=4)
    assert res.errors_by_kind == {"status_404": 4}


def test_jsonl_messages_and_sharegpt_datasets_send_their_prompts(
        fake_llm: StartLlm, tmp_path: Path) -> None:
    srv = fake_llm(ttft_ms=1, itl_ms=1, tokens=50)
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "one two three"}]})
                     + "\n" + json.dumps({"prompt": "four five", "output_tokens": 2}) + "\n")
    res = _run("openai-chat", srv.base_url, {"dataset": str(jsonl), "output_tokens": 5},
               requests=4)
    assert res.values["input_tokens"] == 2 * 5 + 2 * 2  # 5 words, 2 words, cycled twice
    assert res.values["output_tokens"] == 2 * 5 + 2 * 2  # the entry's own length wins
    share = tmp_path / "sharegpt.json"
    share.write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "a b c d"}, {"from": "gpt", "value": "x y z"}]}]))
    res = _run("openai-completions", srv.base_url, {"dataset": str(share)}, requests=3)
    assert res.values["input_tokens"] == 3 * 4 and res.values["output_tokens"] == 3 * 3


def test_a_server_that_lists_no_model_fails_the_run_at_prepare(qdrant_fake: QdrantFake) -> None:
    wl = build_workload("openai-chat", qdrant_fake.base_url, {})  # any server without /v1/models
    res = asyncio.run(run_load(LoadSpec(duration_s=1.0), wl))
    assert res.state is RunState.FAILED
    assert "GET /v1/models answered 404" in res.reason and "set the model" in res.reason


def test_bad_parameters_and_an_unreachable_target_fail_clearly() -> None:
    with pytest.raises(InvalidArgument, match="output_dist"):
        build_workload("openai-chat", "http://127.0.0.1:1", {"output_dist": "zipf"})
    with pytest.raises(InvalidArgument, match="api_key_env"):
        build_workload("openai-chat", "http://127.0.0.1:1", {"api_key_env": "A B"})
    with pytest.raises(InvalidArgument, match="target must be http://"):
        build_workload("openai-chat", "ftp://example", {})
    wl = build_workload("openai-chat", "http://127.0.0.1:1", {"model": "m"})
    res = asyncio.run(run_load(LoadSpec(duration_s=1.0), wl))
    assert res.state is RunState.FAILED and "prepare failed" in res.reason


def test_the_fake_llm_recipe_deploys_and_serves_an_openai_chat_benchmark(
        local_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # the job finds `aifb-fake-llm` on PATH, as it would with the venv activated
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    stub = local_server.stub()
    svc = create(stub, "fake-llm", port="0", ttft_ms="30", itl_ms="5", tokens="16")
    try:
        ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY})
        assert state_name(ready.state) == "READY", ready.state_message
        res = _run("openai-chat", f"http://127.0.0.1:{ready.endpoint.port}",
                   {"output_tokens": 16}, users=2, requests=8)  # model found at /v1/models
        assert res.values["output_tokens"] == 8 * 16
        assert 29 * MS <= res.histograms["ttft"].percentile_us(50) <= 45 * MS
    finally:
        stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
        assert state_name(wait_for_state(stub, svc.name, set()).state) == "STOPPED"
