"""Live progress from Spark executors to the driver, and a graceful cancel back, over one TCP link.

Spark has no channel from a running Python task to the driver (accumulators arrive when a task
ends), so the driver opens a small hub: a TCP listener on the driver's address with a random
token. Each partition connects, says `hello <token> <partition>`, then sends one JSON
`Progress` per interval; the hub merges second k once every partition has sent it and calls
`on_progress` with the sum (counts and rates add; p50/p99/lag p99 are the worst partition's, an
upper bound: the final result's percentiles are exact). `cancel()` writes `cancel` to every
partition, whose engine then stops like an in-process run: CANCELLED, statistics kept.
A link that cannot connect or write only loses live progress; the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import selectors
import socket
import threading
from collections.abc import Callable

from aifb.client.engine.progress import Progress

__all__ = ["ProgressHub", "ProgressLink", "merge_samples"]

log = logging.getLogger(__name__)
_MAX_LINE = 65_536


def merge_samples(samples: list[Progress]) -> Progress:
    """One interval over all partitions: sums, and the worst partition's percentiles."""
    first = samples[0]
    return Progress(
        second=first.second, elapsed_s=max(s.elapsed_s for s in samples), phase=first.phase,
        requests=sum(s.requests for s in samples), errors=sum(s.errors for s in samples),
        dropped=sum(s.dropped for s in samples),
        cancelled=sum(s.cancelled for s in samples),
        total_cancelled=sum(s.total_cancelled for s in samples),
        achieved_rate=round(sum(s.achieved_rate for s in samples), 2),
        target_rate=round(sum(s.target_rate for s in samples), 3),
        p50_s=max(s.p50_s for s in samples), p99_s=max(s.p99_s for s in samples),
        lag_p99_s=max(s.lag_p99_s for s in samples),
        in_flight=sum(s.in_flight for s in samples),
        total_requests=sum(s.total_requests for s in samples),
        total_errors=sum(s.total_errors for s in samples))


class ProgressHub:
    """The driver's end: accepts partitions' links, merges their samples, broadcasts cancel."""

    def __init__(self, partitions: int, on_progress: Callable[[Progress], None],
                 host: str = "127.0.0.1") -> None:
        self.partitions = partitions
        self.token = secrets.token_hex(16)
        self._on_progress = on_progress
        self._sel = selectors.DefaultSelector()
        self._server = socket.create_server((host, 0))
        self._server.setblocking(False)
        self.address = (host, int(self._server.getsockname()[1]))
        self._sel.register(self._server, selectors.EVENT_READ)
        self._conns: dict[socket.socket, bytearray] = {}
        self._authed: dict[socket.socket, int] = {}
        self._pending: dict[int, dict[int, Progress]] = {}
        self._next = 0  # the next second to emit
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="aifb-spark-progress",
                                        daemon=True)
        self._thread.start()

    @property
    def link(self) -> tuple[str, int, str]:
        return (*self.address, self.token)

    @property
    def connected(self) -> int:
        """Partitions linked with the right token."""
        with self._lock:
            return len(self._authed)

    def cancel(self) -> None:
        self._broadcast(b"cancel\n")

    def endpoints(self, urls: list[str]) -> None:
        """Tell every partition the endpoints to spread over from now on (a replicated
        service's READY replicas)."""
        self._broadcast(b"endpoints " + json.dumps(urls).encode() + b"\n")

    def _broadcast(self, line: bytes) -> None:
        with self._lock:
            for conn in list(self._authed):
                with contextlib.suppress(OSError):
                    conn.sendall(line)

    def close(self) -> None:
        """Stop serving and emit what is left (seconds some partition never sent)."""
        self._closing = True
        self._thread.join(timeout=5)
        for _ in range(1000):  # what partitions sent just before they ended
            events = self._sel.select(timeout=0)
            if not events:
                break
            for key, _ in events:
                sock = key.fileobj
                if isinstance(sock, socket.socket) and sock is not self._server:
                    self._read(sock)
        for conn in list(self._conns):
            self._drop(conn)
        self._sel.close()
        self._server.close()
        self._emit_ready(final=True)

    def _serve(self) -> None:
        while not self._closing:
            for key, _ in self._sel.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._server:
                    with contextlib.suppress(OSError):
                        conn, _ = self._server.accept()
                        conn.setblocking(False)
                        self._conns[conn] = bytearray()
                        self._sel.register(conn, selectors.EVENT_READ)
                else:
                    self._read(sock)

    def _drop(self, conn: socket.socket) -> None:
        with self._lock:
            self._authed.pop(conn, None)
        self._conns.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn)
        conn.close()

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65_536)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buf = self._conns[conn]
        buf += data
        while (nl := buf.find(b"\n")) >= 0:
            line = bytes(buf[:nl])
            del buf[:nl + 1]
            if not self._line(conn, line):
                self._drop(conn)
                return
        if len(buf) > _MAX_LINE:
            self._drop(conn)

    def _line(self, conn: socket.socket, line: bytes) -> bool:
        part = self._authed.get(conn)
        if part is None:
            words = line.split()
            if (len(words) != 3 or words[0] != b"hello" or not secrets.compare_digest(
                    words[1], self.token.encode()) or not words[2].isdigit()):
                log.warning("progress hub: a connection without the run's token was refused")
                return False
            with self._lock:
                self._authed[conn] = int(words[2])
            return True
        try:
            sample = Progress.from_dict(json.loads(line))
        except (ValueError, TypeError) as exc:
            log.warning("progress hub: bad sample from partition %d: %s", part, exc)
            return False
        self._pending.setdefault(sample.second, {})[part] = sample
        self._emit_ready(final=False)
        return True

    def _emit_ready(self, *, final: bool) -> None:
        while self._pending:
            second = min(self._pending)
            got = self._pending[second]
            if len(got) < self.partitions and not final:
                return
            del self._pending[second]
            if second < self._next:
                continue
            self._next = second + 1
            try:
                self._on_progress(merge_samples([got[k] for k in sorted(got)]))
            except Exception as exc:
                log.warning("progress callback failed: %s", exc)


_MAX_LINE = 4 * 1024 * 1024  # an endpoints line: 1000 URLs of 2048 characters fit


class ProgressLink:
    """A partition's end: sends samples, and calls back when the driver asks to cancel."""

    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock
        self._cancel: Callable[[str], None] | None = None
        self._endpoints: Callable[[list[str]], None] | None = None
        self._buffer = b""

    @classmethod
    def connect(cls, address: tuple[str, int, str], partition: int) -> ProgressLink:
        host, port, token = address
        try:
            sock = socket.create_connection((host, port), timeout=2.0)
            sock.sendall(f"hello {token} {partition}\n".encode())
        except OSError as exc:
            log.warning("no live progress: cannot reach the driver at %s:%d: %s", host, port, exc)
            return cls(None)
        sock.settimeout(0.5)
        return cls(sock)

    def send(self, sample: Progress) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendall(json.dumps(sample.to_dict()).encode() + b"\n")
        except OSError as exc:
            log.warning("live progress lost: %s", exc)
            self.close()

    def on_cancel(self, callback: Callable[[str], None],
                  endpoints: Callable[[list[str]], None] | None = None) -> None:
        """Watch the link on the running event loop: `cancel` from the driver calls back, and
        `endpoints [...]` calls `endpoints` with the list."""
        if self._sock is None:
            return
        self._cancel = callback
        self._endpoints = endpoints
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(65536)
        except OSError:
            data = b""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > _MAX_LINE:
            self._buffer = b""  # not the driver's: drop it
        for line in lines:
            if line == b"cancel" and self._cancel is not None:
                self._cancel("cancelled by the driver")
            elif line.startswith(b"endpoints ") and self._endpoints is not None:
                try:
                    urls = json.loads(line[len(b"endpoints "):])
                except ValueError:
                    continue
                if isinstance(urls, list) and all(isinstance(u, str) for u in urls):
                    self._endpoints(urls)
        if not data:
            self.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
