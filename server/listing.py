"""Filtering and paging of service lists (the `filter` and `page_token` of List/Watch RPCs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aifb.mesh.errors import InvalidArgument
from aifb.mesh.paging import check_filter_size, check_page_size, keyset_page
from aifb.server.model import ServiceRecord
from aifb.server.states import ServiceState

__all__ = ["Page", "page", "parse_filter"]

DEFAULT_PAGE_SIZE = 100


def _state_is(state: ServiceState) -> Callable[[ServiceRecord], bool]:
    return lambda r: r.state == state


def _recipe_is(recipe: str) -> Callable[[ServiceRecord], bool]:
    return lambda r: r.recipe == recipe


def _label_is(key: str, value: str) -> Callable[[ServiceRecord], bool]:
    return lambda r: r.labels.get(key) == value


def parse_filter(text: str) -> Callable[[ServiceRecord], bool]:
    """'state=READY recipe=redis label.team=ml' -> predicate (all terms must hold)."""
    check_filter_size(text)
    checks: list[Callable[[ServiceRecord], bool]] = []
    for term in text.split():
        key, sep, value = term.partition("=")
        if not sep or not value:
            raise InvalidArgument(f"bad filter term {term!r}: expected KEY=VALUE", field="filter")
        if key == "state":
            name = value.upper().removeprefix("SERVICE_STATE_")
            if name not in ServiceState.__members__:
                valid = ", ".join(ServiceState.__members__)
                raise InvalidArgument(f"unknown state {value!r} in filter; valid: {valid}",
                                      field="filter")
            checks.append(_state_is(ServiceState[name]))
        elif key == "recipe":
            checks.append(_recipe_is(value))
        elif key.startswith("label."):
            checks.append(_label_is(key[len("label."):], value))
        else:
            raise InvalidArgument(
                f"unknown filter key {key!r}: expected state, recipe or label.KEY",
                field="filter")
    return lambda r: all(c(r) for c in checks)


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
