"""The load engine's logic: schedules, profiles, windows, budgets, progress, exact merges."""

from __future__ import annotations

import asyncio
import itertools
import statistics
from time import perf_counter_ns

import pytest

from aifb.client.engine.budget import ErrorBudget
from aifb.client.engine.histogram import LatencyHistogram
from aifb.client.engine.load import LoadRun, run_load
from aifb.client.engine.profiles import constant, ramp, steps
from aifb.client.engine.progress import Progress
from aifb.client.engine.recorder import Recorder
from aifb.client.engine.results import LoadResult, RunState, merge_results
from aifb.client.engine.schedule import Arrival, arrival_offsets_ns
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.engine.sweep import SweepSpec, run_sweep
from aifb.client.engine.workload import Outcome, Workload
from aifb.client.workloads.http_client import HttpConnection, HttpResponse
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit
S = 1_000_000_000


class FakeWorkload:
    """Answers after one loop turn; `fail` makes every answer an error; latency adds a delay."""

    name = "fake"

    def __init__(self, *, fail: bool = False, latency_ns: int = 0) -> None:
        self.fail = fail
        self.latency_ns = latency_ns
        self.prepared = self.closed = False
        self.seqs: list[int] = []

    async def prepare(self) -> None:
        self.prepared = True

    async def request(self, seq: int) -> Outcome:
        self.seqs.append(seq)
        await asyncio.sleep(0)
        end = perf_counter_ns() + self.latency_ns
        if self.fail:
            return Outcome(ok=False, error="status_503", status=503, end_ns=end)
        return Outcome(ok=True, status=200, end_ns=end)

    def extra_metrics(self) -> dict[str, float]:
        return {"requests_seen": float(len(self.seqs))}

    async def close(self) -> None:
        self.closed = True


def test_fake_workload_satisfies_the_workload_protocol() -> None:
    assert isinstance(FakeWorkload(), Workload)


# -- schedules and profiles
def test_constant_schedule_sends_exactly_rate_times_duration_evenly_spaced() -> None:
    times = list(arrival_offsets_ns(constant(1000.0, 2.0), Arrival.CONSTANT))
    assert len(times) == 2000
    gaps = {b - a for a, b in itertools.pairwise(times)}
    assert max(gaps) - min(gaps) <= 2  # 1 ms apart, to the ns rounding
    assert times[0] == 0 and times[-1] < 2 * S


def test_poisson_schedule_has_the_mean_rate_and_exponential_gaps() -> None:
    times = list(arrival_offsets_ns(constant(5000.0, 10.0), Arrival.POISSON, seed=7))
    assert abs(len(times) - 50_000) < 4 * 50_000 ** 0.5  # within 4 sigma of the mean count
    gaps = [b - a for a, b in itertools.pairwise(times)]
    cv = statistics.pstdev(gaps) / statistics.fmean(gaps)
    assert 0.95 < cv < 1.05  # an exponential distribution has CV 1


def test_gamma_schedule_burstiness_below_one_is_burstier_at_the_same_mean_rate() -> None:
    times = list(arrival_offsets_ns(constant(5000.0, 10.0), Arrival.GAMMA, burstiness=0.25,
                                    seed=3))
    assert abs(len(times) - 50_000) / 50_000 < 0.03
    gaps = [b - a for a, b in itertools.pairwise(times)]
    cv = statistics.pstdev(gaps) / statistics.fmean(gaps)
    assert 1.8 < cv < 2.2  # gamma shape k has CV 1/sqrt(k) = 2


def test_schedules_with_the_same_seed_repeat() -> None:
    prof = constant(100.0, 1.0)
    assert list(arrival_offsets_ns(prof, "poisson", seed=1)) == list(
        arrival_offsets_ns(prof, "poisson", seed=1))


def test_ramp_profile_sends_the_integral_of_its_rate_in_each_part() -> None:
    times = list(arrival_offsets_ns(ramp(0.0, 2000.0, 2.0), Arrival.CONSTANT))
    first = sum(1 for t in times if t < S)
    assert len(times) == pytest.approx(2000, abs=1)  # area of the triangle
    assert first == pytest.approx(500, abs=1)  # a quarter of it in the first half
    assert ramp(0.0, 2000.0, 2.0).level_at(0.5) == pytest.approx(500.0)


def test_step_profile_sends_each_steps_rate_during_that_step() -> None:
    times = list(arrival_offsets_ns(steps([100.0, 300.0, 0.0, 200.0], 1.0), Arrival.CONSTANT))
    per_second = [sum(1 for t in times if k * S <= t < (k + 1) * S) for k in range(4)]
    assert per_second == [100, 300, 0, 200]


def test_spec_rejects_bad_values_naming_the_field() -> None:
    cases = [({"duration_s": 0.0}, "duration_s"), ({"mode": "sideways"}, "mode"),
             ({"mode": "open", "rate": -1.0}, "rate"), ({"arrival": "weird"}, "arrival"),
             ({"warmup_s": 5.0, "duration_s": 5.0}, "warmup_s"), ({"users": 0}, "users"),
             ({"burstiness": 0.0}, "burstiness")]
    for kwargs, fld in cases:
        with pytest.raises(InvalidArgument) as err:
            LoadSpec(**kwargs)  # type: ignore[arg-type]
        assert err.value.field == fld, kwargs


# -- runs
def test_open_loop_excludes_warmup_and_cooldown_from_statistics() -> None:
    spec = LoadSpec(mode=Mode.OPEN, rate=400.0, duration_s=1.0, warmup_s=0.25, cooldown_s=0.25)
    wl = FakeWorkload()
    res = asyncio.run(run_load(spec, wl))
    assert res.state is RunState.SUCCEEDED, res.reason
    assert wl.prepared and wl.closed
    assert res.counters["completed"] == 200  # the middle half of 400 sends
    assert res.counters["excluded"] == 200
    assert res.histograms["latency"].count == 200
    assert res.target_rate == pytest.approx(400.0)
    assert res.measured_s == pytest.approx(0.5, abs=0.01)
    assert res.extra == {"requests_seen": 400.0}


def test_closed_loop_warmup_requests_are_not_in_the_latency_histogram() -> None:
    slow_then_fast = FakeWorkload(latency_ns=50_000_000)  # 50 ms "latency" during warm-up

    def speed_up(sample: Progress) -> None:
        slow_then_fast.latency_ns = 0

    spec = LoadSpec(mode=Mode.CLOSED, users=2, duration_s=0.6, warmup_s=0.3, interval_s=0.25)
    res = asyncio.run(run_load(spec, slow_then_fast, on_progress=speed_up))
    assert res.counters["excluded"] > 0
    assert res.histograms["latency"].count == res.counters["ok"] > 0
    assert res.histograms["latency"].max_us < 50_000


def test_error_budget_exceeded_ends_the_run_failed_with_the_reason() -> None:
    spec = LoadSpec(mode=Mode.OPEN, rate=500.0, duration_s=20.0, interval_s=0.1,
                    budget=ErrorBudget(max_ratio=0.05, min_requests=50))
    started = perf_counter_ns()
    res = asyncio.run(run_load(spec, FakeWorkload(fail=True)))
    assert res.state is RunState.FAILED
    assert "error budget exceeded" in res.reason and "status_503" in res.reason
    assert (perf_counter_ns() - started) / S < 5.0  # it stopped early, not after 20 s
    assert res.errors_by_kind["status_503"] == res.counters["errors"] > 0


def test_error_count_budget_fails_the_run_as_soon_as_it_is_exceeded() -> None:
    spec = LoadSpec(mode=Mode.CLOSED, users=1, duration_s=20.0,
                    budget=ErrorBudget(max_errors=10))
    res = asyncio.run(run_load(spec, FakeWorkload(fail=True)))
    assert res.state is RunState.FAILED and "max_errors 10" in res.reason
    assert res.counters["errors"] == 11


def test_request_count_bound_ends_the_run_succeeded_after_that_many_sends() -> None:
    spec = LoadSpec(mode=Mode.CLOSED, users=4, duration_s=20.0, max_requests=1000)
    wl = FakeWorkload()
    res = asyncio.run(run_load(spec, wl))
    assert res.state is RunState.SUCCEEDED
    assert sorted(wl.seqs) == list(range(1000))
    assert res.counters["sent"] == res.counters["ok"] == 1000


def test_cancel_ends_the_run_cancelled_and_progress_stream_ends() -> None:
    async def scenario() -> tuple[LoadResult, list[Progress]]:
        run = LoadRun(LoadSpec(mode=Mode.OPEN, rate=200.0, duration_s=30.0, interval_s=0.1),
                      FakeWorkload())
        run.start()
        seen: list[Progress] = []
        async for sample in run.progress():
            seen.append(sample)
            if len(seen) == 3:
                run.cancel("user asked")
        return await run.wait(), seen

    res, seen = asyncio.run(scenario())
    assert res.state is RunState.CANCELLED and res.reason == "user asked"
    assert [s.second for s in seen] == list(range(len(seen))) and len(seen) >= 3
    # Over the first three intervals together (one late tick only moves requests between them).
    assert sum(s.requests for s in seen[:3]) / seen[2].elapsed_s == pytest.approx(200.0, rel=0.2)
    assert res.counters["ok"] > 0


def test_open_loop_never_exceeds_max_in_flight_and_counts_drops() -> None:
    spec = LoadSpec(mode=Mode.OPEN, rate=1000.0, duration_s=0.5, max_in_flight=5)

    class Stuck(FakeWorkload):
        async def request(self, seq: int) -> Outcome:
            await asyncio.sleep(10)
            return Outcome(ok=True)

    res = asyncio.run(run_load(LoadSpec(**{**_fields(spec), "drain_s": 0.05}), Stuck()))
    assert res.counters["sent"] == 5
    assert res.counters["dropped"] == 495
    assert res.counters["unfinished"] == 5


def _fields(spec: LoadSpec) -> dict[str, object]:
    return {name: getattr(spec, name) for name in spec.__slots__}


# -- results
def _recorded(values_us: list[int], errors: int = 0) -> LoadResult:
    rec = Recorder(0, 0, 10 * S)
    for i, v in enumerate(values_us):
        rec.sent(i * 1000, i * 1000 + v)  # lag = value, for the test
        rec.done(i * 1000, Outcome(ok=True), i * 1000 + v * 1000)
    for _ in range(errors):
        rec.done(0, Outcome(ok=False, error="timeout"), 1)
    rec.tick(S, 100.0)
    rec.flush()
    rec.result.errors_by_kind = dict(rec.errors_by_kind)
    rec.result.measured_s = 1.0
    rec.result.state = RunState.SUCCEEDED
    return rec.result


def test_merge_of_two_workers_results_equals_one_result_over_the_union() -> None:
    a_vals = [100 + 7 * i for i in range(3000)]
    b_vals = [5000 + 131 * i for i in range(500)]
    a, b = _recorded(a_vals, errors=2), _recorded(b_vals, errors=3)
    union = _recorded(a_vals + b_vals, errors=5)
    merged = merge_results([LoadResult.from_bytes(a.to_bytes()),
                            LoadResult.from_bytes(b.to_bytes())])
    assert merged.counters == union.counters
    assert merged.errors_by_kind == union.errors_by_kind == {"timeout": 5}
    for name in ("latency", "lag"):
        assert merged.histograms[name] == union.histograms[name]
        assert merged.histograms[name].percentiles_us() == union.histograms[name].percentiles_us()
    assert merged.series[0].latency == union.series[0].latency
    assert merged.series[0].completed == union.series[0].completed
    assert merged.workers == 2 and merged.target_rate == 0.0


def test_result_bytes_round_trip_keeps_everything() -> None:
    res = _recorded([1, 2, 3, 1_000_000], errors=1)
    back = LoadResult.from_bytes(res.to_bytes())
    assert back.summary() == res.summary()
    assert back.series[0].latency == res.series[0].latency


def test_histogram_merge_adds_bucket_counts_and_clamps_out_of_range_values() -> None:
    h1, h2 = LatencyHistogram(), LatencyHistogram()
    h1.record_us(0)
    h2.record_us(10**13)
    h1.add(h2)
    assert h1.count == 2 and h1.min_us == 1 and h1.max_us >= 3_600_000_000 * 0.999


# -- the HTTP parser, fed byte by byte through a fake transport
class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("response, body_len", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 5),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\n", 6),
    (b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n", 0),
])
def test_http_parser_completes_a_response_split_at_every_byte(response: bytes,
                                                              body_len: int) -> None:
    async def feed() -> list[HttpResponse]:
        loop = asyncio.get_running_loop()
        out = []
        for split in (1, 3, len(response)):
            conn = HttpConnection(loop)
            conn.connection_made(_FakeTransport())
            fut = conn.send(b"GET / HTTP/1.1\r\n\r\n")
            for i in range(0, len(response), split):
                assert not fut.done()
                conn.data_received(response[i:i + split])
            out.append(await fut)
        return out

    for resp in asyncio.run(feed()):
        assert resp.body_len == body_len and resp.status in (200, 204)


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\n",
])
def test_a_streaming_caller_gets_the_payload_without_chunk_framing(response: bytes) -> None:
    async def feed(split: int) -> list[tuple[bytes, int]]:
        loop = asyncio.get_running_loop()
        conn = HttpConnection(loop)
        conn.connection_made(_FakeTransport())
        pieces: list[tuple[bytes, int]] = []
        fut = conn.send(b"GET / HTTP/1.1\r\n\r\n",
                        on_chunk=lambda data, now: pieces.append((bytes(data), now)))
        for i in range(0, len(response), split):
            conn.data_received(response[i:i + split])
        await fut
        return pieces

    for split in (1, 2, 7, len(response)):
        pieces = asyncio.run(feed(split))
        assert b"".join(p for p, _ in pieces) == b"hello!", split
        assert all(p for p, _ in pieces)  # no empty calls for framing-only reads


# -- sweep
class SleepyWorkload(FakeWorkload):
    async def request(self, seq: int) -> Outcome:
        await asyncio.sleep(0.002)
        return Outcome(ok=True)


def test_sweep_runs_synchronous_then_throughput_then_rates_between_them() -> None:
    spec = SweepSpec(step=LoadSpec(duration_s=0.4), max_users=4, points=2)
    res = asyncio.run(run_sweep(spec, SleepyWorkload))
    names = [s.name for s in res.steps]
    assert names[:2] == ["synchronous", "throughput"] and set(names[2:]) <= {"rate"}
    low, high = (s.result.achieved_rate for s in res.steps[:2])
    assert 0 < low < high
    rates = [s.target_rate for s in res.steps[2:]]
    assert rates == sorted(rates) and all(low < r < high for r in rates)
    assert len(rates) == 2 or res.stop_reason.startswith(("saturated", "SLO"))


def test_sweep_stops_at_the_first_slo_breach_with_the_reason() -> None:
    spec = SweepSpec(step=LoadSpec(duration_s=0.3), max_users=2, points=3, slo_latency_us=1)
    res = asyncio.run(run_sweep(spec, SleepyWorkload))
    assert [s.name for s in res.steps] == ["synchronous"]
    assert res.stop_reason.startswith("SLO breached: p99")


def test_a_tick_prepared_in_steps_gives_the_same_sample_as_one_in_one_go() -> None:
    from aifb.client.engine.recorder import Recorder
    from aifb.client.engine.workload import Outcome

    def fill(rec: Recorder, second: int) -> None:
        base = second * 1_000_000_000
        for i in range(3000):
            t = base + i * 300_000
            rec.sent(t, t + 40_000 + i % 7 * 1000)
            rec.done(t, Outcome(ok=i % 50 != 0, error="" if i % 50 else "status_500"),
                     t + 90_000 + i % 13 * 5000)

    plain, stepped = Recorder(0, 0, 10**18), Recorder(0, 0, 10**18)
    for second in range(3):
        fill(plain, second)
        fill(stepped, second)
        steps = list(stepped.prepare_tick())
        assert steps, "a second with data has work to do ahead of its tick"
        now = (second + 1) * 1_000_000_000
        assert plain.tick(now, 3000.0) == stepped.tick(now, 3000.0)
    assert plain.result.to_bytes() == stepped.result.to_bytes()
