"""HDR latency histograms in microseconds: cheap recording, exact merge, compact encoding.

Backed by `hdrh` (the HdrHistogram organisation's Python port): its V2 compressed encoding is the
same one the Java, C, Go and wrk2 implementations read, so a worker's histogram can be decoded
anywhere and two of them merge exactly (bucket counts add). `hdrh.record_value` costs ~2.5 µs in
pure Python, too much for a load generator's hot path, so values are appended to a plain list
(tens of ns) and folded into the HDR buckets in batches with numpy (bucket index arithmetic as in
hdrh, `bincount`, one add into hdrh's own counts array): the result is identical to recording each
value. A batch is folded every `_BATCH` values, so no single fold holds the event loop for more
than a fraction of a millisecond; percentiles are a cumulative sum and a binary search.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

__all__ = ["HIGHEST_US", "PERCENTILES", "LatencyHistogram"]

HIGHEST_US = 3_600_000_000  # one hour, in microseconds
_SIG_FIGS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
_BATCH = 2048  # pending values folded at once: ~0.1 ms of work


def _new() -> Any:
    return HdrHistogram(1, HIGHEST_US, _SIG_FIGS)


_PROTO = _new()
_HALF_MAG = int(_PROTO.sub_bucket_half_count_magnitude)
_HALF_COUNT = int(_PROTO.sub_bucket_half_count)
_MASK = int(_PROTO.sub_bucket_mask)
assert _PROTO.unit_magnitude == 0  # lowest trackable value 1: the index formula below


def _counts_view(hdr: Any) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """hdrh's counts (a ctypes array of unsigned 64-bit) as a numpy array, no copy."""
    return np.ctypeslib.as_array(hdr.counts).view(np.uint64)


def _fold(hdr: Any, values: list[int]) -> None:
    """record_value for each value (clamped to [1, HIGHEST_US]), vectorised."""
    arr = np.clip(np.asarray(values, dtype=np.int64), 1, HIGHEST_US)
    # bucket = bit_length(v | mask) - (half_mag + 1); frexp's exponent is the bit length
    bucket = np.frexp((arr | _MASK).astype(np.float64))[1].astype(np.int64) - (_HALF_MAG + 1)
    index = ((bucket + 1) << _HALF_MAG) + (arr >> bucket) - _HALF_COUNT
    binned = np.bincount(index)
    hit = np.flatnonzero(binned)
    counts = _counts_view(hdr)
    counts[hit] += binned[hit].astype(np.uint64)
    hdr.total_count += len(values)
    hdr.min_value = min(hdr.min_value, int(arr.min()))
    hdr.max_value = max(hdr.max_value, int(arr.max()))


class LatencyHistogram:
    """Values in integer microseconds (clamped to [1, HIGHEST_US]); mergeable and encodable."""

    __slots__ = ("_hdr", "_pending")

    def __init__(self) -> None:
        self._hdr: Any = _new()
        self._pending: list[int] = []

    def record_us(self, value_us: int) -> None:
        """Record one value; the hot path (a list append, a fold every _BATCH values)."""
        pending = self._pending
        pending.append(value_us)
        if len(pending) >= _BATCH:
            self.flush()

    def record_ns(self, value_ns: int) -> None:
        self.record_us(value_ns // 1000)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def flush(self) -> None:
        """Fold pending values into the HDR buckets (done lazily before any read)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        _fold(self._hdr, pending)

    @property
    def count(self) -> int:
        self.flush()
        return int(self._hdr.get_total_count())

    def percentile_us(self, percentile: float) -> int:
        """hdrh's get_value_at_percentile, with numpy for the walk over the buckets."""
        return self._percentiles([percentile])[0]

    def percentiles_us(self, percentiles: tuple[float, ...] = PERCENTILES) -> dict[str, int]:
        return dict(zip(map(_pct_key, percentiles), self._percentiles(list(percentiles)),
                        strict=True))

    def _percentiles(self, percentiles: list[float]) -> list[int]:
        self.flush()
        hdr = self._hdr
        if hdr.get_total_count() == 0:
            return [0] * len(percentiles)
        cumulative = np.cumsum(_counts_view(hdr))
        out = []
        for p in percentiles:
            index = int(np.searchsorted(cumulative, hdr.get_target_count_at_percentile(p)))
            value = hdr.get_value_from_index(index)
            out.append(int(hdr.get_highest_equivalent_value(value) if p else
                           hdr.get_lowest_equivalent_value(value)))
        return out

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
