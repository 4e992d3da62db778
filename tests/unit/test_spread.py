"""Spreading one run over a replicated service's endpoints (issue 14, part 6): round-robin
and least-outstanding picks, per-replica counts, following replicas that come and go, both
the coroutine and the callback path."""

from __future__ import annotations

import asyncio

import pytest

from aifb.client.engine.workload import Outcome
from aifb.client.workloads.registry import build_workload
from aifb.client.workloads.spread import (
    CallbackSpreadWorkload,
    SpreadWorkload,
    Targets,
    spread,
)
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit


class Fake:
    """A workload whose requests take `delay` seconds and fail when `fail` is set."""

    name = "fake"

    def __init__(self, url: str, delays: dict[str, float], down: set[str]) -> None:
        self.url, self.delays, self.down = url, delays, down
        self.closed = False

    async def prepare(self) -> None:
        if self.url in self.down:
            raise ConnectionRefusedError(f"{self.url} refused")

    async def request(self, seq: int) -> Outcome:
        await asyncio.sleep(self.delays.get(self.url, 0.0))
        return Outcome(ok=self.url not in self.down, error="" if self.url not in self.down
                       else "connect")

    def extra_metrics(self) -> dict[str, float]:
        return {"bytes": 10.0}

    async def close(self) -> None:
        self.closed = True


def _spread(urls: list[str], strategy: str = "round-robin", delays: dict[str, float] | None = None,
            down: set[str] | None = None) -> SpreadWorkload:
    made: dict[str, Fake] = {}

    def build(url: str) -> Fake:
        made[url] = Fake(url, delays or {}, down or set())
        return made[url]

    w = spread(build, Targets(tuple(urls), strategy))
    w.made = made  # type: ignore[attr-defined]
    return w


def test_round_robin_sends_each_endpoint_its_share_and_counts_them() -> None:
    async def scenario() -> dict[str, float]:
        w = _spread(["http://a/", "http://b/", "http://c/"])
        await w.prepare()
        for seq in range(300):
            assert (await w.request(seq)).ok
        await w.close()
        return w.extra_metrics()

    extra = asyncio.run(scenario())
    assert [extra[f"replica_requests:http://{x}/"] for x in "abc"] == [100, 100, 100]
    assert extra["replica_ok:http://a/"] == 100 and extra["bytes"] == 30.0


def test_least_outstanding_keeps_requests_off_the_slow_endpoint() -> None:
    async def scenario() -> dict[str, float]:
        w = _spread(["http://slow/", "http://fast/"], "least-outstanding",
                    delays={"http://slow/": 0.02, "http://fast/": 0.001})
        await w.prepare()

        async def user() -> None:  # ten users, each sending as soon as its last one ended
            for seq in range(20):
                await w.request(seq)

        await asyncio.gather(*(user() for _ in range(10)))
        await w.close()
        return w.extra_metrics()

    extra = asyncio.run(scenario())
    assert extra["replica_requests:http://fast/"] > 3 * extra["replica_requests:http://slow/"]


def test_an_endpoint_down_at_the_start_gets_nothing_and_all_down_fails() -> None:
    async def scenario() -> None:
        w = _spread(["http://a/", "http://b/"], down={"http://b/"})
        await w.prepare()
        outs = [await w.request(i) for i in range(10)]
        assert all(o.ok for o in outs)
        assert w.extra_metrics()["replica_requests:http://b/"] == 0
        dead = _spread(["http://b/"], down={"http://b/"})
        with pytest.raises(ConnectionRefusedError):
            await dead.prepare()

    asyncio.run(scenario())


def test_replicas_that_come_and_go_are_followed() -> None:
    async def scenario() -> None:
        w = _spread(["http://a/", "http://b/"])
        await w.prepare()
        w.update(["http://b/", "http://c/"])  # a went away, c came
        await asyncio.sleep(0.01)  # c prepares
        sent = [await w.request(i) for i in range(10)]
        assert all(o.ok for o in sent)
        extra = w.extra_metrics()
        assert extra["replica_requests:http://a/"] == 0
        assert extra["replica_requests:http://b/"] == extra["replica_requests:http://c/"] == 5
        assert w.made["http://a/"].closed  # type: ignore[attr-defined]
        w.update([])  # none READY: requests fail with a clear kind, nothing hangs
        assert (await w.request(99)).error == "no_ready_replica"
        await w.close()

    asyncio.run(scenario())


class Sink:
    def __init__(self) -> None:
        self.done_outcomes: list[Outcome] = []

    def sent(self, intended_ns: int, sent_ns: int) -> None:
        pass

    def done(self, intended_ns: int, outcome: Outcome) -> None:
        self.done_outcomes.append(outcome)


def test_the_http_kind_spreads_on_its_callback_path() -> None:
    async def scenario() -> None:
        w = build_workload("http", Targets(("http://127.0.0.1:1/", "http://127.0.0.1:2/")), {})
        assert isinstance(w, CallbackSpreadWorkload) and w.name == "http"
        sink = Sink()
        w.update([])
        w.start_request(0, 0, sink)
        assert sink.done_outcomes[0].error == "no_ready_replica"
        await w.close()

    asyncio.run(scenario())


def test_a_bad_strategy_or_no_endpoint_is_refused() -> None:
    with pytest.raises(InvalidArgument) as err:
        Targets(("http://a/",), "random")
    assert err.value.field == "spread"
    with pytest.raises(InvalidArgument):
        Targets(())


def test_a_replica_replaced_by_a_new_one_serves_until_the_new_one_is_connected() -> None:
    """A renewal: the list goes from [old] to [new] at once; requests keep going to the old
    replica while the new one connects, never to nobody."""
    async def scenario() -> None:
        w = _spread(["http://old/"], delays={})
        await w.prepare()
        w.update(["http://new/"])  # the new one is still connecting now
        assert (await w.request(0)).ok  # served by the old one
        await asyncio.sleep(0.01)  # connected
        assert (await w.request(1)).ok
        extra = w.extra_metrics()
        assert extra["replica_requests:http://old/"] == 1
        assert extra["replica_requests:http://new/"] == 1
        assert w.made["http://old/"].closed  # type: ignore[attr-defined]
        await w.close()

    asyncio.run(scenario())
