"""Page tokens come from clients: every crafted one is INVALID_ARGUMENT naming page_token, never
an internal error (a RecursionError or OverflowError escaped as INTERNAL before)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pytest

from aifb.mesh.errors import InvalidArgument
from aifb.mesh.paging import MAX_PAGE_TOKEN_CHARS, keyset_page

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Rec:
    create_time: float
    id: str


RECORDS = [Rec(float(i), f"r{i}") for i in range(5)]


def _token(raw: str | bytes) -> str:
    data = raw.encode() if isinstance(raw, str) else raw
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _page(token: str) -> tuple[list[Rec], str]:
    return keyset_page(RECORDS, size=2, token=token, filter_text="", accept=lambda r: True)


def test_a_token_we_issued_pages_on() -> None:
    first, token = _page("")
    second, _ = _page(token)
    assert [r.id for r in first] == ["r0", "r1"]
    assert [r.id for r in second] == ["r2", "r3"]


@pytest.mark.parametrize("token", [
    _token("[" * 100_000 + "]" * 100_000),              # RecursionError in json, before
    _token(json.dumps([10**400, "r1", ""])),            # OverflowError in float(), before
    _token('[NaN, "r1", ""]'),
    _token('[Infinity, "r1", ""]'),
    _token(json.dumps([True, "r1", ""])),
    _token(json.dumps(["1.0", "r1", ""])),
    _token(json.dumps([1.0, 7, ""])),
    _token(json.dumps([1.0, "r1"])),
    _token(json.dumps({"a": 1})),
    _token(json.dumps(3)),
    _token(b"\xff\xfe\x00"),
    "not base64 at all!",
    "A" * (MAX_PAGE_TOKEN_CHARS + 1),
], ids=["nested", "huge-int", "nan", "inf", "bool", "string-time", "int-id", "two-items",
        "object", "number", "not-utf8", "not-base64", "too-long"])
def test_a_crafted_page_token_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        _page(token)
    assert err.value.field == "page_token"


@pytest.mark.parametrize(("labels", "field"), [
    ({"Bad": "x"}, "labels.Bad"),
    ({"ok": "x" * 257}, "labels.ok"),
    ({"ok": "line\nbreak"}, "labels.ok"),
    ({f"k{i}": "v" for i in range(65)}, "labels"),
])
def test_both_services_refuse_bad_labels_naming_the_same_field(labels: dict[str, str],
                                                               field: str) -> None:
    from aifb.mesh.labels import check_labels

    with pytest.raises(InvalidArgument) as err:
        check_labels(labels)
    assert err.value.field == field
