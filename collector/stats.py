"""The collector's own counters (plain ints on the hot path, read at export time)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["LatencyHistogram", "Stats"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LatencyHistogram:
    """Cumulative-on-read histogram of forward latencies in seconds."""

    bounds: tuple[float, ...] = _BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass
class Stats:
    """Counters since start. Only the event loop writes them; readers take a snapshot."""

    metric_samples_received: int = 0
    metric_samples_accepted: int = 0
    metric_samples_forwarded: int = 0
    metric_samples_rejected: int = 0
    # Accepted, not delivered before the collector stopped: left with their agents (resent).
    metric_samples_returned: int = 0
    metric_samples_clamped: int = 0
    metric_samples_remote_rejected: int = 0
    metric_batches_received: int = 0
    metric_batches_duplicate: int = 0
    metric_batches_invalid: int = 0
    remote_write_requests: int = 0
    remote_write_retries: int = 0
    remote_write_splits: int = 0
    log_lines_received: int = 0
    log_lines_accepted: int = 0
    log_lines_forwarded: int = 0
    log_lines_rejected: int = 0
    log_lines_returned: int = 0
    log_lines_remote_rejected: int = 0
    log_batches_received: int = 0
    log_batches_duplicate: int = 0
    log_batches_invalid: int = 0
    loki_requests: int = 0
    loki_retries: int = 0
    spans_received: int = 0
    # Gauges: accepted and not yet delivered (unacknowledged: their agents hold them too).
    metric_samples_held: int = 0
    log_lines_held: int = 0
    queue_depth: int = 0
    queue_capacity: int = 0
    remote_write_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    loki_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    agents_last_sequence: dict[str, int] = field(default_factory=dict)

    def note_agent(self, agent_id: str, sequence: int, keep: int = 10_000) -> None:
        """The agent's highest accepted sequence; the `keep` most recently heard agents."""
        self.agents_last_sequence.pop(agent_id, None)
        self.agents_last_sequence[agent_id] = sequence
        if len(self.agents_last_sequence) > keep:
            del self.agents_last_sequence[next(iter(self.agents_last_sequence))]
