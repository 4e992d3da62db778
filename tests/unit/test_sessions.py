"""Multi-turn sessions (issue 15, part 5): conversations that grow turn by turn, think time
outside latency, seeded plans, a failed turn ending its session, per-turn figures in the result
and the report, and the refusals (completions, several engines, bad laws)."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns

import pytest

from aifb.client.engine.load import LoadRun, run_load
from aifb.client.engine.results import LoadResult, RunState
from aifb.client.engine.sessions import SessionWorkload, turn_key
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.engine.workload import Outcome
from aifb.client.report.document import build_document
from aifb.client.report.pages import summary_rows, to_html, to_markdown
from aifb.client.runs.options import LoadOptions
from aifb.client.runs.record import BenchmarkRecord
from aifb.client.scaleout.processes import ProcessLoad
from aifb.client.workloads.openai import OpenAIParams
from aifb.client.workloads.registry import build_workload, check_one_engine
from aifb.client.workloads.sessions import ChatSession, Conversation, Conversations, reply_text
from aifb.client.workloads.spread import Targets, spread
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit
MS = 1_000_000


# -- conversation state
class EchoSender:
    """A TurnSender that answers turn k with k + 1 words and keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[dict[str, str]], int, int]] = []

    def chat_request(self, messages: list[dict[str, str]], max_tokens: int) -> bytes:
        return json.dumps({"messages": messages, "max_tokens": max_tokens}).encode()

    async def send(self, raw: bytes, input_estimate: int,
                   reply: list[str] | None = None) -> Outcome:
        body = json.loads(raw)
        self.sent.append((body["messages"], body["max_tokens"], input_estimate))
        k = len(self.sent)
        if reply is not None:
            reply.append(" ".join(["reply"] * k))
        return Outcome(ok=True, end_ns=perf_counter_ns())


def test_each_turn_carries_the_whole_conversation_with_the_replies_received() -> None:
    plan = Conversation(({"role": "system", "content": "be brief"},),
                        ("one two", "three four five", "six"), (7, 8, 9))
    sender = EchoSender()
    session = ChatSession(sender, plan, [100, 200])

    async def scenario() -> None:
        for turn in range(3):
            assert (await session.request(turn)).ok
        with pytest.raises(ValueError, match="out of order"):
            await session.request(3)

    asyncio.run(scenario())
    (m1, t1, e1), (m2, t2, e2), (m3, t3, e3) = sender.sent
    assert m1 == [{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "one two"}]
    assert m2 == [*m1, {"role": "assistant", "content": "reply"},
                  {"role": "user", "content": "three four five"}]
    assert m3 == [*m2, {"role": "assistant", "content": "reply reply"},
                  {"role": "user", "content": "six"}]
    assert (t1, t2, t3) == (7, 8, 9)
    assert (e1, e2, e3) == (4, 4 + 1 + 3, 8 + 2 + 1)  # words so far, replies included
    assert session.turns == 3
    assert (session.think_ns(1), session.think_ns(2)) == (100 * MS, 200 * MS)


def test_reply_text_is_the_streamed_deltas_or_the_whole_message() -> None:
    events = [(b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', 1),
              (b'{"choices":[{"delta":{"content":" alpha"}}]}', 2),
              (b'{"choices":[{"delta":{"reasoning_content":"hmm"}}]}', 3),
              (b'{"choices":[{"delta":{"content":" beta"}}]}', 4),
              (b'{"choices":[],"usage":{"prompt_tokens":3}}', 5), (b"[DONE]", 6)]
    assert reply_text(events, None) == " alpha beta"
    whole = b'{"choices":[{"message":{"role":"assistant","content":"all of it"}}]}'
    assert reply_text(None, whole) == "all of it"


# -- plans and seeds
def _params(**kw: object) -> OpenAIParams:
    return OpenAIParams.model_validate(kw)


def test_synthetic_conversations_and_think_times_repeat_with_the_seed() -> None:
    kw = {"turns": 4, "turns_dist": "uniform", "turns_min": 2, "turns_max": 6,
          "input_tokens": 12, "output_tokens": 20, "output_dist": "uniform", "output_min": 5,
          "output_max": 30, "think_time_ms": 300, "think_dist": "lognormal",
          "think_spread": 0.5, "num_prompts": 50}
    a, b = Conversations(_params(seed=3, **kw)), Conversations(_params(seed=3, **kw))
    other = Conversations(_params(seed=4, **kw))
    convs = [a.conversation(i) for i in range(50)]
    assert convs == [b.conversation(i) for i in range(50)]
    assert convs != [other.conversation(i) for i in range(50)]
    assert a.conversation(53) == convs[3]  # sessions cycle through num_prompts conversations
    counts = {len(c.turns) for c in convs}
    assert min(counts) >= 2 and max(counts) <= 6 and len(counts) > 2
    assert all(len(t.split()) == 12 for c in convs for t in c.turns)
    assert all(5 <= m <= 30 for c in convs for m in c.max_tokens)
    assert len({c.turns[0] for c in convs}) == 50  # distinct openings: no shared prefix
    thinks = [a.think_ms(n, 5) for n in range(20)]
    assert thinks == [b.think_ms(n, 5) for n in range(20)]
    assert thinks != [other.think_ms(n, 5) for n in range(20)]
    assert len({tuple(t) for t in thinks}) == 20 and all(x >= 1 for t in thinks for x in t)
    assert Conversations(_params(turns=3)).think_ms(0, 2) == [0, 0]  # no think time set


def test_sharegpt_sessions_send_the_human_turns_in_order_at_most_turns(tmp_path: Path) -> None:
    path = tmp_path / "chats.json"
    path.write_text(json.dumps([
        {"conversations": [{"from": "system", "value": "you help"},
                           {"from": "human", "value": "first question"},
                           {"from": "gpt", "value": "a b c d"},
                           {"from": "human", "value": "second"},
                           {"from": "gpt", "value": "e f"},
                           {"from": "human", "value": "third one here"}]},
        {"conversations": [{"from": "gpt", "value": "no human here"}]},
        {"conversations": [{"from": "human", "value": "alone"}]}]))
    convs = Conversations(_params(turns=2, dataset=str(path), output_tokens=9))
    assert convs.count == 2  # the conversation without a human turn is skipped
    first = convs.conversation(0)
    assert first.preamble == ({"role": "system", "content": "you help"},)
    assert first.turns == ("first question", "second")
    assert first.max_tokens == (4, 2)  # the dataset's reply lengths
    assert convs.conversation(1) == Conversation((), ("alone",), (9,))  # no reply: the law
    every = Conversations(_params(turns=10, dataset=str(path), output_tokens=9,
                                  dataset_output_tokens=False)).conversation(0)
    assert every.turns == ("first question", "second", "third one here")
    assert every.max_tokens == (9, 9, 9)


# -- the engine
@dataclass
class FakeSession:
    owner: FakeSessionWorkload
    number: int
    turns: int
    think_ms: int

    def think_ns(self, turn: int) -> int:
        return self.think_ms * MS

    async def request(self, turn: int) -> Outcome:
        now = perf_counter_ns()
        self.owner.log.append((self.number, turn, now))
        await asyncio.sleep(0)
        fail = (self.number, turn) in self.owner.fail
        values = {"input_tokens": 10.0 * (turn + 1), "output_tokens": 2.0}
        return Outcome(ok=not fail, error="status_500" if fail else "", end_ns=perf_counter_ns(),
                       first_chunk_ns=perf_counter_ns(), values=None if fail else values)


@dataclass
class FakeSessionWorkload:
    """Sessions of `turns` turns; turn (session, turn) in `fail` fails."""

    turns: int = 3
    think_ms: int = 0
    fail: set[tuple[int, int]] = field(default_factory=set)
    name: str = "fake-chat"
    multi_turn: bool = True
    log: list[tuple[int, int, int]] = field(default_factory=list)

    async def prepare(self) -> None:
        pass

    async def request(self, seq: int) -> Outcome:
        raise AssertionError("a multi-turn run sends turns, not requests")

    def session(self, number: int) -> FakeSession:
        return FakeSession(self, number, self.turns, self.think_ms)

    def extra_metrics(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        pass


def _run(wl: FakeSessionWorkload, spec: LoadSpec) -> LoadResult:
    res = asyncio.run(run_load(spec, wl))
    assert res.state is RunState.SUCCEEDED, res.reason
    return res


def test_the_fake_session_workload_is_a_session_workload() -> None:
    assert isinstance(FakeSessionWorkload(), SessionWorkload)


@pytest.mark.parametrize("mode", [Mode.CLOSED, Mode.OPEN])
def test_think_time_is_never_latency_and_turns_wait_for_it(mode: Mode) -> None:
    wl = FakeSessionWorkload(turns=3, think_ms=300)
    spec = (LoadSpec(mode=Mode.CLOSED, users=2, duration_s=1.5) if mode is Mode.CLOSED else
            LoadSpec(mode=Mode.OPEN, rate=2.0, duration_s=1.5))
    res = _run(wl, spec)
    by_session: dict[int, list[tuple[int, int]]] = {}
    for number, turn, at in wl.log:
        by_session.setdefault(number, []).append((turn, at))
    assert len(by_session) >= 2 and any(len(v) == 3 for v in by_session.values())
    for turns in by_session.values():
        assert [t for t, _ in turns] == list(range(len(turns)))  # in order, none skipped
        for (_, a), (_, b) in itertools.pairwise(turns):
            assert b - a >= 300 * MS  # each turn waited its think time
    # every request answers at once: a latency anywhere near the think time would include it
    assert res.histograms["latency"].max_us < 250_000
    assert res.histograms["turn2_latency"].max_us < 250_000
    if mode is Mode.OPEN:
        assert res.histograms["lag"].count == res.counters["sent"]
        assert res.histograms["lag"].max_us < 250_000
    assert res.counters["ok"] == len(wl.log)


def test_a_failed_turn_ends_its_session_and_the_next_one_starts() -> None:
    wl = FakeSessionWorkload(turns=3, fail={(0, 1)})
    res = _run(wl, LoadSpec(mode=Mode.CLOSED, users=1, duration_s=5.0, max_requests=8))
    sessions = [(n, t) for n, t, _ in wl.log]
    assert sessions == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    c = res.counters
    assert (c["errors"], c["ok"]) == (1, 7)
    assert (c["sessions_started"], c["sessions_completed"], c["sessions_failed"],
            c["sessions_cut"]) == (3, 2, 1, 0)
    assert res.errors_by_kind == {"status_500": 1}
    assert res.values[turn_key(2, "errors")] == 1 and res.values[turn_key(2, "requests")] == 2
    assert res.values[turn_key(3, "requests")] == 2


def test_max_requests_counts_turns_and_cuts_the_session_it_ends_in() -> None:
    wl = FakeSessionWorkload(turns=3)
    res = _run(wl, LoadSpec(mode=Mode.CLOSED, users=1, duration_s=5.0, max_requests=5))
    assert [(n, t) for n, t, _ in wl.log] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    c = res.counters
    assert (c["sent"], c["sessions_completed"], c["sessions_cut"]) == (5, 1, 1)


def test_a_cancel_ends_sessions_waiting_out_a_think_time_at_once() -> None:
    wl = FakeSessionWorkload(turns=5, think_ms=60_000)

    async def scenario() -> tuple[LoadResult, float]:
        run = LoadRun(LoadSpec(mode=Mode.CLOSED, users=3, duration_s=300.0, drain_s=60.0), wl)
        run.start()
        while len(wl.log) < 3:  # every user sent its first turn and now thinks for a minute
            await asyncio.sleep(0.01)
        t0 = perf_counter_ns()
        run.cancel("enough")
        res = await run.wait()
        return res, (perf_counter_ns() - t0) / 1e9

    res, took_s = asyncio.run(scenario())
    assert res.state is RunState.CANCELLED
    assert took_s < 30  # not the think time, nor the 60 s the drain would have waited
    c = res.counters
    assert (c["ok"], c["sessions_started"], c["sessions_cut"]) == (3, 3, 3)


def _record(res: LoadResult) -> BenchmarkRecord:
    return BenchmarkRecord(id="s1", owner="u", workload="openai-chat", url="http://h/",
                           state=RunState.SUCCEEDED, load=LoadOptions(concurrency=2),
                           create_time=1.0)


def test_per_turn_figures_reach_the_result_the_json_markdown_and_html_reports() -> None:
    wl = FakeSessionWorkload(turns=3, fail={(1, 2)})
    res = _run(wl, LoadSpec(mode=Mode.CLOSED, users=1, duration_s=5.0, max_requests=9))
    back = LoadResult.from_bytes(res.to_bytes())  # as result.json keeps it
    doc = build_document(_record(res), {"result": json.loads(back.to_bytes())}, {})
    s = doc["sessions"]
    assert (s["started"], s["completed"], s["failed"], s["cut"]) == (3, 2, 1, 0)
    assert [t["turn"] for t in s["turns"]] == [1, 2, 3]
    assert [t["requests"] for t in s["turns"]] == [3, 3, 2]
    assert [t["errors"] for t in s["turns"]] == [0, 0, 1]
    assert [t["input_tokens_mean"] for t in s["turns"]] == [10.0, 20.0, 30.0]
    assert all(t["ttft_p50_s"] is not None and t["ttft_p99_s"] >= t["ttft_p50_s"]
               for t in s["turns"])
    assert dict(summary_rows(doc))["sessions"] == ("2 completed, 1 failed, 0 cut by the end of "
                                                   "the run, of 3 started")
    md = to_markdown(doc, [])
    assert "## Turns" in md and "| 3 | 2 | 1 | 30.0 | 2.0 |" in md
    assert "<h2>Turns</h2>" in to_html(doc, {})
    plain = LoadResult(state=RunState.SUCCEEDED, workload="openai-chat")
    assert build_document(_record(plain), {"result": json.loads(plain.to_bytes())},
                          {})["sessions"] is None


# -- replicated targets: a session stays on its replica
def test_a_session_stays_on_the_replica_it_started_on() -> None:
    made: dict[str, FakeSessionWorkload] = {}

    def build(url: str) -> FakeSessionWorkload:
        made[url] = FakeSessionWorkload(turns=3)
        return made[url]

    async def scenario() -> None:
        w = spread(build, Targets(("http://a/", "http://b/")))
        assert isinstance(w, SessionWorkload) and w.multi_turn
        await w.prepare()
        for number in range(4):
            session = w.session(number)
            for turn in range(session.turns):
                assert (await session.request(turn)).ok
        extra = w.extra_metrics()
        assert extra["replica_requests:http://a/"] == extra["replica_requests:http://b/"] == 6
        await w.close()

    asyncio.run(scenario())
    for wl in made.values():  # each replica saw whole sessions, every turn of them
        turns: dict[int, list[int]] = {}
        for number, turn, _ in wl.log:
            turns.setdefault(number, []).append(turn)
        assert len(turns) == 2 and all(t == [0, 1, 2] for t in turns.values())


# -- refusals
def test_sessions_are_refused_on_several_engines_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_one_engine("openai-chat", {"turns": 3}, 2, field="load.workers")
    assert err.value.field == "load.workers" and "one engine" in err.value.message
    with pytest.raises(InvalidArgument):
        check_one_engine("openai-chat", {"turns_dist": "uniform", "turns_max": 4}, 0,
                         field="load.partitions")
    check_one_engine("openai-chat", {"turns": 3}, 1, field="load.workers")
    check_one_engine("openai-chat", {}, 8, field="load.workers")  # single requests split fine
    with pytest.raises(InvalidArgument) as err:
        ProcessLoad(LoadSpec(mode=Mode.CLOSED, users=2), "openai-chat", "http://127.0.0.1:1",
                    {"turns": 2}, workers=2)
    assert err.value.field == "workers"


@pytest.mark.parametrize(("kind", "params", "field"), [
    ("openai-completions", {"turns": 2}, "params.turns"),
    ("openai-chat", {"turns": 3, "turns_min": 5, "turns_max": 4}, "params.turns_min"),
    ("openai-chat", {"turns": 2, "think_time_ms": 10, "think_dist": "uniform"},
     "params.think_max_ms"),
    ("openai-chat", {"turns": 101}, "params.turns"),
    ("openai-chat", {"turns": 2, "think_time_ms": -1}, "params.think_time_ms"),
    ("openai-chat", {"think_time_ms": 500}, "params.think_time_ms"),  # no sessions to pause
])
def test_bad_session_parameters_name_their_field(kind: str, params: dict[str, object],
                                                 field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        build_workload(kind, "http://127.0.0.1:1", params)
    assert err.value.field == field


def test_cancelling_a_share_of_requests_is_refused_for_sessions_naming_the_field() -> None:
    """Cancellation picks single requests by number; a session's turns are not requests the
    engine sends one by one, so asking for both is an error, not a silent no-op."""
    from aifb.mesh.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as err:
        LoadRun(LoadSpec(mode=Mode.CLOSED, users=1, duration_s=5.0, cancel_fraction=0.5,
                         cancel_after_s=0.1), FakeSessionWorkload(turns=2))
    assert err.value.field == "cancel_fraction" and "turns" in str(err.value)
