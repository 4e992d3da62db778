"""Keyset paging for the List RPCs: pages in (create_time, id) order, stable while records are
added, with an opaque page token bound to the filter it was issued for."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from aifb.mesh.errors import InvalidArgument

__all__ = ["Keyed", "keyset_page"]


class Keyed(Protocol):
    @property
    def create_time(self) -> float: ...
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=Keyed)


def _encode(record: Keyed, filter_text: str) -> str:
    raw = json.dumps([record.create_time, record.id, filter_text]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, filter_text: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        create_time, rid, old_filter = json.loads(raw)
        if old_filter != filter_text:
            raise ValueError("filter changed")
        return float(create_time), str(rid)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument("bad page_token (it must come from the previous response with "
                              "the same filter)", field="page_token") from exc


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
