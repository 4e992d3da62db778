"""Multi-turn `openai-chat` sessions against the fake OpenAI server (a subprocess).

The fake server counts a request's prompt tokens as the words of all its messages and reports
them in `usage`, and its replies are `n` one-word tokens; so turn k's prompt tokens are exact:
the user turns so far plus the replies received so far. A session that sent its replies back
wrongly (or not at all) would show other numbers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from aifb.client.engine.load import run_load
from aifb.client.engine.results import LoadResult, RunState
from aifb.client.engine.sessions import turn_key
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.workloads.registry import build_workload
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import client_pb2 as C
from tests.integration.bench_harness import bench_mesh, create, create_error, follow, seconds

if TYPE_CHECKING:
    from tests.fixtures.openai_server import FakeLlmServer

pytestmark = pytest.mark.integration
StartLlm = Callable[..., "FakeLlmServer"]


def _run(url: str, params: dict[str, Any], spec: LoadSpec) -> LoadResult:
    res = asyncio.run(run_load(spec, build_workload("openai-chat", url, params)))
    assert res.state is RunState.SUCCEEDED, res.reason
    return res


def _per_turn(res: LoadResult, name: str) -> list[float]:
    turns = sorted({int(k[4:].split("_")[0]) for k in res.values if k.startswith("turn")})
    return [res.values.get(turn_key(k, name), 0.0) for k in turns]


def test_closed_loop_turns_carry_the_history_so_prompt_tokens_grow_exactly(
        fake_llm: StartLlm) -> None:
    srv = fake_llm(ttft_ms=5, itl_ms=1, tokens=1000)
    params = {"turns": 4, "input_tokens": 10, "output_tokens": 6, "think_time_ms": 20,
              "seed": 1}
    res = _run(srv.base_url, params,
               LoadSpec(mode=Mode.CLOSED, users=3, duration_s=60.0, max_requests=24))
    c = res.counters
    assert (c["ok"], c["errors"]) == (24, 0)
    assert res.values["usage_reported"] == 24  # the server's counts, not estimates
    requests = _per_turn(res, "requests")
    inputs = _per_turn(res, "input_tokens")
    # turn k sends k user turns of 10 words and the k - 1 replies of 6 tokens received
    assert [i / n for i, n in zip(inputs, requests, strict=True)] == [10.0, 26.0, 42.0, 58.0]
    assert _per_turn(res, "output_tokens") == [6.0 * n for n in requests]
    assert sum(requests) == 24 and requests == sorted(requests, reverse=True)
    assert c["sessions_started"] == c["sessions_completed"] + c["sessions_cut"]
    assert c["sessions_completed"] >= 4
    stats = srv.stats()
    assert stats["prompt_tokens"] == res.values["input_tokens"] == sum(inputs)
    for k in range(1, 5):  # per-turn TTFT for every turn answered
        assert res.histograms[turn_key(k, "ttft")].count == requests[k - 1]


def test_open_loop_sessions_start_at_the_rate_and_think_outside_latency(
        fake_llm: StartLlm) -> None:
    srv = fake_llm(ttft_ms=5, itl_ms=1, tokens=1000)
    params = {"turns": 2, "input_tokens": 8, "output_tokens": 4, "think_time_ms": 400}
    res = _run(srv.base_url, params, LoadSpec(mode=Mode.OPEN, rate=4.0, duration_s=2.0))
    c = res.counters
    assert c["sessions_started"] == 8  # arrivals at 0, 0.25 .. 1.75 s
    # a session starting after 1.6 s would have its second turn after the end: cut
    assert c["sessions_completed"] + c["sessions_cut"] == 8 and c["sessions_cut"] >= 1
    assert c["sessions_completed"] >= 5
    assert _per_turn(res, "requests") == [8, c["sessions_completed"]]
    # replies take about 10 ms here: no latency comes near the 400 ms think time
    assert res.histograms["latency"].percentile_us(50) < 200_000
    assert res.histograms["lag"].count == c["sent"]


def test_a_failing_turn_ends_its_session_and_every_session_is_accounted_for(
        fake_llm: StartLlm) -> None:
    srv = fake_llm(ttft_ms=2, itl_ms=1, tokens=1000, error_rate=0.25, seed=3)
    res = _run(srv.base_url, {"turns": 4, "input_tokens": 5, "output_tokens": 3},
               LoadSpec(mode=Mode.CLOSED, users=2, duration_s=60.0, max_requests=60))
    c = res.counters
    assert c["errors"] == res.errors_by_kind["status_500"] > 0
    assert c["sessions_failed"] == c["errors"]  # each failure ended one session
    assert c["sessions_started"] == (c["sessions_completed"] + c["sessions_failed"]
                                     + c["sessions_cut"])
    answered = _per_turn(res, "requests")
    failed = _per_turn(res, "errors")
    # turn k + 1 is sent only by sessions whose turn k was answered
    for k in range(len(answered) - 1):
        assert answered[k + 1] + failed[k + 1] <= answered[k]
    assert srv.stats()["errors_injected"] == c["errors"]


def test_sharegpt_conversations_send_their_human_turns_in_order(
        fake_llm: StartLlm, tmp_path: Path) -> None:
    srv = fake_llm(ttft_ms=2, itl_ms=1, tokens=1000)
    path = tmp_path / "chats.json"
    path.write_text(json.dumps([{"conversations": [
        {"from": "system", "value": "answer in one word"},
        {"from": "human", "value": "one two three"},
        {"from": "gpt", "value": "a b"},
        {"from": "human", "value": "four five"},
        {"from": "gpt", "value": "c d e"},
        {"from": "human", "value": "six"}]}]))
    res = _run(srv.base_url, {"turns": 3, "dataset": str(path), "output_tokens": 3},
               LoadSpec(mode=Mode.CLOSED, users=1, duration_s=60.0, max_requests=3))
    # system 4 words; turn 1: +3; turn 2: +2 (the server's reply) +2; turn 3: +3 +1
    assert _per_turn(res, "input_tokens") == [7.0, 11.0, 15.0]
    assert _per_turn(res, "output_tokens") == [2.0, 3.0, 3.0]  # the dataset's, then the law
    assert res.counters["sessions_completed"] == 1


def test_the_benchmark_service_reports_sessions_per_turn_and_refuses_several_workers(
        fake_llm: StartLlm, aifb_home: Path) -> None:
    srv = fake_llm(ttft_ms=5, itl_ms=1, tokens=1000)
    params = {"turns": "3", "input_tokens": "12", "output_tokens": "4", "think_time_ms": "10"}
    with bench_mesh(aifb_home) as mesh:
        stub = mesh.bench_stub()
        err = create_error(stub, workload="openai-chat", url=srv.base_url, parameters=params,
                           load=C.LoadProfile(concurrency=2, duration=seconds(2), workers=2))
        assert isinstance(err, InvalidArgument) and err.field == "load.workers"
        assert "one engine" in err.message
        run = create(stub, workload="openai-chat", url=srv.base_url, parameters=params,
                     load=C.LoadProfile(concurrency=2, duration=seconds(20), max_requests=18))
        final, _ = follow(stub, run.name)
        assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
        doc = json.loads(stub.GetBenchmarkReport(C.GetBenchmarkReportRequest(
            name=run.name, format=C.REPORT_FORMAT_JSON), timeout=30).content)
        sessions = doc["sessions"]
        # 18 turns by two users: whole sessions, but for one each user may be in when the
        # 18th is sent
        assert sessions["started"] == sessions["completed"] + sessions["cut"]
        assert sessions["completed"] >= 4 and sessions["cut"] <= 2 and not sessions["failed"]
        turns = sessions["turns"]
        assert [t["input_tokens_mean"] for t in turns] == [12.0, 28.0, 44.0]
        assert turns[2]["requests"] == sessions["completed"]
        assert sum(t["requests"] for t in turns) == 18
        assert all(t["ttft_p50_s"] > 0 and t["output_tokens_mean"] == 4.0 for t in turns)
        md = stub.GetBenchmarkReport(C.GetBenchmarkReportRequest(
            name=run.name, format=C.REPORT_FORMAT_MARKDOWN), timeout=30).content.decode()
        assert "## Turns" in md
        assert f"| 3 | {sessions['completed']} | 0 | 44.0 | 4.0 |" in md
        assert f"| sessions | {sessions['completed']} completed, 0 failed" in md
