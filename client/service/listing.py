"""Filtering and keyset paging of benchmark lists (ListBenchmarks' `filter` and `page_token`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aifb.client.results import RunState
from aifb.client.service.model import BenchmarkRecord
from aifb.mesh.errors import InvalidArgument
from aifb.mesh.paging import check_filter_size, keyset_page

__all__ = ["page", "parse_filter"]

DEFAULT_PAGE_SIZE = 100
Check = Callable[[BenchmarkRecord], bool]


def parse_filter(text: str) -> Check:
    """'state=RUNNING workload=http label.team=ml service=services/x' -> predicate (all hold)."""
    check_filter_size(text)
    checks: list[Check] = []
    for term in text.split():
        key, sep, value = term.partition("=")
        if not sep or not value:
            raise InvalidArgument(f"bad filter term {term!r}: expected KEY=VALUE", field="filter")
        if key == "state":
            name = value.upper().removeprefix("BENCHMARK_STATE_")
            if name not in RunState.__members__:
                raise InvalidArgument(f"unknown state {value!r} in filter; valid: "
                                      f"{', '.join(RunState.__members__)}", field="filter")
            state = RunState[name]
            checks.append(lambda r, s=state: r.state is s)  # type: ignore[misc]
        elif key == "workload":
            checks.append(lambda r, v=value: r.workload == v)  # type: ignore[misc]
        elif key == "service":
            sid = value if value.startswith("services/") else f"services/{value}"
            checks.append(lambda r, v=sid: r.service == v)  # type: ignore[misc]
        elif key.startswith("label."):
            lk = key[len("label."):]
            checks.append(lambda r, k=lk, v=value: r.labels.get(k) == v)  # type: ignore[misc]
        else:
            raise InvalidArgument(f"unknown filter key {key!r}: expected state, workload, "
                                  "service or label.KEY", field="filter")
    return lambda r: all(c(r) for c in checks)


def page(records: Sequence[BenchmarkRecord], *, page_size: int, token: str, filter_text: str
         ) -> tuple[list[BenchmarkRecord], str]:
    """One page in (create_time, id) order and the token of the next ('' at the end)."""
    return keyset_page(records, size=page_size or DEFAULT_PAGE_SIZE, token=token,
                       filter_text=filter_text, accept=parse_filter(filter_text))
