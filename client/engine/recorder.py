"""The engine's hot-path bookkeeping: per-request recording, per-second samples, the final result.

Every request is recorded twice: into the current interval (for live progress and the series,
warm-up and cool-down included) and, when its intended send time lies in the measurement window,
into the run's totals. Latency runs from the intended send time to completion; service time from the
actual wire send (when the workload reports it); schedule lag from the intended to the actual send
time. Streaming workloads add TTFT (from the intended send time), ITL (between token chunks) and
TPOT ((end - first token) / (output tokens - 1), with `values["output_tokens"]`, so a chunk
carrying several tokens counts them all); the interval keeps its own TTFT and ITL too, so a
report can show them per time slice. A request the engine cancelled on purpose is only counted
(`cancelled`): it has no latency and is not an error. Times are `perf_counter_ns` integers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from itertools import pairwise

from aifb.client.engine.histogram import LatencyHistogram
from aifb.client.engine.progress import Progress
from aifb.client.engine.results import LoadResult, SecondStats
from aifb.client.engine.samples import RequestLog
from aifb.client.engine.workload import Outcome

__all__ = ["LATE_NS", "Recorder"]

LATE_NS = 1_000_000  # a send more than 1 ms behind its schedule counts as late


class Recorder:
    def __init__(self, start_ns: int, window_start_ns: int, window_end_ns: int) -> None:
        self.start_ns = start_ns
        self.window_start_ns = window_start_ns
        self.window_end_ns = window_end_ns
        self.result = LoadResult()
        self._c = self.result.counters
        self._h = self.result.histograms
        self.errors_by_kind: Counter[str] = Counter()
        self.all_completed = 0
        self.all_errors = 0
        self.all_cancelled = 0
        self.in_flight = 0
        self._iv = SecondStats(0)
        self._next_iv: SecondStats | None = None  # built ahead by prepare_tick
        self._iv_start_ns = start_ns
        self.samples: RequestLog | None = None  # per-request rows, when the run asks for them

    def sent(self, intended_ns: int, sent_ns: int) -> None:
        lag = sent_ns - intended_ns
        lag_us = lag // 1000 if lag > 0 else 0
        iv = self._iv
        iv.sent += 1
        iv.lag.record_us(lag_us)
        if self.window_start_ns <= intended_ns < self.window_end_ns:
            c = self._c
            c["sent"] += 1
            self._h["lag"].record_us(lag_us)
            if lag > LATE_NS:
                c["late"] += 1

    def sent_unscheduled(self, sent_ns: int) -> None:
        """Closed loop: a send with no schedule, hence no lag."""
        self._iv.sent += 1
        if self.window_start_ns <= sent_ns < self.window_end_ns:
            self._c["sent"] += 1

    def dropped(self, intended_ns: int) -> None:
        self._iv.dropped += 1
        if self.window_start_ns <= intended_ns < self.window_end_ns:
            self._c["dropped"] += 1

    def cancelled(self, intended_ns: int) -> None:
        """A request the engine gave up on on purpose: counted, never timed, never an error."""
        self._iv.cancelled += 1
        self.all_cancelled += 1
        if self.window_start_ns <= intended_ns < self.window_end_ns:
            self._c["cancelled"] += 1

    def done(self, intended_ns: int, out: Outcome, end_ns: int) -> None:
        if self.samples is not None:
            self.samples.add(intended_ns, out, end_ns)
        latency_us = (end_ns - intended_ns) // 1000
        iv = self._iv
        iv.completed += 1
        self.all_completed += 1
        ok = out.ok
        if ok:
            iv.latency.record_us(latency_us)
            if out.first_chunk_ns:
                self._per_interval_tokens(iv, intended_ns, out)
        else:
            iv.errors += 1
            self.all_errors += 1
            self.errors_by_kind[out.error or "error"] += 1
        if not self.window_start_ns <= intended_ns < self.window_end_ns:
            self._c["excluded"] += 1
            return
        c = self._c
        c["completed"] += 1
        if not ok:
            c["errors"] += 1
            return
        c["ok"] += 1
        h = self._h
        h["latency"].record_us(latency_us)
        if out.sent_ns:
            h["service"].record_us((end_ns - out.sent_ns) // 1000)
        if out.first_chunk_ns:
            h["ttft"].record_us((out.first_chunk_ns - intended_ns) // 1000)
        chunks = out.chunk_ns
        if chunks:
            itl = h["itl"]
            for prev, cur in pairwise(chunks):
                itl.record_us((cur - prev) // 1000)
        if out.values:
            tokens = out.values.get("output_tokens", 0.0)
            if out.first_chunk_ns and tokens > 1:  # time per output token after the first
                h["tpot"].record_us(int((end_ns - out.first_chunk_ns) / (tokens - 1)) // 1000)
            values = self.result.values
            for key, value in out.values.items():
                values[key] = values.get(key, 0.0) + value

    @staticmethod
    def _per_interval_tokens(iv: SecondStats, intended_ns: int, out: Outcome) -> None:
        ttft = iv.ttft
        if ttft is None:
            ttft = iv.ttft = LatencyHistogram()
        ttft.record_us((out.first_chunk_ns - intended_ns) // 1000)
        chunks = out.chunk_ns
        if chunks and len(chunks) > 1:
            itl = iv.itl
            if itl is None:
                itl = iv.itl = LatencyHistogram()
            for prev, cur in pairwise(chunks):
                itl.record_us((cur - prev) // 1000)

    def phase_at(self, t_ns: int) -> str:
        if t_ns < self.window_start_ns:
            return "warmup"
        return "measure" if t_ns < self.window_end_ns else "cooldown"

    @property
    def interval_start_ns(self) -> int:
        """When the interval the next `tick` closes began."""
        return self._iv_start_ns

    def prepare_tick(self) -> Iterator[None]:
        """The costly part of `tick`, in steps of a fraction of a millisecond: the engine runs
        them with a loop iteration between each (sends due meanwhile go out on time), then
        calls `tick`. Without it, `tick` does the same work in one go."""
        iv = self._iv
        for hist in (iv.latency, iv.lag, iv.ttft, iv.itl, *self._h.values()):
            if hist is not None and hist.has_pending:
                hist.flush()
                yield
        if self._next_iv is None:
            self._next_iv = SecondStats(self._iv.second + 1)
            yield

    def tick(self, now_ns: int, target_rate: float) -> Progress:
        """Close the current interval: append it to the series and describe it."""
        nxt, self._next_iv = self._next_iv, None
        if nxt is None or nxt.second != self._iv.second + 1:
            nxt = SecondStats(self._iv.second + 1)
        iv, self._iv = self._iv, nxt
        iv.in_flight = self.in_flight
        iv.target_rate = target_rate
        span_s = max(now_ns - self._iv_start_ns, 1) / 1e9
        iv.span_s = round(span_s, 6)
        self._iv_start_ns = now_ns
        self.result.series.append(iv)
        self.flush()  # keeps the pending value lists bounded to one interval
        return Progress(
            second=iv.second, elapsed_s=round((now_ns - self.start_ns) / 1e9, 3),
            phase=self.phase_at(now_ns - 1), requests=iv.completed, errors=iv.errors,
            dropped=iv.dropped, cancelled=iv.cancelled,
            achieved_rate=round(iv.completed / span_s, 2),
            target_rate=target_rate, p50_s=iv.latency.percentile_us(50) / 1e6,
            p99_s=iv.latency.percentile_us(99) / 1e6, lag_p99_s=iv.lag.percentile_us(99) / 1e6,
            in_flight=self.in_flight, total_requests=self.all_completed,
            total_errors=self.all_errors, total_cancelled=self.all_cancelled)

    def flush(self) -> None:
        for hist in self._h.values():
            hist.flush()
