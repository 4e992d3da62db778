"""User labels on resources (services, benchmark runs): one rule, one error, in every service."""

from __future__ import annotations

import re
from collections.abc import Mapping

from aifb.mesh.errors import InvalidArgument

__all__ = ["MAX_LABELS", "MAX_LABEL_VALUE", "check_labels"]

MAX_LABELS = 64
MAX_LABEL_VALUE = 256
_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


def check_labels(labels: Mapping[str, str]) -> None:
    """At most 64 labels; keys a lower-case letter then up to 62 of a-z 0-9 _ . -; values at
    most 256 printable characters. INVALID_ARGUMENT names the field as `labels.<key>`."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels", field="labels")
    for key, value in labels.items():
        if not _KEY.match(key):
            raise InvalidArgument(f"bad label key {key[:80]!r}: expected a lower-case letter, "
                                  "then up to 62 of a-z 0-9 _ . -", field=f"labels.{key[:80]}")
        if len(value) > MAX_LABEL_VALUE or any(ord(c) < 32 for c in value):
            raise InvalidArgument(f"bad value for label {key!r}: at most {MAX_LABEL_VALUE} "
                                  "printable characters", field=f"labels.{key}")
