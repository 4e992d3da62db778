"""Filtering and keyset paging of benchmark lists (ListBenchmarks' `filter` and `page_token`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence

from aifb.client.results import RunState
from aifb.client.service.model import BenchmarkRecord
from aifb.mesh.errors import InvalidArgument

__all__ = ["page", "parse_filter"]

DEFAULT_PAGE_SIZE = 100
Check = Callable[[BenchmarkRecord], bool]


def parse_filter(text: str) -> Check:
    """'state=RUNNING workload=http label.team=ml service=services/x' -> predicate (all hold)."""
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


def _token(record: BenchmarkRecord, filter_text: str) -> str:
    raw = json.dumps([record.create_time, record.id, filter_text]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(token: str, filter_text: str) -> tuple[float, str]:
    try:
        created, rid, old = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if old != filter_text:
            raise ValueError("filter changed")
        return float(created), str(rid)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument("bad page_token (it must come from the previous response with "
                              "the same filter)", field="page_token") from exc


def page(records: Sequence[BenchmarkRecord], *, page_size: int, token: str, filter_text: str
         ) -> tuple[list[BenchmarkRecord], str]:
    """One page in (create_time, id) order and the token of the next ('' at the end)."""
    size = page_size or DEFAULT_PAGE_SIZE
    accept = parse_filter(filter_text)
    after = _after(token, filter_text) if token else None
    out: list[BenchmarkRecord] = []
    for record in sorted(records, key=lambda r: (r.create_time, r.id)):
        if after is not None and (record.create_time, record.id) <= after:
            continue
        if not accept(record):
            continue
        if len(out) == size:
            return out, _token(out[-1], filter_text)
        out.append(record)
    return out, ""
