"""Request cancellation (a seeded choice, counted apart), the gradual ramp of users, time slices
that add up to the whole, and what the same seed keeps the same."""

from __future__ import annotations

import asyncio
import itertools
from time import perf_counter_ns

import pytest

from aifb.client.engine.budget import ErrorBudget
from aifb.client.engine.cancellation import Cancellation
from aifb.client.engine.histogram import LatencyHistogram
from aifb.client.engine.load import run_load
from aifb.client.engine.profiles import ramp
from aifb.client.engine.progress import Progress
from aifb.client.engine.results import LoadResult, RunState, SecondStats, merge_results
from aifb.client.engine.schedule import Arrival, arrival_offsets_ns
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.engine.workload import Outcome
from aifb.client.report.document import build_document
from aifb.client.report.pages import summary_rows, to_html, to_markdown
from aifb.client.report.slices import slice_length, time_slices
from aifb.client.runs.options import LoadOptions, plan
from aifb.client.runs.record import BenchmarkRecord
from aifb.client.workloads.datasets import LengthDist, synthetic_prompts
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit
MS = 1_000_000


class _Slow:
    """Every request takes `delay_s` (an ok answer, or an error for seqs in `failing`);
    records which requests were cancelled mid-wait, and the most in flight at once."""

    name = "slow"

    def __init__(self, delay_s: float, failing: frozenset[int] = frozenset()) -> None:
        self.delay_s = delay_s
        self.failing = failing
        self.cancelled: set[int] = set()
        self.in_flight = 0
        self.peaks: list[tuple[int, int]] = []  # (ns since the first request, in flight)
        self._t0 = 0

    async def prepare(self) -> None:
        pass

    async def request(self, seq: int) -> Outcome:
        now = perf_counter_ns()
        self._t0 = self._t0 or now
        self.in_flight += 1
        self.peaks.append((now - self._t0, self.in_flight))
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled.add(seq)
            raise
        finally:
            self.in_flight -= 1
        if seq in self.failing:
            return Outcome(ok=False, error="status_500", status=500)
        first = perf_counter_ns()
        return Outcome(ok=True, status=200, first_chunk_ns=first, chunk_ns=[first, first + MS],
                       values={"output_tokens": 2.0})

    def extra_metrics(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        pass


# -- which requests are cancelled
def test_the_cancelled_requests_are_a_seeded_fraction_chosen_by_request_number() -> None:
    pick = Cancellation(0.3, 1.0, seed=5)
    chosen = {n for n in range(20_000) if pick.chosen(n)}
    assert abs(len(chosen) - 6000) < 4 * (20_000 * 0.3 * 0.7) ** 0.5  # within 4 sigma
    assert chosen == {n for n in range(20_000) if Cancellation(0.3, 1.0, seed=5).chosen(n)}
    other = {n for n in range(20_000) if Cancellation(0.3, 1.0, seed=6).chosen(n)}
    assert other != chosen and abs(len(other & chosen) - 1800) < 300  # independent choices
    # in any order: the choice is a function of the number, not of a shared generator
    assert {n for n in reversed(range(20_000)) if pick.chosen(n)} == chosen
    assert not any(Cancellation(0.0, 1.0, seed=1).chosen(n) for n in range(1000))
    assert all(Cancellation(1.0, 1.0, seed=1).chosen(n) for n in range(1000))
    unseeded = [{n for n in range(200) if Cancellation(0.5, 1.0, None).chosen(n)}
                for _ in range(2)]
    assert unseeded[0] != unseeded[1]  # no seed: new choices each run


@pytest.mark.parametrize("mode", [Mode.CLOSED, Mode.OPEN])
def test_cancelled_requests_are_counted_apart_never_timed_never_errors_nor_budget(
        mode: Mode) -> None:
    wl = _Slow(delay_s=0.05, failing=frozenset({1}))
    spec = LoadSpec(mode=mode, users=4, rate=200.0, duration_s=0.2 if mode is Mode.OPEN else 5,
                    max_requests=40, cancel_fraction=0.5, cancel_after_s=0.01, seed=11,
                    budget=ErrorBudget(max_errors=1))
    res = asyncio.run(run_load(spec, wl))
    pick = Cancellation(0.5, 0.01, seed=11)
    chosen = {n for n in range(40) if pick.chosen(n)}
    assert res.state is RunState.SUCCEEDED, res.reason
    assert wl.cancelled == chosen and 10 < len(chosen) < 30
    c = res.counters
    assert c["cancelled"] == len(chosen) and c["sent"] == 40
    assert c["completed"] == 40 - len(chosen) and c["errors"] == (0 if 1 in chosen else 1)
    assert res.histograms["latency"].count == c["ok"]
    assert res.histograms["ttft"].count == c["ok"]
    assert "cancelled" not in res.errors_by_kind and "timeout" not in res.errors_by_kind
    series = res.series
    assert sum(s.cancelled for s in series) == c["cancelled"]
    assert sum(s.completed for s in series) == c["completed"]


def test_a_request_answered_before_its_deadline_is_not_cancelled() -> None:
    wl = _Slow(delay_s=0.005)
    spec = LoadSpec(users=2, duration_s=5, max_requests=10, cancel_fraction=1.0,
                    cancel_after_s=2.0, seed=1)
    res = asyncio.run(run_load(spec, wl))
    assert res.counters["cancelled"] == 0 and res.counters["ok"] == 10 and not wl.cancelled


def test_cancellation_options_are_bounded_and_reach_every_spec() -> None:
    spec = plan(LoadOptions(rate=10, cancel_fraction=0.25, cancel_after_s=0.5)).load
    assert spec is not None and (spec.cancel_fraction, spec.cancel_after_s) == (0.25, 0.5)
    sweep = plan(LoadOptions(mode="sweep", cancel_fraction=0.1, cancel_after_s=1)).sweep
    assert sweep is not None and sweep.step.cancel_fraction == 0.1
    for options, field in ((LoadOptions(rate=1, cancel_fraction=1.5, cancel_after_s=1),
                            "load.cancel_fraction"),
                           (LoadOptions(rate=1, cancel_fraction=0.5), "load.cancel_after"),
                           (LoadOptions(rate=1, cancel_fraction=-0.1, cancel_after_s=1),
                            "load.cancel_fraction")):
        with pytest.raises(InvalidArgument) as info:
            plan(options)
        assert info.value.field == field


# -- the gradual ramp of users
def test_a_users_ramp_rises_linearly_from_the_start_to_the_concurrency() -> None:
    for options in (LoadOptions(mode="ramp", concurrency=8, start_concurrency=2, duration_s=10),
                    LoadOptions(mode="closed", concurrency=8, start_concurrency=2,
                                duration_s=10)):
        spec = plan(options).load
        assert spec is not None and spec.mode is Mode.CLOSED and spec.profile is not None
        assert [spec.profile.level_at(t) for t in (0, 5, 10)] == [2, 5, 8]
    from_zero = plan(LoadOptions(mode="ramp", concurrency=4, duration_s=2)).load
    assert from_zero is not None and from_zero.profile is not None
    assert from_zero.profile.level_at(0) == 0 and from_zero.profile.peak == 4
    for options in (LoadOptions(rate=10, start_concurrency=2),
                    LoadOptions(mode="ramp", rate=10, concurrency=4, start_concurrency=1),
                    LoadOptions(mode="sweep", start_concurrency=2)):
        with pytest.raises(InvalidArgument) as info:
            plan(options)
        assert info.value.field == "load.start_concurrency"


def test_a_closed_loop_on_a_users_ramp_adds_users_as_the_ramp_rises() -> None:
    wl = _Slow(delay_s=0.02)
    spec = LoadSpec(users=4, profile=ramp(1, 4, 1.6), duration_s=1.6)
    res = asyncio.run(run_load(spec, wl))
    assert res.state is RunState.SUCCEEDED and res.users == 4
    # the level is below 1.5 for the first 0.4 s: one user; it reaches 4 before the end
    early = [n for at, n in wl.peaks if at < 0.3e9]
    assert early and max(early) == 1
    assert max(n for _, n in wl.peaks) == 4


# -- time slices
def _second(k: int, completed: int, errors: int = 0, cancelled: int = 0,
            latency_us: int = 1000, ttft_us: int = 0) -> SecondStats:
    sec = SecondStats(k, sent=completed + cancelled, completed=completed, errors=errors,
                      cancelled=cancelled, span_s=1.0)
    for _ in range(completed - errors):
        sec.latency.record_us(latency_us)
    if ttft_us:
        sec.ttft = LatencyHistogram()
        sec.ttft.record_us(ttft_us)
    return sec


def test_slices_merge_their_seconds_and_their_counts_add_up_exactly_to_the_whole() -> None:
    series = [_second(k, 10 + k, errors=k % 2, cancelled=k % 3, latency_us=1000 * (k + 1),
                      ttft_us=500 if k >= 5 else 0) for k in range(7)]
    series[-1].span_s = 0.5  # the last interval, cut short by the end
    out = time_slices(series, 3)
    assert out is not None and out["slice_s"] == 3
    rows, total = out["rows"], out["total"]
    assert [r["start_s"] for r in rows] == [0, 3, 6]
    for key in ("requests", "errors", "cancelled", "ok", "sent", "dropped"):
        assert sum(r[key] for r in rows) == total[key]
    assert total["requests"] == sum(10 + k for k in range(7))
    assert rows[0]["requests"] == 33 and rows[0]["rate"] == pytest.approx(11.0)
    assert rows[2]["span_s"] == 0.5 and rows[2]["rate"] == pytest.approx(32.0)
    assert rows[0]["latency_p50_s"] == pytest.approx(0.002, rel=0.01)
    assert rows[2]["latency_p99_s"] == pytest.approx(0.007, rel=0.01)
    assert "ttft_p50_s" not in rows[0] and rows[1]["ttft_p50_s"] == pytest.approx(0.0005,
                                                                                rel=0.01)
    assert [slice_length(n, 0) for n in (1, 10, 11, 95)] == [1, 1, 2, 10]
    assert time_slices([]) is None


def test_a_real_runs_slices_add_up_to_its_counters_and_survive_bytes_and_merges() -> None:
    wl = _Slow(delay_s=0.01, failing=frozenset(range(0, 10_000, 7)))
    spec = LoadSpec(users=3, duration_s=2.5, cancel_fraction=0.2, cancel_after_s=0.005,
                    seed=4)
    res = asyncio.run(run_load(spec, wl))
    assert res.state is RunState.SUCCEEDED
    c = res.counters
    assert c["cancelled"] > 0 and c["errors"] > 0 and c["excluded"] == 0
    out = time_slices(res.series, 1)
    assert out is not None and len(out["rows"]) >= 3
    assert sum(r["requests"] for r in out["rows"]) == c["completed"] == out["total"]["requests"]
    assert sum(r["errors"] for r in out["rows"]) == c["errors"]
    assert sum(r["cancelled"] for r in out["rows"]) == c["cancelled"]
    assert out["total"]["ttft_p50_s"] is not None and out["total"]["itl_p50_s"] == 0.001
    again = LoadResult.from_bytes(res.to_bytes())
    assert time_slices(again.series, 1) == out
    doubled = time_slices(merge_results([res, again]).series, 1)
    assert doubled is not None and doubled["total"]["cancelled"] == 2 * c["cancelled"]
    old = {k: v for k, v in res.series[0].to_dict().items()
           if k not in ("cancelled", "span_s", "ttft", "itl")}  # a result from before
    assert SecondStats.from_dict(old).cancelled == 0


def test_reports_show_cancelled_and_the_time_slices_in_json_markdown_and_html() -> None:
    result = LoadResult(state=RunState.SUCCEEDED, mode="closed", workload="openai-chat",
                        measured_s=4.0)
    result.series = [_second(k, 5, cancelled=1, ttft_us=2000) for k in range(4)]
    result.counters.update(completed=20, ok=20, cancelled=4, sent=24)
    record = BenchmarkRecord(id="r1", owner="u", workload="openai-chat", url="http://h/",
                             state=RunState.SUCCEEDED,
                             load=LoadOptions(concurrency=2, time_slice_s=2))
    doc = build_document(record, {"result": result.to_dict()}, {})
    assert doc["slices"]["slice_s"] == 2 and len(doc["slices"]["rows"]) == 2
    assert [r["cancelled"] for r in doc["slices"]["rows"]] == [2, 2]
    assert ("cancelled", "4") in summary_rows(doc)
    md = to_markdown(doc, [])
    assert "## Time slices (2 s)" in md and "| 0-2 s | 10 | 0 | 2 | 5.00 |" in md
    assert "| total | 20 | 0 | 4 |" in md and "TTFT p50" in md
    html = to_html(doc, {})
    assert "<h2>Time slices (2 s)</h2>" in html and "<td>2-4 s</td>" in html


def test_progress_carries_the_cancelled_of_the_interval_and_in_total() -> None:
    p = Progress(second=1, elapsed_s=1.0, requests=3, errors=0, achieved_rate=3.0,
                 target_rate=0.0, p50_s=0.0, p99_s=0.0, in_flight=0, lag_p99_s=0.0,
                 total_requests=3, total_errors=0, cancelled=2, total_cancelled=5)
    assert Progress.from_dict(p.to_dict()) == p


# -- the seed
def test_the_same_seed_makes_the_same_schedule_prompts_lengths_and_cancellations() -> None:
    def draw(seed: int) -> tuple[list[int], list[str | None], list[int], list[bool]]:
        offsets = list(itertools.islice(arrival_offsets_ns(
            plan(LoadOptions(mode="poisson", rate=50, seed=seed)).load.level_profile(),  # type: ignore[union-attr]
            Arrival.POISSON, seed=seed), 200))
        lengths = LengthDist("lognormal", 64, 0.5)
        prompts = [p.text for p in synthetic_prompts(50, lengths, seed)]
        outputs = LengthDist("uniform", 1, 0, 1, 100).sample(50, seed + 1)
        cancels = [Cancellation(0.3, 1, seed).chosen(n) for n in range(200)]
        return offsets, prompts, outputs, cancels

    assert draw(3) == draw(3)
    assert all(a != b for a, b in zip(draw(3), draw(4), strict=True))
