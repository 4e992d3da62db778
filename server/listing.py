"""Filtering and paging of service lists (the `filter` and `page_token` of List/Watch RPCs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aifb.mesh import paging
from aifb.mesh.paging import check_page_size, keyset_page
from aifb.server.model import ServiceRecord
from aifb.server.states import ServiceState

__all__ = ["Page", "page", "parse_filter"]

DEFAULT_PAGE_SIZE = 100


def parse_filter(text: str) -> Callable[[ServiceRecord], bool]:
    """'state=READY recipe=redis label.team=ml' -> predicate (all terms must hold)."""
    return paging.parse_filter(text, {
        "state": paging.enum_term(ServiceState, "SERVICE_STATE_", lambda r: r.state),
        "recipe": lambda v: lambda r: r.recipe == v,
    }, labels=lambda r: r.labels)


@dataclass(frozen=True)
class Page:
    items: list[ServiceRecord]
    next_token: str


def page(records: Sequence[ServiceRecord], *, page_size: int, token: str,
         filter_text: str) -> Page:
    """Keyset paging on (create_time, id): stable while services are being added."""
    check_page_size(page_size)
    items, next_token = keyset_page(records, size=page_size or DEFAULT_PAGE_SIZE, token=token,
                                    filter_text=filter_text, accept=parse_filter(filter_text))
    return Page(items, next_token)
