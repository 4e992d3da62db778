"""Prometheus remote write: sample normalisation, WriteRequest encoding, and the sender.

Prometheus 2.42 rejects a whole request when one series in it is bad, silently drops samples
sent newest-first, and is poisoned for every later write by one sample far in the future. So
series are sorted and deduplicated here, timestamps are bounded before Prometheus sees them,
and a rejected request is bisected so that its good series still land.

The encoder writes `prompb.WriteRequest` bytes directly: every sample of a request is laid out
with a handful of strided slice assignments (no per-sample Python work), which is exact for
millisecond timestamps in [2**35, 2**42) (1971 to 2109); anything else takes the upb path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter, lt

import cramjam
import httpx

from aifb.collector.config import CollectorConfig
from aifb.collector.model import SeriesOut
from aifb.collector.retry import Backoff
from aifb.collector.stats import Stats
from aifb.v1 import telemetry_pb2
from aifb.wire import prompb_pb2

__all__ = [
    "REMOTE_WRITE_HEADERS",
    "RemoteWriter",
    "TimeWindow",
    "compress",
    "encode_write_request",
    "is_clean",
    "normalize_samples",
]

log = logging.getLogger(__name__)

REMOTE_WRITE_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "aifb-collector",
}
# Answers that no retry can fix, whatever the HTTP status (500 "too old sample" included).
PERMANENT_MESSAGES = ("out of order", "duplicate sample", "out of bounds", "too old sample")
_VARINT6_LO, _VARINT6_HI = 1 << 35, 1 << 42
_SAMPLE = 18  # 0x12 len=16 | 0x09 <double> | 0x10 <6-byte varint>


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Accepted sample times in ms: [oldest, newest]; beyond newest, clamp to `now` or reject."""

    now: int
    oldest: int
    newest: int
    clamp: bool

    @classmethod
    def from_config(cls, config: CollectorConfig, now_ms: int | None = None) -> TimeWindow:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return cls(now=now, oldest=now - int(config.max_sample_age_seconds * 1000),
                   newest=now + int(config.future_skew_seconds * 1000),
                   clamp=config.future_policy == "clamp")


def is_clean(timestamps: list[int], window: TimeWindow) -> bool:
    """True when timestamps are strictly ascending and inside the window (no loop in Python)."""
    return bool(timestamps) and timestamps[0] >= window.oldest \
        and timestamps[-1] <= window.newest and all(map(lt, timestamps, timestamps[1:]))


def normalize_samples(timestamps: list[int], values: list[float], window: TimeWindow
                      ) -> tuple[list[int], list[float], int, int, int, str]:
    """Sort, drop exact duplicates, bound times. Returns (ts, values, rejected, clamped,
    deduplicated, reason); the common case (ascending, unique, in range) costs no loop."""
    if is_clean(timestamps, window):
        return timestamps, values, 0, 0, 0, ""
    rejected = clamped = deduplicated = 0
    reasons: list[str] = []
    kept: list[tuple[int, float]] = []
    for ts, value in zip(timestamps, values, strict=True):
        if ts < window.oldest:
            rejected += 1
            reasons.append("timestamp older than the accepted age")
        elif ts > window.newest:
            if window.clamp:
                clamped += 1
                kept.append((window.now, value))
            else:
                rejected += 1
                reasons.append("timestamp too far in the future")
        else:
            kept.append((ts, value))
    kept.sort(key=itemgetter(0))
    out_ts: list[int] = []
    out_values: list[float] = []
    for ts, value in kept:
        if out_ts and out_ts[-1] == ts:
            if out_values[-1] == value or (value != value and out_values[-1] != out_values[-1]):
                deduplicated += 1
            else:
                rejected += 1
                reasons.append("two values for one timestamp")
            continue
        out_ts.append(ts)
        out_values.append(value)
    reason = "; ".join(sorted(set(reasons)))
    return out_ts, out_values, rejected, clamped, deduplicated, reason


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


class _LabelCache:
    """Encoded `repeated Label` bytes per label set, bounded (cleared when full)."""

    def __init__(self, limit: int = 500_000) -> None:
        self.limit = limit
        self._map: dict[tuple[tuple[str, str], ...], bytes] = {}

    def get(self, labels: tuple[tuple[str, str], ...]) -> bytes:
        found = self._map.get(labels)
        if found is None:
            if len(self._map) >= self.limit:
                self._map.clear()
            found = b"".join(
                _field(0x0A, _field(0x0A, n.encode()) + _field(0x12, v.encode()))
                for n, v in labels)
            self._map[labels] = found
        return found


_LABELS = _LabelCache()


def _encode_slow(series: list[SeriesOut]) -> bytes:
    request = prompb_pb2.WriteRequest()
    for s in series:
        request.timeseries.add(
            labels=[prompb_pb2.Label(name=n, value=v) for n, v in s.labels],
            samples=[prompb_pb2.Sample(value=v, timestamp=t)
                     for t, v in zip(s.timestamps, s.values, strict=True)])
    return request.SerializeToString()


def encode_write_request(series: list[SeriesOut]) -> bytes:
    """Serialized `prompb.WriteRequest` (uncompressed) for `series`, in their order."""
    all_ts = list(chain.from_iterable(s.timestamps for s in series))
    n = len(all_ts)
    if n and (min(all_ts) < _VARINT6_LO or max(all_ts) >= _VARINT6_HI):
        return _encode_slow(series)
    doubles = array("d", chain.from_iterable(s.values for s in series)).tobytes()
    packed = telemetry_pb2.MetricSeries(timestamps_ms=all_ts).SerializeToString()
    varints = packed[len(packed) - 6 * n:]
    out = bytearray(_SAMPLE * n)
    out[0::_SAMPLE] = b"\x12" * n
    out[1::_SAMPLE] = b"\x10" * n
    out[2::_SAMPLE] = b"\x09" * n
    out[11::_SAMPLE] = b"\x10" * n
    for j in range(8):
        out[3 + j::_SAMPLE] = doubles[j::8]
    for j in range(6):
        out[12 + j::_SAMPLE] = varints[j::6]
    view = memoryview(out)
    parts: list[bytes | memoryview] = []
    offset = 0
    label_bytes = _LABELS.get
    for s in series:
        labels = label_bytes(s.labels)
        size = _SAMPLE * len(s.timestamps)
        parts += (b"\x0a", _varint(len(labels) + size), labels, view[offset:offset + size])
        offset += size
    return b"".join(parts)


def compress(body: bytes) -> bytes:
    """Snappy block format, as Prometheus expects (not the framed format)."""
    return bytes(cramjam.snappy.compress_raw(body))


def _is_permanent(status: int, text: str) -> bool:
    lowered = text.lower()
    return status == 400 or (status >= 500 and any(m in lowered for m in PERMANENT_MESSAGES))


class RemoteWriter:
    """Sends series to one remote-write URL; every sample ends forwarded, rejected or dropped."""

    def __init__(self, url: str, client: httpx.AsyncClient, stats: Stats, config: CollectorConfig
                 ) -> None:
        self.url = url
        self.client = client
        self.stats = stats
        self.config = config
        # Set when the collector stops: retries end at once and count their samples dropped.
        self.stop = asyncio.Event()

    async def write(self, series: list[SeriesOut]) -> None:
        if series:
            await self._write(series)

    async def _write(self, series: list[SeriesOut]) -> None:
        samples = sum(len(s.timestamps) for s in series)
        answer = await self._post(compress(encode_write_request(series)))
        if answer is None:
            self.stats.metric_samples_dropped += samples
            log.error("remote write to %s gave up after retries: %d samples in %d series dropped",
                      self.url, samples, len(series))
            return
        status, text = answer
        if 200 <= status < 300:
            self.stats.metric_samples_forwarded += samples
            return
        if _is_permanent(status, text) and len(series) > 1:
            self.stats.remote_write_splits += 1
            mid = len(series) // 2
            await self._write(series[:mid])
            await self._write(series[mid:])
            return
        self.stats.metric_samples_remote_rejected += samples
        log.warning("remote write rejected %d samples of %s (HTTP %d): %s", samples,
                    _render(series[0].labels) if len(series) == 1 else f"{len(series)} series",
                    status, text.strip()[:500])

    async def _post(self, body: bytes) -> tuple[int, str] | None:
        """POST with retries of 429, transient 5xx and connection errors; None: gave up."""
        backoff = Backoff(self.config.retry)
        while True:
            start = time.perf_counter()
            self.stats.remote_write_requests += 1
            try:
                resp = await self.client.post(self.url, content=body,
                                              headers=REMOTE_WRITE_HEADERS,
                                              timeout=self.config.remote_write_timeout_seconds)
            except httpx.TransportError as exc:
                log.debug("remote write to %s failed: %s", self.url, exc)
            else:
                self.stats.remote_write_latency.observe(time.perf_counter() - start)
                status = resp.status_code
                text = resp.text if status != 204 else ""
                if status != 429 and (status < 500 or _is_permanent(status, text)):
                    return status, text
                log.debug("remote write answered %d: %s", status, text[:200])
            if not await backoff.wait(self.stop):
                return None
            self.stats.remote_write_retries += 1


def _render(labels: tuple[tuple[str, str], ...]) -> str:
    return "{" + ", ".join(f"{n}={v!r}" for n, v in labels) + "}"
