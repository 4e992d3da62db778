"""Filtering and keyset paging of benchmark lists (ListBenchmarks' `filter` and `page_token`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aifb.client.engine.results import RunState
from aifb.client.runs.record import BenchmarkRecord
from aifb.mesh import paging
from aifb.mesh.paging import keyset_page

__all__ = ["page", "parse_filter"]

DEFAULT_PAGE_SIZE = 100
Check = Callable[[BenchmarkRecord], bool]


def parse_filter(text: str) -> Check:
    """'state=RUNNING workload=http label.team=ml service=services/x' -> predicate (all hold)."""
    def service_is(value: str) -> Check:
        sid = value if value.startswith("services/") else f"services/{value}"
        return lambda r: r.service == sid

    return paging.parse_filter(text, {
        "state": paging.enum_term(RunState, "BENCHMARK_STATE_", lambda r: r.state),
        "workload": lambda v: lambda r: r.workload == v,
        "service": service_is,
    }, labels=lambda r: r.labels)


def page(records: Sequence[BenchmarkRecord], *, page_size: int, token: str, filter_text: str
         ) -> tuple[list[BenchmarkRecord], str]:
    """One page in (create_time, id) order and the token of the next ('' at the end)."""
    return keyset_page(records, size=page_size or DEFAULT_PAGE_SIZE, token=token,
                       filter_text=filter_text, accept=parse_filter(filter_text))
