"""One benchmark over several endpoints: the replicas of a replicated service.

`Targets` (picklable: it travels to worker processes and Spark partitions like a URL) names the
endpoints and how requests are spread over them: `round-robin` (each endpoint in turn) or
`least-outstanding` (the endpoint with the fewest requests in flight; ties in turn). A
`SpreadWorkload` holds one workload of the run's kind per endpoint (so every kind spreads: http,
openai-*, vectordb) and sends each request through the one it picks. `update(urls)` follows the
service live: a new endpoint is prepared and starts getting requests; one that went away gets
no new request, and closes once its last one has ended. Each endpoint's requests, successes and
errors are counted into `extra_metrics()` as `replica_requests:<url>`, `replica_ok:<url>`,
`replica_errors:<url>` (summed over partitions like every extra figure), beside the inner
workloads' own extras, summed. A multi-turn session (`aifb.client.engine.sessions`) stays on
the endpoint it started on, where its prefix is cached; if that endpoint goes away, its next
turn fails (`replica_gone`) and the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aifb.client.engine.sessions import Session, SessionWorkload
from aifb.client.engine.workload import (
    CallbackWorkload,
    Outcome,
    RequestSink,
    WarmWorkload,
    Workload,
)
from aifb.mesh.errors import InvalidArgument

__all__ = ["STRATEGIES", "CallbackSpreadWorkload", "SpreadWorkload", "Targets", "spread"]

log = logging.getLogger(__name__)

STRATEGIES = ("round-robin", "least-outstanding")
MAX_ENDPOINTS = 1000


@dataclass(frozen=True, slots=True)
class Targets:
    urls: tuple[str, ...]
    strategy: str = "round-robin"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InvalidArgument(f"spread must be one of {', '.join(STRATEGIES)}, got "
                                  f"{self.strategy!r}", field="spread")
        if not 1 <= len(self.urls) <= MAX_ENDPOINTS:
            raise InvalidArgument(f"1..{MAX_ENDPOINTS} endpoints, got {len(self.urls)}",
                                  field="service")

    @property
    def first(self) -> str:
        return self.urls[0]


@dataclass
class _Endpoint:
    url: str
    workload: Workload
    active: bool = True
    ready: bool = False
    leaving: bool = False  # gone from the list, still used until a newcomer is ready
    outstanding: int = 0
    requests: int = 0
    ok: int = 0
    errors: int = 0
    closed: bool = False


class _Counted:
    """A sink that counts the request against its endpoint before passing it on."""

    __slots__ = ("endpoint", "owner", "sink")

    def __init__(self, owner: SpreadWorkload, endpoint: _Endpoint, sink: RequestSink) -> None:
        self.owner, self.endpoint, self.sink = owner, endpoint, sink

    def sent(self, intended_ns: int, sent_ns: int) -> None:
        self.sink.sent(intended_ns, sent_ns)

    def done(self, intended_ns: int, outcome: Outcome) -> None:
        self.owner._ended(self.endpoint, outcome)
        self.sink.done(intended_ns, outcome)


@dataclass
class SpreadWorkload:
    """Implements Workload (and WarmWorkload); see the module."""

    build: Callable[[str], Workload]
    targets: Targets
    first: Workload | None = None  # already built for targets.first (its kind was probed)
    name: str = field(init=False, default="")
    endpoints: list[_Endpoint] = field(default_factory=list)
    _turn: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # The endpoints a request may go to, worked out when they change, not per request.
    _live: list[_Endpoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        made = self.first or self.build(self.targets.first)
        self.name = made.name
        self.endpoints = [_Endpoint(self.targets.first, made)]
        self.endpoints += [_Endpoint(u, self.build(u)) for u in dict.fromkeys(self.targets.urls)
                           if u != self.targets.first]

    async def prepare(self) -> None:
        """Prepare every endpoint; the run starts if at least one is reachable."""
        results = await asyncio.gather(*(e.workload.prepare() for e in self.endpoints),
                                       return_exceptions=True)
        failed = [(e, r) for e, r in zip(self.endpoints, results, strict=True)
                  if isinstance(r, BaseException)]
        for endpoint, exc in failed:
            log.warning("replica %s is not reachable; it gets no requests: %s", endpoint.url,
                        exc)
            endpoint.active = False
        if len(failed) == len(self.endpoints):
            raise failed[0][1]
        for endpoint in self.endpoints:
            endpoint.ready = endpoint.active
        self._refresh()

    def _refresh(self) -> None:
        """Recompute the pickable endpoints: the connected ones still wanted, or while none
        is (make before break), the connected ones leaving."""
        usable = [e for e in self.endpoints if e.active and e.ready]
        self._live = [e for e in usable if not e.leaving] or usable

    async def warm(self) -> None:
        await asyncio.gather(*(e.workload.warm() for e in self.endpoints
                               if e.ready and isinstance(e.workload, WarmWorkload)))

    def _pick(self) -> _Endpoint | None:
        live = self._live
        if not live:
            return None
        self._turn += 1
        if self.targets.strategy == "least-outstanding":
            low = min(e.outstanding for e in live)
            live = [e for e in live if e.outstanding == low]
        return live[self._turn % len(live)]

    def _ended(self, endpoint: _Endpoint, outcome: Outcome) -> None:
        endpoint.outstanding -= 1
        if outcome.ok:
            endpoint.ok += 1
        else:
            endpoint.errors += 1
        if not endpoint.active and endpoint.outstanding == 0:
            self._close_later(endpoint)

    async def request(self, seq: int) -> Outcome:
        endpoint = self._pick()
        if endpoint is None:
            return Outcome(ok=False, error="no_ready_replica")
        endpoint.outstanding += 1
        endpoint.requests += 1
        outcome = Outcome(ok=False, error="exception")
        try:
            outcome = await endpoint.workload.request(seq)
            return outcome
        finally:
            self._ended(endpoint, outcome)

    @property
    def multi_turn(self) -> bool:
        inner = self.endpoints[0].workload
        return isinstance(inner, SessionWorkload) and inner.multi_turn

    def session(self, number: int) -> Session:
        """Session `number` on the endpoint picked now, for all its turns."""
        endpoint = self._pick()
        inner = endpoint.workload if endpoint is not None else None
        if endpoint is None or not isinstance(inner, SessionWorkload):
            return _PinnedSession(self, None, None)
        return _PinnedSession(self, endpoint, inner.session(number))

    def update(self, urls: Sequence[str]) -> None:
        """Follow the service: `urls` are its READY replicas now (call on the run's loop)."""
        wanted = list(dict.fromkeys(urls))[:MAX_ENDPOINTS]
        known = {e.url: e for e in self.endpoints if not e.closed}
        serving = any(known[u].active and known[u].ready for u in wanted if u in known)
        for endpoint in known.values():
            if endpoint.url not in wanted and endpoint.active:
                endpoint.leaving = True  # a renewal: the successor may still be connecting
                if serving or not wanted:
                    self._leave(endpoint)
        for url in wanted:
            old = known.get(url)
            if old is not None and old.active:
                old.leaving = False
                continue
            if old is not None and old.ready and not old.closed:
                old.active = True  # back before it was closed
                continue
            try:
                endpoint = _Endpoint(url, self.build(url), ready=False)
            except InvalidArgument as exc:
                log.warning("replica %s cannot be used: %s", url, exc)
                continue
            self.endpoints.append(endpoint)
            self._spawn(self._join(endpoint))
        self._refresh()

    async def _join(self, endpoint: _Endpoint) -> None:
        try:
            await endpoint.workload.prepare()
            if isinstance(endpoint.workload, WarmWorkload):
                await endpoint.workload.warm()
        except Exception as exc:
            log.warning("replica %s is not reachable yet: %s", endpoint.url, exc)
            endpoint.active = False
            self._refresh()
            return
        log.info("replica %s joined", endpoint.url)
        endpoint.ready = True
        for gone in [e for e in self.endpoints if e.leaving and e.active]:
            self._leave(gone)
        self._refresh()

    def _leave(self, endpoint: _Endpoint) -> None:
        log.info("replica %s went away: no new requests", endpoint.url)
        endpoint.active = False
        self._refresh()
        if endpoint.outstanding == 0:
            self._close_later(endpoint)

    def _close_later(self, endpoint: _Endpoint) -> None:
        if not endpoint.closed:
            endpoint.closed = True
            self._spawn(endpoint.workload.close())

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def extra_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for endpoint in self.endpoints:
            with contextlib.suppress(Exception):
                for key, value in endpoint.workload.extra_metrics().items():
                    out[key] = out.get(key, 0.0) + value
        for endpoint in self.endpoints:
            for key, value in (("replica_requests", endpoint.requests),
                               ("replica_ok", endpoint.ok),
                               ("replica_errors", endpoint.errors)):
                name = f"{key}:{endpoint.url}"
                out[name] = out.get(name, 0.0) + value
        return out

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for endpoint in self.endpoints:
            if not endpoint.closed:
                endpoint.closed = True
                with contextlib.suppress(Exception):
                    await endpoint.workload.close()


class _PinnedSession:
    """A session kept on one endpoint (a Session; with none, its one turn fails)."""

    __slots__ = ("endpoint", "inner", "owner")

    def __init__(self, owner: SpreadWorkload, endpoint: _Endpoint | None,
                 inner: Session | None) -> None:
        self.owner, self.endpoint, self.inner = owner, endpoint, inner

    @property
    def turns(self) -> int:
        return self.inner.turns if self.inner is not None else 1

    def think_ns(self, turn: int) -> int:
        return self.inner.think_ns(turn) if self.inner is not None else 0

    async def request(self, turn: int) -> Outcome:
        endpoint, inner = self.endpoint, self.inner
        if endpoint is None or inner is None:
            return Outcome(ok=False, error="no_ready_replica")
        if endpoint.closed:
            return Outcome(ok=False, error="replica_gone")
        endpoint.outstanding += 1
        endpoint.requests += 1
        outcome = Outcome(ok=False, error="exception")
        try:
            outcome = await inner.request(turn)
            return outcome
        finally:
            self.owner._ended(endpoint, outcome)


class CallbackSpreadWorkload(SpreadWorkload):
    """The same over workloads that send from a callback (CallbackWorkload)."""

    def start_request(self, seq: int, intended_ns: int, sink: RequestSink) -> None:
        endpoint = self._pick()
        if endpoint is None:
            from time import perf_counter_ns

            now = perf_counter_ns()
            sink.sent(intended_ns, now)
            sink.done(intended_ns, Outcome(False, "no_ready_replica", end_ns=now))
            return
        endpoint.outstanding += 1
        endpoint.requests += 1
        workload = endpoint.workload
        assert isinstance(workload, CallbackWorkload)
        workload.start_request(seq, intended_ns, _Counted(self, endpoint, sink))


def spread(build: Callable[[str], Workload], targets: Targets) -> SpreadWorkload:
    """A SpreadWorkload, with the callback path when the run's kind has one."""
    first = build(targets.first)
    cls = CallbackSpreadWorkload if isinstance(first, CallbackWorkload) else SpreadWorkload
    return cls(build, targets, first)
