"""Bounds on free text and label matchers that come from clients, checked on the way in
(a refused value is INVALID_ARGUMENT naming the field; nothing unbounded reaches a store, a
query loop or an error message)."""

from __future__ import annotations

from collections.abc import Mapping

from aifb.mesh.errors import InvalidArgument

__all__ = ["MAX_MATCHERS", "MAX_TEXT_CHARS", "check_matchers", "check_text"]

MAX_TEXT_CHARS = 4096
MAX_MATCHERS = 64
MAX_LABEL_CHARS = 1024


def check_text(field: str, text: str, limit: int = MAX_TEXT_CHARS) -> None:
    if len(text) > limit:
        raise InvalidArgument(f"{field}: {len(text)} characters, at most {limit}", field=field)


def check_matchers(field: str, labels: Mapping[str, str]) -> None:
    """Label matchers ({"service": "services/abc"}): a few short names and values."""
    if len(labels) > MAX_MATCHERS:
        raise InvalidArgument(f"{field}: {len(labels)} matchers, at most {MAX_MATCHERS}",
                              field=field)
    for key, value in labels.items():
        if len(key) > MAX_LABEL_CHARS or len(value) > MAX_LABEL_CHARS:
            raise InvalidArgument(f"{field}: a label name or value is longer than "
                                  f"{MAX_LABEL_CHARS} characters", field=field)
