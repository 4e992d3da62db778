"""Trace replay: the mooncake reader and its bounds, prompts sharing prefix blocks, the replay's
schedule and plan, and the open loop sending request n at entry n's time."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import pytest

from aifb.client.engine.load import run_load
from aifb.client.engine.results import RunState
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.engine.workload import Outcome
from aifb.client.runs.options import LoadOptions, plan, workload_defaults
from aifb.client.runs.record import BenchmarkRecord
from aifb.client.service.manager import BenchmarkManager, CreateRequest
from aifb.client.service.store import RunStore
from aifb.client.workloads import trace as trace_mod
from aifb.client.workloads.trace import (
    BLOCK_TOKENS,
    BuiltOnAccess,
    TraceEntry,
    TracePrompts,
    read_trace,
    trace_offsets_ns,
)
from aifb.mesh.access import operator_name
from aifb.mesh.auth import Principal
from aifb.mesh.errors import InvalidArgument, PermissionDenied

pytestmark = pytest.mark.unit
MS = 1_000_000


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _entry(ts: float, inp: int = 10, out: int = 4, ids: list[int] | None = None
           ) -> dict[str, Any]:
    row: dict[str, Any] = {"timestamp": ts, "input_length": inp, "output_length": out}
    if ids is not None:
        row["hash_ids"] = ids
    return row


# -- the reader
def test_a_trace_reads_in_time_order_keeping_the_files_order_for_equal_times(
        tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", [_entry(300, 7), "", _entry(0, 5, ids=[4]),
                                         _entry(300, 8, 2), _entry(100.5, 6, 3)])
    entries = read_trace(path)
    assert [(e.timestamp_ms, e.input_length, e.line) for e in entries] == [
        (0.0, 5, 3), (100.5, 6, 5), (300.0, 7, 1), (300.0, 8, 4)]
    assert entries[0].hash_ids == (4,) and entries[1].hash_ids == ()
    assert entries[3].output_length == 2


@pytest.mark.parametrize(("line", "words"), [
    ("{not json", ["line 2", "not JSON"]),
    ("[1, 2]", ["line 2", "expected an object"]),
    (json.dumps({"input_length": 5, "output_length": 2}), ["line 2", "timestamp"]),
    (json.dumps(_entry(-1)), ["line 2", "timestamp"]),
    ('{"timestamp": NaN, "input_length": 5, "output_length": 2}', ["line 2", "timestamp"]),
    (json.dumps(_entry(1e12)), ["line 2", "timestamp"]),
    (json.dumps(_entry(5, inp=0)), ["line 2", "input_length"]),
    (json.dumps(_entry(5, inp=2_000_000)), ["line 2", "input_length"]),
    (json.dumps({"timestamp": 5, "input_length": 5, "output_length": True}),
     ["line 2", "output_length"]),
    (json.dumps({"timestamp": 5, "input_length": 5, "output_length": 2.5}),
     ["line 2", "output_length"]),
    (json.dumps(_entry(5, inp=600, ids=[1, 2, 3])), ["line 2", "hash_ids has 3 ids",
                                                     "2 blocks"]),
    (json.dumps(_entry(5, ids=[-1])), ["line 2", "hash_ids[0]"]),
    (json.dumps({**_entry(5), "hash_ids": ["a"]}), ["line 2", "hash_ids[0]"]),
    (json.dumps(_entry(5, ids=[2 ** 63])), ["line 2", "hash_ids[0]"]),
    (json.dumps({**_entry(5), "hash_ids": 3}), ["line 2", "hash_ids must be a list"]),
])
def test_a_bad_line_is_refused_naming_the_file_the_line_and_the_key(
        tmp_path: Path, line: str, words: list[str]) -> None:
    path = _write(tmp_path / "bad.jsonl", [_entry(0), line])
    with pytest.raises(InvalidArgument) as info:
        read_trace(path, field="load.trace_file")
    assert info.value.field == "load.trace_file"
    assert str(path) in info.value.message
    for word in words:
        assert word in info.value.message


def test_a_trace_is_bounded_in_bytes_entries_and_hash_ids_and_must_not_be_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "t.jsonl", [_entry(i, inp=1024, ids=[i, i + 1]) for i in range(5)])
    assert len(read_trace(path)) == 5
    monkeypatch.setattr(trace_mod, "MAX_TRACE_ENTRIES", 4)
    with pytest.raises(InvalidArgument, match="line 5: more than 4 entries"):
        read_trace(path)
    monkeypatch.setattr(trace_mod, "MAX_TRACE_ENTRIES", 100)
    monkeypatch.setattr(trace_mod, "MAX_HASH_IDS", 7)
    with pytest.raises(InvalidArgument, match="line 4: more than 7 hash ids"):
        read_trace(path)
    monkeypatch.setattr(trace_mod, "MAX_TRACE_BYTES", os.path.getsize(path) - 1)
    with pytest.raises(InvalidArgument, match=r"bytes, more than the \d+ a trace may have"):
        read_trace(path)
    with pytest.raises(InvalidArgument, match="no entries"):
        read_trace(_write(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(InvalidArgument, match="cannot read"):
        read_trace(tmp_path / "missing.jsonl")


# -- prompts
def _common_words(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(" "), b.split(" "), strict=False):
        if x != y:
            break
        n += 1
    return n


def test_equal_leading_hash_ids_share_the_prompt_prefix_byte_for_byte_and_nothing_else() -> None:
    blk = BLOCK_TOKENS
    entries = [TraceEntry(0, 2 * blk, 5, (1, 2)), TraceEntry(1, 3 * blk - 100, 5, (1, 2, 3)),
               TraceEntry(2, 2 * blk, 5, (1, 9)), TraceEntry(3, 2 * blk, 5, (7, 2)),
               TraceEntry(4, 2 * blk, 5, ()), TraceEntry(5, 2 * blk, 5, ())]
    prompts = TracePrompts(entries, seed=3)
    texts = [p.text or "" for p in prompts]
    assert [len(t.split(" ")) for t in texts] == [e.input_length for e in entries]
    assert [p.input_tokens for p in prompts] == [e.input_length for e in entries]
    assert [p.output_tokens for p in prompts] == [5] * 6
    assert texts[1].startswith(texts[0] + " ")  # [1, 2] is a prefix of [1, 2, 3]
    assert _common_words(texts[0], texts[2]) == blk  # only block 1 is shared
    assert _common_words(texts[0], texts[3]) < blk // 8  # block 2 alone, not at the start
    assert texts[3].split(" ")[blk:] == texts[0].split(" ")[blk:]  # ...but the same text
    assert _common_words(texts[4], texts[5]) < blk // 8  # no ids: each its own words
    again = [p.text for p in TracePrompts(entries, seed=3)]
    assert again == texts  # the same seed, the same bytes
    other = [p.text for p in TracePrompts(entries, seed=4)]
    assert all(a != b for a, b in zip(other, texts, strict=True))


def test_a_partial_last_block_is_a_prefix_of_the_whole_block_and_the_rest_is_the_entrys(
        ) -> None:
    entries = [TraceEntry(0, 100, 1, (5,)), TraceEntry(1, BLOCK_TOKENS, 1, (5,)),
               TraceEntry(2, BLOCK_TOKENS + 40, 1, (5,))]
    short, whole, longer = (p.text or "" for p in TracePrompts(entries, seed=0))
    assert whole.startswith(short + " ")
    assert longer.startswith(whole + " ") and len(longer.split(" ")) == BLOCK_TOKENS + 40


def test_prompts_come_from_the_text_function_given_so_a_tokenizer_can_plug_in() -> None:
    calls: list[int] = []

    def letters(rng: Any, length: int) -> str:
        calls.append(length)
        return "".join(rng.choice("ab") for _ in range(length))

    prompts = TracePrompts([TraceEntry(0, BLOCK_TOKENS + 3, 1, (1,))], make_text=letters)
    text = prompts[0].text or ""
    assert calls == [BLOCK_TOKENS, 3] and len(text) == BLOCK_TOKENS + 1 + 3


def test_items_built_on_access_are_built_ahead_in_order_within_a_running_loop() -> None:
    built: list[int] = []

    def build(x: int) -> int:
        built.append(x)
        return x * 10

    seq = BuiltOnAccess([1, 2, 3], build)
    assert seq[0] == 10 and built == [1]  # no loop: nothing built ahead
    assert list(seq) == [10, 20, 30] and len(seq) == 3 and seq[-1] == 30

    async def in_loop() -> list[int]:
        built.clear()
        out = [seq[0]]
        await asyncio.sleep(0)  # the loop builds item 1 meanwhile
        assert built == [1, 2]
        out.append(seq[1])  # taken ready-made
        assert built == [1, 2]
        out.append(seq[0])  # out of order: built at once
        return out

    assert asyncio.run(in_loop()) == [10, 20, 10]
    with pytest.raises(IndexError):
        seq[3]


# -- the schedule and the plan
def test_the_schedule_is_each_timestamp_divided_by_the_time_scale() -> None:
    entries = [TraceEntry(t, 1, 1) for t in (0.0, 250.0, 1000.5)]
    assert trace_offsets_ns(entries) == (0, 250 * MS, 1_000_500_000)
    assert trace_offsets_ns(entries, 2.0) == (0, 125 * MS, 500_250_000)
    with pytest.raises(InvalidArgument):
        trace_offsets_ns(entries, 0.0)


def test_a_trace_plan_is_an_open_loop_at_the_traces_times_ending_after_the_last(
        tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", [_entry(t) for t in (0, 400, 800, 2000)])
    whole = plan(LoadOptions(mode="trace", trace_file=str(path), time_scale=2.0, duration_s=0))
    assert whole.load is not None and whole.load.mode is Mode.OPEN
    assert whole.load.offsets_ns == (0, 200 * MS, 400 * MS, 1000 * MS)
    assert whole.load.total_s == pytest.approx(1.001)
    assert whole.load.mean_rate(0.0, 0.5) == pytest.approx(6.0)  # 3 due in the first 0.5 s
    cut = plan(LoadOptions(mode="trace", trace_file=str(path), duration_s=0.5))
    assert cut.load is not None and cut.load.offsets_ns == (0, 400 * MS)
    assert workload_defaults(LoadOptions(mode="trace", trace_file=str(path), seed=3)) == {
        "trace": str(path)}  # the seed stays the load's: an experiment's trials keep prompts
    assert workload_defaults(LoadOptions(concurrency=2, seed=3)) == {}


@pytest.mark.parametrize(("options", "field"), [
    (dict(mode="trace", duration_s=0), "load.trace_file"),
    (dict(mode="trace", trace_file="TRACE", engine="spark"), "load.engine"),
    (dict(mode="trace", trace_file="TRACE", workers=2), "load.workers"),
    (dict(mode="trace", trace_file="TRACE", time_scale=0.0), "load.time_scale"),
    (dict(mode="trace", trace_file="TRACE", time_scale=1e6), "load.time_scale"),
    (dict(mode="trace", trace_file="TRACE", duration_s=0.0001), "load.duration"),
    (dict(mode="trace", trace_file="MISSING"), "load.trace_file"),
    (dict(rate=5, trace_file="TRACE"), "load.trace_file"),
    (dict(rate=5, time_scale=2.0), "load.time_scale"),
])
def test_bad_trace_options_name_their_field(tmp_path: Path, options: dict[str, Any],
                                            field: str) -> None:
    files = {"TRACE": str(_write(tmp_path / "t.jsonl", [_entry(5), _entry(10)])),
             "MISSING": str(tmp_path / "missing.jsonl")}
    opts = {k: files.get(v, v) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(InvalidArgument) as info:
        plan(LoadOptions(**opts))  # type: ignore[arg-type]
    assert info.value.field == field, info.value.message


def test_the_service_gives_a_replay_its_trace_unless_given_and_refuses_another_file(
        tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", [_entry(0), _entry(50)])
    manager = BenchmarkManager(RunStore(tmp_path / "runs"), None)
    me = Principal(user=operator_name())  # the account the service runs as: it may name files
    load = LoadOptions(mode="trace", trace_file=str(path), duration_s=0, seed=7)

    def validate(workload: str, **params: str) -> BenchmarkRecord:
        return asyncio.run(manager.create(me, CreateRequest(
            workload=workload, url="http://127.0.0.1:9/", parameters=params, load=load,
            validate_only=True)))

    assert validate("openai-chat").parameters == {"trace": str(path)}
    assert validate("openai-chat", trace=str(path)).parameters == {"trace": str(path)}
    assert validate("http").parameters == {}  # no such parameter: arrival times only
    with pytest.raises(InvalidArgument) as info:
        validate("openai-chat", trace=str(tmp_path / "other.jsonl"))
    assert info.value.field == "parameters.trace"
    with pytest.raises(InvalidArgument) as info:
        validate("openai-chat", dataset=str(path))
    assert info.value.field == "params.trace"
    manager.store.close()


def test_only_the_services_own_account_may_name_files_on_its_host(tmp_path: Path) -> None:
    """Files a request names (dataset, tokenizer, trace) are read with the service's account:
    another user could otherwise have it read the operator's files."""
    path = _write(tmp_path / "t.jsonl", [_entry(0), _entry(50)])
    manager = BenchmarkManager(RunStore(tmp_path / "runs"), None)
    mallory, operator = Principal(user="mallory"), Principal(user=operator_name())

    def validate(who: Principal, load: LoadOptions | None = None, **params: str) -> object:
        return asyncio.run(manager.create(who, CreateRequest(
            workload="openai-chat", url="http://127.0.0.1:9/", parameters=params,
            load=load or LoadOptions(concurrency=1), validate_only=True)))

    for params, field in (({"dataset": "/etc/passwd"}, "parameters.dataset"),
                          ({"tokenizer": "/root/tokenizer.json"}, "parameters.tokenizer"),
                          ({"trace": str(path)}, "parameters.trace")):
        with pytest.raises(PermissionDenied) as info:
            validate(mallory, **params)
        assert field in info.value.message and operator_name() in info.value.message
    with pytest.raises(PermissionDenied, match=r"load\.trace_file"):
        validate(mallory, LoadOptions(mode="trace", trace_file=str(path), duration_s=0))
    validate(mallory, tokenizer="gemma3-270m")  # a packaged model's name is not a file
    validate(operator, trace=str(path))
    manager.store.close()


# -- the engine
class _Recording:
    """Request 0 answers at once, every other after `delay_s`; records each request's number
    and when it started."""

    name = "recording"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[tuple[int, int]] = []

    async def prepare(self) -> None:
        pass

    async def request(self, seq: int) -> Outcome:
        self.calls.append((seq, perf_counter_ns()))
        await asyncio.sleep(self.delay_s if seq else 0.0)
        return Outcome(ok=True, status=200)

    def extra_metrics(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        pass


def test_the_open_loop_sends_request_n_at_offset_n_and_a_dropped_one_keeps_its_number() -> None:
    offsets = (0, 100 * MS, 200 * MS, 201 * MS, 202 * MS, 700 * MS)
    wl = _Recording(delay_s=0.3)
    spec = LoadSpec(mode=Mode.OPEN, offsets_ns=offsets, duration_s=0.701, max_in_flight=2)
    before = perf_counter_ns()  # the engine's start is no earlier
    res = asyncio.run(run_load(spec, wl))
    assert res.state is RunState.SUCCEEDED, res.reason
    # from 200 ms to 400 ms requests 1 and 2 are out: 3 and 4 are dropped, 5 is not
    assert [seq for seq, _ in wl.calls] == [0, 1, 2, 5]
    assert res.counters["dropped"] == 2 and res.counters["completed"] == 4
    for seq, at in wl.calls:
        assert at - before >= offsets[seq]  # never early
    assert res.target_rate == pytest.approx(6 / 0.701)
    with pytest.raises(InvalidArgument) as info:
        LoadSpec(mode=Mode.OPEN, offsets_ns=(5, 1), duration_s=1)
    assert info.value.field == "offsets_ns"
    with pytest.raises(InvalidArgument) as info:
        LoadSpec(mode=Mode.OPEN, offsets_ns=(0, 2_000 * MS), duration_s=1)
    assert info.value.field == "duration_s"
