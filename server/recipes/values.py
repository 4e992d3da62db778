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
_MEMORY = re.compile(r"([0-9]{1,12})\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
_MEMORY_FACTOR = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
_TIME_FORMS = (
    (re.compile(r"([0-9]+)"), ("m",)),
    (re.compile(r"([0-9]+):([0-9]{1,2})"), ("m", "s")),
    (re.compile(r"([0-9]+):([0-9]{1,2}):([0-9]{1,2})"), ("h", "m", "s")),
    (re.compile(r"([0-9]+)-([0-9]+)"), ("d", "h")),
    (re.compile(r"([0-9]+)-([0-9]+):([0-9]{1,2})"), ("d", "h", "m")),
    (re.compile(r"([0-9]+)-([0-9]+):([0-9]{1,2}):([0-9]{1,2})"), ("d", "h", "m", "s")),
)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class ValueProblem(ValueError):
    """A value does not fit its declaration: `message` says what was wrong, `expected` what fits."""

    def __init__(self, message: str, expected: str) -> None:
        super().__init__(f"{message} (expected {expected})")
        self.message = message
        self.expected = expected


def short_repr(value: object, limit: int = 60) -> str:
    """repr() cut to `limit` characters, so a 1 MB value never ends up in an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...<{len(text)} chars>"


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


# SLURM counts memory in MiB in 32-bit fields of its own API; nothing real is larger.
MAX_MEMORY_MIB = 2**31 - 1


def parse_memory_mib(value: int | str) -> int:
    """A SLURM-style memory size ("512M", "4G", "1T", bare number = MiB) -> MiB (>= 1)."""
    if isinstance(value, bool):
        raise ValueProblem(f"got {value!r}", "a size such as 512M or 4G")
    if isinstance(value, int):
        mib = value
    else:
        m = _MEMORY.fullmatch(value.strip())
        if m is None:
            raise ValueProblem(f"got {short_repr(value)}", "a size such as 512M or 4G")
        mib = math.ceil(int(m.group(1)) * _MEMORY_FACTOR[m.group(2).upper()])
    if mib < 1:
        raise ValueProblem(f"got {value!r}", "at least 1M")
    if mib > MAX_MEMORY_MIB:
        raise ValueProblem(f"got {short_repr(value)}", f"at most {MAX_MEMORY_MIB}M (2 PiB)")
    return mib


def parse_time_minutes(value: int | str | None) -> int | None:
    """A SLURM time limit ("30", "01:00:00", "1-12", "2-00:00:00", "UNLIMITED") -> minutes
    (seconds are rounded up); None or UNLIMITED means no limit."""
    expected = 'minutes or a SLURM time such as "01:00:00" or "1-00:00:00"'
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueProblem(f"got {value!r}", expected)
    if isinstance(value, int):
        seconds = value * 60
    else:
        text = value.strip()
        if text.upper() in ("UNLIMITED", "INFINITE"):
            return None
        for form, units in _TIME_FORMS:
            m = form.fullmatch(text)
            if m is not None:
                seconds = sum(int(g) * _SECONDS[u] for g, u in zip(m.groups(), units, strict=True))
                break
        else:
            raise ValueProblem(f"got {short_repr(value)}", expected)
    if seconds < 1:
        raise ValueProblem(f"got {value!r}", "a positive time limit")
    return math.ceil(seconds / 60)
