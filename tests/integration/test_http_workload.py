"""The http workload against a real nginx: closed and open loop, rates, percentiles, errors."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import pytest

from aifb.client.engine.load import run_load
from aifb.client.engine.results import RunState
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.workloads.http import HttpTarget, HttpWorkload
from aifb.mesh.errors import InvalidArgument

if TYPE_CHECKING:
    from tests.fixtures.nginx import NginxServer

pytestmark = pytest.mark.integration


def test_closed_loop_completes_every_request_over_its_keepalive_connections(
        nginx: NginxServer) -> None:
    wl = HttpWorkload(HttpTarget(nginx.base_url, path="/hello", connections=4))
    res = asyncio.run(run_load(LoadSpec(mode=Mode.CLOSED, users=4, duration_s=1.0), wl))
    assert res.state is RunState.SUCCEEDED, res.reason
    assert res.counters["ok"] == res.counters["completed"] > 100
    assert res.counters["errors"] == 0
    assert res.extra["connections_opened"] == 4  # keep-alive: no reconnects
    assert res.extra["response_body_bytes"] == 6 * res.counters["ok"] + 6 * res.counters[
        "excluded"]
    assert len(nginx.request_times_ms()) == res.counters["sent"]


def test_open_loop_opens_connections_ahead_and_closed_loop_one_per_user(
        nginx: NginxServer) -> None:
    """An open loop warms the pool (a connect mid-run would count as schedule lag); a closed
    loop opens only as many connections as it has users."""
    wl = HttpWorkload(HttpTarget(nginx.base_url, path="/hello", connections=8))
    res = asyncio.run(run_load(LoadSpec(mode=Mode.OPEN, rate=20, duration_s=0.5), wl))
    assert res.state is RunState.SUCCEEDED, res.reason
    assert res.extra["connections_opened"] == 8
    assert res.extra["connection_waits"] == 0
    wl = HttpWorkload(HttpTarget(nginx.base_url, path="/hello", connections=8))
    res = asyncio.run(run_load(LoadSpec(mode=Mode.CLOSED, users=2, duration_s=0.5), wl))
    assert res.state is RunState.SUCCEEDED, res.reason
    assert res.extra["connections_opened"] == 2


def test_open_loop_achieves_its_target_rate_within_one_percent_with_sane_latency(
        nginx: NginxServer) -> None:
    spec = LoadSpec(mode=Mode.OPEN, rate=400.0, duration_s=3.0, warmup_s=0.5, cooldown_s=0.5)
    wl = HttpWorkload(HttpTarget(nginx.base_url, path="/hello?i={seq}", connections=32))
    res = asyncio.run(run_load(spec, wl))
    assert res.state is RunState.SUCCEEDED, res.reason
    assert res.counters["dropped"] == res.counters["errors"] == 0
    assert res.achieved_rate == pytest.approx(400.0, rel=0.01)
    lat = res.histograms["latency"]
    assert lat.count == 800
    assert 0 < lat.percentile_us(50) < 5_000  # loopback: well under a few ms
    assert lat.percentile_us(50) <= lat.percentile_us(99) <= lat.max_us
    nginx_ms = sorted(nginx.request_times_ms())
    assert len(nginx_ms) == 1200  # warm-up and cool-down requests were sent too
    assert lat.max_us >= nginx_ms[-1] * 1000  # never below the server's own time
    assert lat.percentile_us(50) >= nginx_ms[len(nginx_ms) // 2] * 1000
    assert res.histograms["service"].percentile_us(50) <= lat.percentile_us(50) + 1


def test_templated_path_sends_each_request_number(nginx: NginxServer) -> None:
    wl = HttpWorkload(HttpTarget(nginx.base_url, path="/hello?i={seq}", connections=2))
    res = asyncio.run(run_load(LoadSpec(users=2, duration_s=5.0, max_requests=50), wl))
    assert res.counters["ok"] == 50
    uris = (nginx.root / "access.log").read_text().split()
    assert sorted(int(u.split("=")[1]) for u in uris if "?i=" in u) == list(range(50))


def test_http_error_statuses_are_errors_of_their_kind(nginx: NginxServer) -> None:
    wl = HttpWorkload(HttpTarget(nginx.base_url, path="/missing", connections=2))
    res = asyncio.run(run_load(LoadSpec(users=2, duration_s=5.0, max_requests=20), wl))
    assert res.counters["errors"] == 20 and res.counters["ok"] == 0
    assert res.errors_by_kind == {"status_404": 20}


def test_a_target_with_nothing_listening_fails_the_run_at_prepare() -> None:
    with socket.socket() as s:  # a port that is bound but not listening refuses connections
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        wl = HttpWorkload(HttpTarget(f"http://127.0.0.1:{port}"))
        res = asyncio.run(run_load(LoadSpec(duration_s=1.0), wl))
    assert res.state is RunState.FAILED
    assert "prepare failed" in res.reason and str(port) in res.reason


def test_target_validation_names_the_field() -> None:
    for kwargs, fld in (({"base_url": "https://x"}, "target.base_url"),
                        ({"base_url": "http://x", "path": "nope"}, "target.path"),
                        ({"base_url": "http://x", "method": "BREW"}, "target.method"),
                        ({"base_url": "http://x", "headers": {"a": "b\r\nc: d"}},
                         "target.headers.a")):
        with pytest.raises(InvalidArgument) as err:
            HttpTarget(**kwargs)  # type: ignore[arg-type]
        assert err.value.field == fld
