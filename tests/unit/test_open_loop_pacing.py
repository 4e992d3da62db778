"""The open loop fast path: the pacer, the callback workload contract, pool waiters, histograms."""

from __future__ import annotations

import asyncio
import random
from time import perf_counter_ns

import pytest
from hdrh.histogram import HdrHistogram

from aifb.client.engine.histogram import HIGHEST_US, LatencyHistogram
from aifb.client.engine.load import run_load
from aifb.client.engine.pacer import Pacer, precise_timer_available
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.engine.workload import CallbackWorkload, Outcome, RequestSink, Workload
from aifb.client.workloads.http_client import HttpConnection, HttpError, HttpPool, HttpResponse

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("precise", [True, False])
def test_pacer_never_calls_back_before_the_armed_instant_and_once_per_arm(precise: bool) -> None:
    async def scenario() -> list[tuple[int, int]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[int, int]] = []
        wanted: list[int] = []
        done = loop.create_future()

        def on_due() -> None:
            fired.append((wanted[-1], perf_counter_ns()))
            if len(fired) == 20:
                done.set_result(None)
            else:
                wanted.append(perf_counter_ns() + random.randint(0, 3_000_000))
                pacer.arm(wanted[-1])

        pacer = Pacer(loop, on_due, precise=precise)
        assert pacer.precise == (precise and precise_timer_available())
        pacer.arm(perf_counter_ns() + 10_000_000)
        pacer.arm(perf_counter_ns() + 2_000_000)  # replaces the first: one call, not two
        wanted.append(perf_counter_ns() + 2_000_000)
        pacer.arm(wanted[-1])
        await asyncio.wait_for(done, 10)
        await asyncio.sleep(0.02)  # nothing more comes
        pacer.close()
        return fired

    fired = asyncio.run(scenario())
    assert len(fired) == 20
    assert all(at >= want for want, at in fired)


class CallbackFake:
    """A CallbackWorkload: 'writes' `write_delay_ns` after start, answers one loop turn later."""

    name = "callback-fake"

    def __init__(self, write_delay_ns: int = 0, stuck: bool = False) -> None:
        self.write_delay_ns = write_delay_ns
        self.stuck = stuck
        self.started = 0

    async def prepare(self) -> None:
        pass

    async def request(self, seq: int) -> Outcome:
        raise AssertionError("open loop must use start_request")

    def start_request(self, seq: int, intended_ns: int, sink: RequestSink) -> None:
        self.started += 1
        sink.sent(intended_ns, perf_counter_ns() + self.write_delay_ns)
        if self.stuck:
            return
        asyncio.get_running_loop().call_soon(
            lambda: sink.done(intended_ns, Outcome(ok=True, end_ns=perf_counter_ns())))

    def extra_metrics(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        pass


def test_callback_workload_is_driven_without_tasks_and_its_write_time_is_the_lag() -> None:
    wl = CallbackFake(write_delay_ns=3_000_000)
    assert isinstance(wl, CallbackWorkload) and isinstance(wl, Workload)
    spec = LoadSpec(mode=Mode.OPEN, rate=500.0, duration_s=1.0)
    res = asyncio.run(run_load(spec, wl))
    assert wl.started == 500
    assert res.counters["sent"] == res.counters["ok"] == 500 and res.counters["dropped"] == 0
    lag = res.histograms["lag"]
    assert lag.percentile_us(50) >= 3000  # the reported write, not the call
    assert res.counters["late"] == 500


def test_callback_path_counts_drops_over_max_in_flight_and_abandons_at_the_drain() -> None:
    wl = CallbackFake(stuck=True)
    spec = LoadSpec(mode=Mode.OPEN, rate=1000.0, duration_s=0.5, max_in_flight=5, drain_s=0.05)
    res = asyncio.run(run_load(spec, wl))
    assert res.counters["sent"] == 5 and res.counters["dropped"] == 495
    assert res.counters["unfinished"] == 5 and res.counters["completed"] == 0


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        pass


def test_pool_serves_coroutine_and_callback_waiters_in_order_and_fails_them_on_close() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        pool = HttpPool("127.0.0.1", 9, limit=1)
        conn = HttpConnection(loop)
        conn.connection_made(_Transport())
        pool._all.add(conn)  # one open, busy connection: the limit is reached
        order: list[str] = []
        pool.acquire_cb(lambda c: order.append(f"cb1:{type(c).__name__}"))
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        pool.acquire_cb(lambda c: order.append(f"cb2:{type(c).__name__}"))
        assert pool.queued == 3
        pool.release(conn)  # to cb1
        pool.release(conn)  # to the coroutine
        got = await waiter
        order.append(f"coro:{type(got).__name__}")
        pool.close()  # cb2 is told, not forgotten
        return order

    assert asyncio.run(scenario()) == ["cb1:HttpConnection", "coro:HttpConnection",
                                       "cb2:HttpError"]


def test_send_cb_delivers_the_response_from_data_received_and_head_cache_honours_head() -> None:
    resp = b"HTTP/1.1 200 OK\r\nX-Cache-Test: 1\r\nContent-Length: 5\r\n\r\nhello"

    async def scenario() -> list[HttpResponse | HttpError]:
        loop = asyncio.get_running_loop()
        conn = HttpConnection(loop)
        conn.connection_made(_Transport())
        got: list[HttpResponse | HttpError] = []
        for head in (False, False, True):  # the second parse comes from the cache
            conn.send_cb(b"GET / HTTP/1.1\r\n\r\n", lambda _c, r: got.append(r), head=head)
            conn.data_received(resp[:-5] if head else resp)
        conn.send_cb(b"GET / HTTP/1.1\r\n\r\n", lambda _c, r: got.append(r))
        conn.data_received(b"HTTP/1.1 200 OK\r\nX-Cache-Test: 1\r\nContent-Length: 5\r\n\r\nhe")
        conn.data_received(b"llo")
        conn.send_cb(b"GET / HTTP/1.1\r\n\r\n", lambda _c, r: got.append(r))
        conn.connection_lost(None)
        return got

    got = asyncio.run(scenario())
    assert [(r.status, r.body_len) for r in got[:4] if isinstance(r, HttpResponse)] == [
        (200, 5), (200, 5), (200, 0), (200, 5)]
    assert isinstance(got[4], HttpError) and got[4].kind == "closed"


def test_histogram_batches_fold_exactly_like_hdrh_record_value() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(rng.uniform(0, 14), 2)) - rng.choice((0, 0, 3))
              for _ in range(30_000)] + [0, 1, HIGHEST_US, HIGHEST_US * 5]
    ours = LatencyHistogram()
    reference = HdrHistogram(1, HIGHEST_US, 3)
    for v in values:
        ours.record_us(v)
        reference.record_value(min(max(v, 1), HIGHEST_US))
    assert ours.count == reference.get_total_count() == len(values)
    assert ours.min_us == reference.get_min_value() and ours.max_us == reference.get_max_value()
    for p in (0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0):
        assert ours.percentile_us(p) == reference.get_value_at_percentile(p), p
    assert ours.encode() == bytes(reference.encode())
