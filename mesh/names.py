"""Resource names every component reads the same way (`services/<id>`)."""

from __future__ import annotations

import re

from aifb.mesh.errors import InvalidArgument

__all__ = ["parse_service_id"]

_SERVICE_ID = re.compile(r"^[a-z0-9-]{1,64}$")


def parse_service_id(name: str) -> str:
    """'services/abc' or 'abc' -> 'abc'; anything else is INVALID_ARGUMENT."""
    sid = name.removeprefix("services/")
    if not _SERVICE_ID.match(sid):
        raise InvalidArgument(f"bad service name {name!r}: expected services/<id>", field="name")
    return sid
