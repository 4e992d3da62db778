"""Typed recipe values: parsing text into int/float/bool/string/port, canonical text, placeholders.

A placeholder is ``{{ name }}`` (spaces inside the braces optional) naming a declared parameter
or a builtin (`workdir`, `service_id`). Substitution is one pass of plain text replacement
into a single string (one argv element, one env value): a substituted value is never scanned
again, and nothing here ever goes near a shell. A name missing from the lookup is left as its
canonical token ``{{ name }}`` (exactly one space inside each brace pair): that is how a port
chosen inside the job (an "auto port", declared value 0) reaches `aifb.job.run`, which
replaces that exact token with the port it picked.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Literal

from aifb.mesh.units import (
    MAX_MEMORY_MIB,
    ValueProblem,
    parse_memory_mib,
    parse_time_minutes,
    short_repr,
)

__all__ = [
    "BUILTINS",
    "MAX_MEMORY_MIB",
    "PLACEHOLDER",
    "ParamType",
    "Value",
    "ValueProblem",
    "canonical_text",
    "check_text",
    "parse_memory_mib",
    "parse_time_minutes",
    "parse_value",
    "placeholder_names",
    "render",
    "short_repr",
    "token",
]

ParamType = Literal["int", "float", "bool", "string", "port"]
Value = bool | int | float | str

# Filled in by build_job_spec, not by the user.
BUILTINS = frozenset({"workdir", "service_id"})

PLACEHOLDER = re.compile(r"\{\{\s*([a-z][a-z0-9_]*)\s*\}\}")
_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def token(name: str) -> str:
    """The canonical placeholder token for `name`: ``{{ name }}``."""
    return "{{ " + name + " }}"


def placeholder_names(template: str) -> list[str]:
    return PLACEHOLDER.findall(template)


def render(template: str, lookup: Mapping[str, str]) -> str:
    """Replace every placeholder in one pass; names not in `lookup` become canonical tokens."""
    return PLACEHOLDER.sub(lambda m: lookup.get(m.group(1), token(m.group(1))), template)


def canonical_text(value: Value) -> str:
    """The text a typed value is substituted as: `true`/`false`, decimal ints, repr() floats."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def check_text(text: str, *, max_length: int, multiline: bool) -> None:
    """Length bound first (cheap), then no NUL, no control characters (newline and tab only
    where `multiline`), no lone surrogates."""
    if len(text) > max_length:
        raise ValueProblem(f"got {len(text)} characters", f"at most {max_length} characters")
    allowed = "\n\t" if multiline else ""
    for ch in text:
        if ch == "\0":
            raise ValueProblem("got a NUL byte", "text without NUL bytes")
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs", "Zl", "Zp") and ch not in allowed:
            what = "newlines" if ch in "\r\n\u2028\u2029" else "control characters"
            raise ValueProblem(f"got {what} ({ch!r})",
                               "a single line without control characters")


def _bounds(minimum: float | None, maximum: float | None) -> str:
    lo = "" if minimum is None else canonical_text(_int_if_whole(minimum))
    hi = "" if maximum is None else canonical_text(_int_if_whole(maximum))
    if lo and hi:
        return f" {lo}..{hi}"
    if lo:
        return f" >= {lo}"
    return f" <= {hi}" if hi else ""


def _int_if_whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _expected(kind: ParamType, minimum: float | None, maximum: float | None) -> str:
    if kind == "port":
        lo = 1 if minimum is None else max(1, int(minimum))
        hi = 65535 if maximum is None else min(65535, int(maximum))
        return f"an integer {lo}..{hi} (0 = a free port chosen when the job starts)"
    if kind == "int":
        return "an integer" + _bounds(minimum, maximum)
    if kind == "float":
        return "a number" + _bounds(minimum, maximum)
    if kind == "bool":
        return "true or false"
    return "a string"


def parse_value(kind: ParamType, text: str, *, minimum: float | None = None,
                maximum: float | None = None, pattern: str | None = None,
                choices: Sequence[Value] | None = None, max_length: int = 4096,
                multiline: bool = False) -> Value:
    """Parse `text` as `kind` and check bounds, pattern (full match) and choices."""
    expected = _expected(kind, minimum, maximum)
    check_text(text, max_length=max_length, multiline=multiline)
    value: Value
    if kind in ("int", "port"):
        if not _INT.fullmatch(text):
            raise ValueProblem(f"got {short_repr(text)}", expected)
        value = int(text)
        if kind == "port":
            if value == 0:
                return 0
            if not 1 <= value <= 65535:
                raise ValueProblem(f"got {value}", expected)
    elif kind == "float":
        if not _FLOAT.fullmatch(text) or not math.isfinite(float(text)):
            raise ValueProblem(f"got {short_repr(text)}", expected)
        value = float(text)
    elif kind == "bool":
        low = text.lower()
        if low not in _TRUE | _FALSE:
            raise ValueProblem(f"got {short_repr(text)}", expected)
        value = low in _TRUE
    else:
        value = text
        if pattern is not None and re.fullmatch(pattern, text) is None:
            raise ValueProblem(f"got {short_repr(text)}", f"a string matching {pattern!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        raise ValueProblem(f"got {canonical_text(value)}", expected)
    if choices is not None and value not in choices:
        listed = ", ".join(canonical_text(c) for c in choices)
        raise ValueProblem(f"got {short_repr(text)}", f"one of: {listed}")
    return value
