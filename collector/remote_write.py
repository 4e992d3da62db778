"""Prometheus remote write: sample normalisation, WriteRequest encoding, and the sender.

Prometheus 2.42 rejects a whole request when one series in it is bad, silently drops samples
sent newest-first, and is poisoned for every later write by one sample far in the future. So
series are sorted and deduplicated here, timestamps are bounded before Prometheus sees them,
and a rejected request is bisected so that its good series still land.

Requests are built from `PackedSeries` (see `aifb.collector.packed`): encoded series heads and
one buffer of encoded samples, so building a request body costs one join, not a loop per sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from operator import itemgetter, lt

import cramjam
import httpx

from aifb.collector.config import CollectorConfig
from aifb.collector.model import NotDelivered, SeriesOut
from aifb.collector.packed import PackedSeries, pack_series
from aifb.collector.stats import Stats
from aifb.mesh.backoff import Backoff

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


def encode_write_request(series: list[SeriesOut]) -> bytes:
    """Serialized `prompb.WriteRequest` (uncompressed) for `series`, in their order."""
    return pack_series(series).body()


def compress(body: bytes) -> bytes:
    """Snappy block format, as Prometheus expects (not the framed format)."""
    return bytes(cramjam.snappy.compress_raw(body))


def _is_permanent(status: int, text: str) -> bool:
    lowered = text.lower()
    return status == 400 or (status >= 500 and any(m in lowered for m in PERMANENT_MESSAGES))


class RemoteWriter:
    """Sends series to one remote-write URL: every sample ends forwarded or rejected for good,
    or, when the collector stops first, `NotDelivered` is raised (its agents still hold it)."""

    def __init__(self, url: str, client: httpx.AsyncClient, stats: Stats, config: CollectorConfig
                 ) -> None:
        self.url = url
        self.client = client
        self.stats = stats
        self.config = config
        # Set when the collector stops: retries end at once (NotDelivered).
        self.stop = asyncio.Event()

    async def write(self, series: list[SeriesOut]) -> None:
        if series:
            await self._write(pack_series(series))

    async def write_packed(self, series: PackedSeries) -> None:
        """Send already packed series (the ingest path's form), bisecting on rejection."""
        if len(series):
            await self._write(series)

    async def _write(self, series: PackedSeries) -> None:
        samples = series.sample_count
        answer = await self._post(compress(series.body()))
        if answer is None:
            raise NotDelivered(f"remote write to {self.url} did not answer before the "
                               f"collector stopped ({samples} samples)")
        status, text = answer
        if 200 <= status < 300:
            self.stats.metric_samples_forwarded += samples
            return
        if _is_permanent(status, text) and len(series) > 1:
            self.stats.remote_write_splits += 1
            mid = len(series) // 2
            await self._write(series.slice(0, mid))
            await self._write(series.slice(mid, len(series)))
            return
        self.stats.metric_samples_remote_rejected += samples
        log.warning("remote write rejected %d samples of %s (HTTP %d): %s", samples,
                    _render(series.labels[0]) if len(series) == 1 else f"{len(series)} series",
                    status, text.strip()[:500])

    async def _post(self, body: bytes) -> tuple[int, str] | None:
        """POST with retries of 429, transient 5xx and connection errors until an answer that
        settles it; None: the collector is stopping."""
        retry = self.config.retry
        backoff = Backoff(retry.initial_seconds, retry.max_seconds, retry.multiplier)
        warned = False
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
            if not warned and backoff.elapsed() > retry.max_elapsed_seconds:
                warned = True
                log.error("remote write to %s has failed for %.0fs; holding the samples "
                          "(agents are held back) and retrying", self.url,
                          self.config.retry.max_elapsed_seconds)
            if not await backoff.wait(self.stop):
                return None
            self.stats.remote_write_retries += 1


def _render(labels: tuple[tuple[str, str], ...]) -> str:
    return "{" + ", ".join(f"{n}={v!r}" for n, v in labels) + "}"
