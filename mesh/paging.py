"""Keyset paging for the List RPCs: pages in (create_time, id) order, stable while records are
added, with an opaque page token bound to the filter it was issued for."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Protocol, TypeVar

from aifb.mesh.bounds import check_text
from aifb.mesh.errors import InvalidArgument

__all__ = ["MAX_FILTER_CHARS", "MAX_PAGE_SIZE", "MAX_PAGE_TOKEN_CHARS", "Keyed",
           "check_filter_size", "check_page_size", "enum_term", "keyset_page", "parse_filter"]

# The most items one List call returns (every List RPC of every service).
MAX_PAGE_SIZE = 1000


def check_page_size(page_size: int) -> None:
    """INVALID_ARGUMENT naming `page_size` outside 0..MAX_PAGE_SIZE (0: the default)."""
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be 0..{MAX_PAGE_SIZE}", field="page_size")


class Keyed(Protocol):
    @property
    def create_time(self) -> float: ...
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=Keyed)


def _encode(record: Keyed, filter_text: str) -> str:
    raw = json.dumps([record.create_time, record.id, filter_text]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# A real token is ~80 characters; anything far longer was not issued by us.
MAX_PAGE_TOKEN_CHARS = 1024
# A List filter is a few KEY=VALUE terms.
MAX_FILTER_CHARS = 4096


def check_filter_size(text: str) -> None:
    check_text("filter", text, MAX_FILTER_CHARS)


def _decode(token: str, filter_text: str) -> tuple[float, str]:
    """The (create_time, id) a token points after. Tokens come from clients: anything that is not
    exactly what _encode makes (nesting, huge numbers, wrong types) is INVALID_ARGUMENT."""
    bad = InvalidArgument("bad page_token (it must come from the previous response with "
                          "the same filter)", field="page_token")
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise bad from exc
    if not (isinstance(decoded, list) and len(decoded) == 3):
        raise bad
    create_time, rid, old_filter = decoded
    if (isinstance(create_time, bool) or not isinstance(create_time, int | float)
            or not isinstance(rid, str) or old_filter != filter_text):
        raise bad
    try:
        when = float(create_time)
    except OverflowError as exc:  # an integer too large for a float
        raise bad from exc
    if not math.isfinite(when):
        raise bad
    return when, rid


def keyset_page(records: Iterable[R], *, size: int, token: str, filter_text: str,
                accept: Callable[[R], bool]) -> tuple[list[R], str]:
    """Up to `size` accepted records after the token's position, and the next page's token
    ('' at the end)."""
    after = _decode(token, filter_text) if token else None
    out: list[R] = []
    for record in sorted(records, key=lambda r: (r.create_time, r.id)):
        if after is not None and (record.create_time, record.id) <= after:
            continue
        if not accept(record):
            continue
        if len(out) == size:
            return out, _encode(out[-1], filter_text)
        out.append(record)
    return out, ""


Predicate = Callable[[R], bool]


def parse_filter(text: str, terms: Mapping[str, Callable[[str], Predicate[R]]],
                 labels: Callable[[R], Mapping[str, str]]) -> Predicate[R]:
    """The List filters' grammar, for every service: space-separated KEY=VALUE terms that must
    all hold; `terms` builds the predicate of each key a service knows, and `label.KEY=VALUE`
    matches the record's `labels`. INVALID_ARGUMENT names `filter`."""
    check_filter_size(text)
    checks: list[Predicate[R]] = []
    for term in text.split():
        key, sep, value = term.partition("=")
        if not sep or not value:
            raise InvalidArgument(f"bad filter term {term!r}: expected KEY=VALUE", field="filter")
        if key.startswith("label."):
            checks.append(_label_is(labels, key.removeprefix("label."), value))
        elif key in terms:
            checks.append(terms[key](value))
        else:
            raise InvalidArgument(f"unknown filter key {key!r}: expected "
                                  f"{', '.join(terms)} or label.KEY", field="filter")
    return lambda r: all(c(r) for c in checks)


def _label_is(labels: Callable[[R], Mapping[str, str]], key: str, value: str) -> Predicate[R]:
    return lambda r: labels(r).get(key) == value


E = TypeVar("E", bound=Enum)


def enum_term(kind: type[E], prefix: str, get: Callable[[R], E]) -> Callable[[str], Predicate[R]]:
    """A `state=NAME` term: NAME case-insensitive, with or without the proto's `prefix`."""
    def build(value: str) -> Predicate[R]:
        name = value.upper().removeprefix(prefix)
        if name not in kind.__members__:
            raise InvalidArgument(f"unknown state {value!r} in filter; valid: "
                                  f"{', '.join(kind.__members__)}", field="filter")
        wanted = kind[name]
        return lambda r: get(r) is wanted
    return build
