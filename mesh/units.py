"""Sizes and times as SLURM writes them, parsed once for every part: memory ("512M", "4G"),
time limits ("30", "01:00:00", "1-12"), and the error type that says what fits instead.

The server's recipes, the CLI's resource flags and the experiment service's resource grids all
read these the same way (a study asking for memory: 2G means what a recipe's 2G means)."""

from __future__ import annotations

import math
import re

__all__ = ["MAX_MEMORY_MIB", "ValueProblem", "parse_memory_mib", "parse_time_minutes",
           "short_repr"]

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
