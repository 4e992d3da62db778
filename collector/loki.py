"""Loki push API: label rendering, PushRequest (protobuf+snappy) and JSON bodies, the batcher.

Entries go out per stream in timestamp order. 429, 5xx and connection errors are retried with
jittered backoff until Loki answers or the collector stops; any other 4xx counts the request's
lines as rejected and logs Loki's message once. Each added batch may bring a future, settled
when its lines are: `Settled` (delivered, or refused for good) or `NotDelivered` (stopping).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, cast

import cramjam
import httpx

from aifb.collector.config import CollectorConfig
from aifb.collector.loki_wire import encode_push_request
from aifb.collector.model import Labels, NotDelivered, Settled
from aifb.collector.stats import Stats
from aifb.mesh.backoff import Backoff

__all__ = ["PUSH_PATH", "LokiForwarder", "encode_json", "encode_protobuf",
           "encode_protobuf_columns", "render_labels"]

log = logging.getLogger(__name__)

PUSH_PATH = "/loki/api/v1/push"
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})

# One stream's buffered entries: (timestamp ns, line).
Entries = list[tuple[int, str]]
# A stream's buffered lines: str, or UTF-8 bytes as they arrived on the wire.
Lines = list[str] | list[bytes]
# Who waits for lines: the future to settle and how many of the lines are theirs.
Waiter = tuple["asyncio.Future[Settled]", int]


def render_labels(labels: Labels) -> str:
    """'{a="x", b="y\\"z"}': sorted by name, values escaped as Loki's (PromQL) parser reads them."""
    return "{" + ", ".join(f'{n}="{v.translate(_ESCAPES)}"' for n, v in sorted(labels)) + "}"


def _ordered(entries: Entries) -> Entries:
    stamps = [e[0] for e in entries]
    return entries if stamps == sorted(stamps) else sorted(entries, key=itemgetter(0))


def _ordered_columns(stamps: Sequence[int], lines: Sequence[str] | Sequence[bytes]
                     ) -> tuple[Sequence[int], Sequence[str] | Sequence[bytes]]:
    # Sorting stamps that already ascend is one pass (agents' reads come as runs of one
    # stamp); comparing the sorted copy with them is cheaper still (the same objects).
    if sorted(stamps) == (stamps if isinstance(stamps, list) else list(stamps)):
        return stamps, lines
    pairs: list[tuple[int, Any]] = sorted(zip(stamps, lines, strict=True), key=itemgetter(0))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def encode_protobuf_columns(
        streams: Iterable[tuple[Labels, Sequence[int], Sequence[str] | Sequence[bytes]]]
) -> bytes:
    """A `logproto.PushRequest`, snappy block-compressed, from (labels, ns stamps, lines);
    lines are `str` or UTF-8 `bytes`."""
    return bytes(cramjam.snappy.compress_raw(encode_push_request(
        [(render_labels(labels), *_ordered_columns(stamps, lines))
         for labels, stamps, lines in streams], ordered=True)))


def encode_protobuf(streams: Iterable[tuple[Labels, Entries]]) -> bytes:
    """A `logproto.PushRequest`, snappy block-compressed."""
    return encode_protobuf_columns((labels, [e[0] for e in entries], [e[1] for e in entries])
                                   for labels, entries in streams)


def encode_json(streams: Iterable[tuple[Labels, Entries]]) -> bytes:
    """Loki's JSON push body: {"streams":[{"stream":{...},"values":[["<ns>","line"]]}]}."""
    body = {"streams": [{"stream": dict(sorted(labels)),
                         "values": [[str(ts), line] for ts, line in _ordered(entries)]}
                        for labels, entries in streams]}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class LokiForwarder:
    """Buffers streams and pushes them when `loki_batch_bytes` fill or `loki_batch_wait` ends.

    Lines leave the buffer only when their push is settled: acknowledged (2xx), refused for
    good (another 4xx: counted as rejected), or not delivered because the collector stops
    (their waiters get `NotDelivered`). A flush that is cancelled puts its lines (and waiters)
    back in front of whatever arrived meanwhile, so the next flush sends them."""

    def __init__(self, config: CollectorConfig, client: httpx.AsyncClient, stats: Stats) -> None:
        self.config = config
        self.url = config.loki_url.rstrip("/") + PUSH_PATH
        self.client = client
        self.stats = stats
        self._buffer: dict[Labels, tuple[list[int], Lines]] = {}
        self._bytes = 0
        self._lines = 0
        self._sending = 0
        self._first_at = 0.0
        self._waiters: list[Waiter] = []
        # Set while the collector drains: whatever is buffered is due at once.
        self.draining = False

    @property
    def buffered_lines(self) -> int:
        """Lines not yet settled, those in a push now included."""
        return self._lines + self._sending

    def add(self, streams: Iterable[tuple[Labels, Sequence[int], Sequence[str] | Sequence[bytes]]],
            waiter: Waiter | None = None) -> None:
        """Lines may be `str` or UTF-8 `bytes` (a stream keeps the kind it started with);
        `waiter` is settled with the push that carries them."""
        if not self._lines:
            self._first_at = time.monotonic()
        if waiter is not None:
            self._waiters.append(waiter)
        for labels, stamps, lines in streams:
            column = self._buffer.get(labels)
            if column is None:
                self._buffer[labels] = (list(stamps), cast(Lines, list(lines)))
            elif column[1] and type(column[1][0]) is not type(lines[0]):
                column[0].extend(stamps)
                column[1].extend(_like(column[1], lines))  # type: ignore[arg-type]
            else:
                column[0].extend(stamps)
                column[1].extend(lines)  # type: ignore[arg-type]
            self._bytes += sum(map(len, lines))
            self._lines += len(lines)

    def due_in(self) -> float | None:
        """Seconds until the buffer must go out; 0 when it is full; None when it is empty."""
        if not self._lines:
            return None
        if self._bytes >= self.config.loki_batch_bytes or self.draining:
            return 0.0
        return max(0.0, self._first_at + self.config.loki_batch_wait_seconds - time.monotonic())

    def _body(self, streams: list[tuple[Labels, tuple[list[int], Lines]]]
              ) -> tuple[bytes, dict[str, str]]:
        if self.config.loki_format == "json":
            body = encode_json((labels, list(zip(stamps, _texts(lines), strict=True)))
                               for labels, (stamps, lines) in streams)
            headers = {"Content-Type": "application/json"}
            if self.config.loki_gzip:
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            return body, headers
        return (encode_protobuf_columns((labels, *columns) for labels, columns in streams),
                {"Content-Type": "application/x-protobuf"})

    def _take(self) -> tuple[list[tuple[Labels, tuple[list[int], Lines]]], int, int,
                             list[Waiter]]:
        streams, lines, size = list(self._buffer.items()), self._lines, self._bytes
        waiters, self._waiters = self._waiters, []
        self._buffer, self._bytes, self._lines = {}, 0, 0
        self._sending += lines
        return streams, lines, size, waiters

    def _put_back(self, streams: list[tuple[Labels, tuple[list[int], Lines]]], lines: int,
                  size: int, waiters: list[Waiter]) -> None:
        """Unsettled lines go back in front of the ones buffered since, in their order."""
        self._waiters[:0] = waiters
        newer, self._buffer = self._buffer, dict(streams)
        for labels, (stamps, texts) in newer.items():
            column = self._buffer.get(labels)
            if column is None:
                self._buffer[labels] = (stamps, texts)
            else:
                column[0].extend(stamps)
                column[1].extend(_like(column[1], texts))  # type: ignore[arg-type]
        if lines and not self._lines:
            self._first_at = time.monotonic()
        self._lines += lines
        self._bytes += size

    async def flush(self, stop: asyncio.Event | None = None) -> None:
        """Push everything buffered; every line ends forwarded or rejected, or not delivered
        when `stop` is set first, or, when the flush is cancelled, buffered again."""
        if not self._lines:
            return
        streams, lines, size, waiters = self._take()
        settled = False
        try:
            body, headers = self._body(streams)
            headers["User-Agent"] = "aifb-collector"
            try:
                answer = await self._push(body, headers, lines, len(streams), stop)
            except NotDelivered as exc:
                settled = True
                for future, _ in waiters:
                    if not future.done():
                        future.set_exception(NotDelivered(str(exc)))
                raise
            settled = True
            for future, count in waiters:
                if not future.done():
                    future.set_result(Settled(count, answer) if answer else Settled())
        finally:
            self._sending -= lines
            if not settled:
                self._put_back(streams, lines, size, waiters)

    async def _push(self, body: bytes, headers: dict[str, str], lines: int, streams: int,
                    stop: asyncio.Event | None) -> str:
        """'' when Loki took the lines; Loki's message when it refused them for good."""
        retry = self.config.retry
        backoff = Backoff(retry.initial_seconds, retry.max_seconds, retry.multiplier)
        warned = False
        while True:
            start = time.perf_counter()
            self.stats.loki_requests += 1
            try:
                resp = await self.client.post(self.url, content=body, headers=headers,
                                              timeout=self.config.loki_timeout_seconds)
            except httpx.TransportError as exc:
                log.debug("loki push to %s failed: %s", self.url, exc)
            else:
                self.stats.loki_latency.observe(time.perf_counter() - start)
                status = resp.status_code
                if 200 <= status < 300:
                    self.stats.log_lines_forwarded += lines
                    return ""
                if status != 429 and status < 500:
                    self.stats.log_lines_remote_rejected += lines
                    message = resp.text.strip()[:500]
                    log.warning("loki rejected %d lines in %d streams (HTTP %d): %s", lines,
                                streams, status, message)
                    return f"loki refused them (HTTP {status}): {message}"
                log.debug("loki answered %d: %s", status, resp.text[:200])
            if not warned and backoff.elapsed() > retry.max_elapsed_seconds:
                warned = True
                log.error("loki push to %s has failed for %.0fs; holding %d lines (agents are "
                          "held back) and retrying", self.url,
                          self.config.retry.max_elapsed_seconds, lines)
            if not await backoff.wait(stop):
                raise NotDelivered(f"loki at {self.url} did not take {lines} lines before the "
                                   "collector stopped")
            self.stats.loki_retries += 1


def _texts(lines: Lines) -> list[str]:
    return [line.decode() if isinstance(line, bytes) else line for line in lines]


def _like(kind: Lines, lines: Sequence[str] | Sequence[bytes]) -> Lines:
    """`lines` as the same kind (str or bytes) as the non-empty column `kind`."""
    if not kind or not lines or type(kind[0]) is type(lines[0]):
        return lines  # type: ignore[return-value]
    if isinstance(kind[0], bytes):
        return [line.encode() for line in lines]  # type: ignore[union-attr]
    return [line.decode() for line in lines]  # type: ignore[union-attr]
