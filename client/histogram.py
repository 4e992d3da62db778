"""HDR latency histograms in microseconds: cheap recording, exact merge, compact encoding.

Backed by `hdrh` (the HdrHistogram organisation's Python port): its V2 compressed encoding is the
same one the Java, C, Go and wrk2 implementations read, so a worker's histogram can be decoded
anywhere and two of them merge exactly (bucket counts add). `hdrh.record_value` costs ~2.5 µs in
pure Python, too much for a load generator's hot path, so values are appended to a plain list
(tens of ns) and folded into the HDR buckets in batches through a `Counter` of distinct values:
per-second flushes keep memory bounded and the result is identical to recording each value.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = ["HIGHEST_US", "PERCENTILES", "LatencyHistogram"]

HIGHEST_US = 3_600_000_000  # one hour, in microseconds
_SIG_FIGS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def _new() -> Any:
    return HdrHistogram(1, HIGHEST_US, _SIG_FIGS)


class LatencyHistogram:
    """Values in integer microseconds (clamped to [1, HIGHEST_US]); mergeable and encodable."""

    __slots__ = ("_hdr", "_pending")

    def __init__(self) -> None:
        self._hdr: Any = _new()
        self._pending: list[int] = []

    def record_us(self, value_us: int) -> None:
        """Record one value; the hot path (a list append)."""
        self._pending.append(value_us)

    def record_ns(self, value_ns: int) -> None:
        self._pending.append(value_ns // 1000)

    def flush(self) -> None:
        """Fold pending values into the HDR buckets (done lazily before any read)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        hdr = self._hdr
        for value, count in Counter(pending).items():
            hdr.record_value(min(max(int(value), 1), HIGHEST_US), count)

    @property
    def count(self) -> int:
        self.flush()
        return int(self._hdr.get_total_count())

    def percentile_us(self, percentile: float) -> int:
        self.flush()
        if self._hdr.get_total_count() == 0:
            return 0
        return int(self._hdr.get_value_at_percentile(percentile))

    def percentiles_us(self, percentiles: tuple[float, ...] = PERCENTILES) -> dict[str, int]:
        return {_pct_key(p): self.percentile_us(p) for p in percentiles}

    @property
    def min_us(self) -> int:
        self.flush()
        return int(self._hdr.get_min_value()) if self._hdr.get_total_count() else 0

    @property
    def max_us(self) -> int:
        self.flush()
        return int(self._hdr.get_max_value()) if self._hdr.get_total_count() else 0

    @property
    def mean_us(self) -> float:
        self.flush()
        return float(self._hdr.get_mean_value()) if self._hdr.get_total_count() else 0.0

    def add(self, other: LatencyHistogram) -> None:
        """Merge other into self (exact: bucket counts add)."""
        self.flush()
        other.flush()
        if other._hdr.get_total_count():
            self._hdr.add(other._hdr)

    def reset(self) -> None:
        self._pending = []
        self._hdr.reset()

    def copy(self) -> LatencyHistogram:
        out = LatencyHistogram()
        out.add(self)
        return out

    def encode(self) -> bytes:
        """HdrHistogram V2 compressed, base64 (the format HDR tools exchange)."""
        self.flush()
        return bytes(self._hdr.encode())

    @classmethod
    def decode(cls, data: bytes) -> LatencyHistogram:
        out = cls()
        if data:
            out._hdr.add(HdrHistogram.decode(data))
        return out

    def bucket_counts(self) -> dict[int, int]:
        """Non-empty buckets as {lowest equivalent value: count}: equality of two histograms."""
        self.flush()
        return {int(item.value_iterated_to): int(item.count_at_value_iterated_to)
                for item in self._hdr.get_recorded_iterator()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return self.bucket_counts() == other.bucket_counts()

    __hash__ = None  # type: ignore[assignment]

    def summary(self) -> dict[str, float]:
        """count, min, mean, max and the standard percentiles, in microseconds."""
        out: dict[str, float] = {"count": self.count, "min_us": self.min_us,
                                 "mean_us": round(self.mean_us, 1), "max_us": self.max_us}
        out.update({f"{k}_us": v for k, v in self.percentiles_us().items()})
        return out


def _pct_key(p: float) -> str:
    text = f"{p:g}".replace(".", "_")
    return f"p{text}"
