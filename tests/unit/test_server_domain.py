"""Pure server logic: the SLURM-state mapping, transitions, filters and paging, the poller's
backoff and one-query-per-tick rule, and the watch hub."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from aifb.mesh.errors import InvalidArgument
from aifb.server.hub import Hub
from aifb.server.jobs import JobSpec, JobStatus
from aifb.server.listing import page, parse_filter
from aifb.server.logs import MAX_LOG_TAIL, read_logs
from aifb.server.model import ServiceRecord
from aifb.server.poller import Poller, PollInterval
from aifb.server.states import ServiceState, check_transition, service_state_for_job

pytestmark = pytest.mark.unit
S = ServiceState


def _job(raw: str, reason: str = "", exit_code: int | None = None) -> JobStatus:
    return JobStatus(job_id="1", raw_state=raw, reason=reason, exit_code=exit_code)


@pytest.mark.parametrize(("raw", "current", "deleting", "expected"), [
    ("PENDING", S.PENDING, False, S.PENDING),
    ("PENDING", S.PENDING, True, S.STOPPING),
    ("RUNNING", S.PENDING, False, S.STARTING),
    ("RUNNING", S.READY, False, S.READY),         # never moves backwards
    ("RUNNING", S.READY, True, S.STOPPING),
    ("COMPLETING", S.READY, False, S.READY),
    ("COMPLETED", S.READY, False, S.STOPPED),
    ("CANCELLED", S.STOPPING, True, S.STOPPED),
    ("CANCELLED by 0", S.READY, False, S.FAILED),  # cancelled outside aifb
    ("FAILED", S.STARTING, False, S.FAILED),
    ("TIMEOUT", S.READY, False, S.FAILED),
    ("OUT_OF_MEMORY", S.READY, False, S.FAILED),
    ("NODE_FAIL", S.READY, True, S.FAILED),
])
def test_slurm_state_maps_to_service_state(raw: str, current: ServiceState, deleting: bool,
                                           expected: ServiceState) -> None:
    state, _ = service_state_for_job(_job(raw), current=current, delete_requested=deleting)
    assert state == expected


def test_failed_job_reason_keeps_state_reason_and_exit_code() -> None:
    state, why = service_state_for_job(_job("FAILED", "NonZeroExitCode", 3), current=S.READY,
                                       delete_requested=False)
    assert state == S.FAILED
    assert why == "job failed (exit code 3): NonZeroExitCode"


def test_terminal_states_allow_no_transition() -> None:
    for terminal in (S.STOPPED, S.FAILED):
        for other in S:
            assert check_transition(terminal, other) is (other == terminal)
    assert check_transition(S.READY, S.STARTING)  # a restart
    assert not check_transition(S.STOPPING, S.READY)
    assert check_transition(S.PENDING, S.READY)


def _rec(i: int, state: ServiceState = S.READY, recipe: str = "redis",
         labels: dict[str, str] | None = None) -> ServiceRecord:
    return ServiceRecord(id=f"s{i:03d}", owner="u", recipe=recipe, state=state,
                         labels=labels or {}, create_time=1000.0 + i)


def test_filter_terms_all_must_hold() -> None:
    accept = parse_filter("state=ready recipe=redis label.team=ml")
    assert accept(_rec(1, labels={"team": "ml"}))
    assert not accept(_rec(1, labels={"team": "x"}))
    assert not accept(_rec(1, S.FAILED, labels={"team": "ml"}))
    assert not accept(_rec(1, recipe="nginx", labels={"team": "ml"}))


@pytest.mark.parametrize(("text", "match"), [
    ("state=HAPPY", "unknown state 'HAPPY'"), ("color=red", "unknown filter key 'color'"),
    ("state", "expected KEY=VALUE"),
])
def test_bad_filter_is_invalid_argument_naming_the_term(text: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        parse_filter(text)
    assert info.value.field == "filter"


def test_paging_walks_every_record_once_even_when_records_are_added() -> None:
    records = [_rec(i) for i in range(25)]
    seen: list[str] = []
    token = ""
    for _ in range(10):
        result = page(records, page_size=10, token=token, filter_text="")
        seen.extend(r.id for r in result.items)
        records.append(_rec(100 + len(seen)))  # new ones appear after the cursor
        token = result.next_token
        if not token:
            break
    assert seen[:25] == [f"s{i:03d}" for i in range(25)]
    assert len(seen) == len(set(seen))


def test_page_token_from_another_filter_is_rejected() -> None:
    records = [_rec(i) for i in range(5)]
    token = page(records, page_size=2, token="", filter_text="").next_token
    with pytest.raises(InvalidArgument, match="page_token"):
        page(records, page_size=2, token=token, filter_text="recipe=redis")
    with pytest.raises(InvalidArgument, match="page_size"):
        page(records, page_size=5000, token="", filter_text="")


def test_logs_are_the_last_bytes_of_each_file_and_say_when_cut(tmp_path: Path) -> None:
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    out.write_bytes(b"a" * 10 + b"tail\xff")  # an invalid byte is replaced, not an error
    err.write_text("short")
    record = ServiceRecord(id="s1", owner="u", recipe="redis", state=S.READY, stdout_path=str(out),
                           stderr_path=str(err))
    logs = read_logs(record, 5)
    assert (logs.stdout, logs.stderr, logs.truncated) == ("tail\ufffd", "short", True)
    whole = read_logs(record, 0)  # 0: the default tail, which holds both whole
    assert (whole.stdout, whole.truncated) == ("a" * 10 + "tail\ufffd", False)
    one_file = ServiceRecord(id="s2", owner="u", recipe="redis", state=S.READY,
                             stdout_path=str(err), stderr_path=str(err))
    assert read_logs(one_file, 0).stderr == ""  # one file: shown once
    gone = ServiceRecord(id="s3", owner="u", recipe="redis", state=S.READY,
                         stdout_path=str(tmp_path / "never-written"))
    none = ServiceRecord(id="s4", owner="u", recipe="r", state=S.READY)
    assert read_logs(gone, 0) == read_logs(none, 0)


@pytest.mark.parametrize("tail_bytes", [-1, MAX_LOG_TAIL + 1])
def test_a_log_tail_out_of_bounds_is_refused_naming_the_field(tail_bytes: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        read_logs(ServiceRecord(id="s1", owner="u", recipe="redis", state=S.READY), tail_bytes)
    assert exc.value.field == "tail_bytes"


def test_backoff_grows_while_idle_and_snaps_back_when_busy() -> None:
    b = PollInterval(fast=0.5, slow=5.0, factor=2.0)
    assert [b.next(busy=False) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert b.next(busy=True) == 0.5


class CountingScheduler:
    name = "counting"

    def __init__(self) -> None:
        self.queries: list[list[str]] = []

    async def submit(self, spec: JobSpec, script: str) -> str:
        raise NotImplementedError

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        self.queries.append(list(job_ids))
        return {j: JobStatus(job_id=j, raw_state="RUNNING") for j in job_ids}

    async def cancel(self, job_id: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("n", [1, 50, 200])
def test_one_scheduler_query_per_tick_whatever_the_number_of_jobs(n: int) -> None:
    sched = CountingScheduler()
    applied: list[int] = []

    async def apply(statuses: dict[str, JobStatus], asked: Sequence[str]) -> bool:
        applied.append(len(statuses))
        return False

    poller = Poller(sched, lambda: [str(i) for i in range(n)], apply, PollInterval(0.1, 1.0))
    for _ in range(3):
        asyncio.run(poller.tick())
    assert len(sched.queries) == 3
    assert all(len(q) == n for q in sched.queries)
    assert applied == [n, n, n]


def test_no_query_when_nothing_is_active() -> None:
    sched = CountingScheduler()

    async def apply(statuses: dict[str, JobStatus], asked: Sequence[str]) -> bool:
        return False

    poller = Poller(sched, list, apply, PollInterval(0.1, 1.0))
    assert asyncio.run(poller.tick()) is False
    assert sched.queries == []


def test_the_poller_stops_even_when_woken_as_it_is_cancelled() -> None:
    """A delete wakes the poller as the server stops: on Python 3.11 `wait_for` could swallow
    that cancellation and the stop waited forever (seen in the restart tests' teardown)."""
    sched = CountingScheduler()

    async def apply(statuses: dict[str, JobStatus], asked: Sequence[str]) -> bool:
        return False

    async def scenario() -> None:
        for i in range(200):
            poller = Poller(sched, list, apply, PollInterval(0.001, 0.002))
            poller.start()
            await asyncio.sleep(0.001 * (i % 4))
            poller.wake()
            await asyncio.wait_for(poller.stop(), 10)

    asyncio.run(scenario())


def test_hub_delivers_every_transition_in_order_and_closes_streams() -> None:
    async def scenario() -> list[list[int]]:
        hub = Hub()
        subs = [hub.subscribe(lambda r: r.id == "s001") for _ in range(3)]
        other = hub.subscribe(lambda r: r.id == "zzz")
        for state in (S.PENDING, S.STARTING, S.READY, S.STOPPING, S.STOPPED):
            hub.publish(_rec(1, state))
        hub.close()
        out = []
        for sub in subs:
            out.append([int(r.state) async for r in hub.iterate(sub)])
        assert [r async for r in hub.iterate(other)] == []
        return out

    assert asyncio.run(scenario()) == [[1, 2, 3, 4, 5]] * 3


def test_hub_collapses_a_slow_subscribers_backlog_to_the_latest_state() -> None:
    async def scenario() -> list[tuple[str, int]]:
        hub = Hub(max_backlog=4)
        sub = hub.subscribe(lambda r: True)
        for i in range(3):
            for state in (S.PENDING, S.STARTING, S.READY):
                hub.publish(_rec(i, state))
        hub.close()
        assert sub.collapsed >= 1
        return [(r.id, int(r.state)) async for r in hub.iterate(sub)]

    final = dict(asyncio.run(scenario()))
    assert final == {"s000": 3, "s001": 3, "s002": 3}
