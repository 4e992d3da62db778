"""The Spark engine's progress hub over real loopback TCP: token check, per-second merge, cancel."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from aifb.client.engine.progress import Progress
from aifb.client.scaleout.hub import ProgressHub, ProgressLink

pytestmark = pytest.mark.integration


def _sample(second: int, requests: int) -> Progress:
    return Progress(second=second, elapsed_s=second + 1.0, phase="measure", requests=requests,
                    errors=0, achieved_rate=float(requests), target_rate=10.0, p50_s=0.0001,
                    p99_s=0.0002, lag_p99_s=0.000005, in_flight=0, total_requests=requests,
                    total_errors=0)


def _wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_hub_merges_a_second_once_every_partition_sent_it_and_flushes_the_rest() -> None:
    got: list[Progress] = []
    hub = ProgressHub(2, got.append)
    a, b = ProgressLink.connect(hub.link, 0), ProgressLink.connect(hub.link, 1)
    try:
        a.send(_sample(0, 10))
        a.send(_sample(1, 11))
        time.sleep(0.2)
        assert got == []  # partition 1 has not reported second 0 yet
        b.send(_sample(0, 5))
        _wait_for(lambda: len(got) == 1)
        assert [(s.second, s.requests, s.target_rate) for s in got] == [(0, 15, 20.0)]
    finally:
        a.close()
        b.close()
        hub.close()
    assert [(s.second, s.requests) for s in got] == [(0, 15), (1, 11)]  # the tail, on close


def test_hub_refuses_a_connection_without_the_token() -> None:
    got: list[Progress] = []
    hub = ProgressHub(1, got.append)
    try:
        with socket.create_connection(hub.address, timeout=2) as sock:
            sock.sendall(b"hello wrong-token 0\n" + b'{"second": 0}\n')
            sock.settimeout(2)
            assert sock.recv(100) == b""  # closed by the hub
        bad = ProgressLink.connect((*hub.address, "0" * 32), 0)
        bad.send(_sample(0, 99))
        bad.close()
    finally:
        hub.close()
    assert got == []


def test_cancel_reaches_the_partition_on_its_event_loop() -> None:
    hub = ProgressHub(1, lambda s: None)
    reasons: list[str] = []

    async def partition() -> None:
        link = ProgressLink.connect(hub.link, 0)
        link.on_cancel(reasons.append)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _wait_for, lambda: hub.connected == 1, 5.0)
        hub.cancel()
        for _ in range(200):
            if reasons:
                break
            await asyncio.sleep(0.01)
        link.close()

    try:
        asyncio.run(partition())
    finally:
        hub.close()
    assert reasons == ["cancelled by the driver"]
