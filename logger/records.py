"""Log records from lines: multi-line joining (Python tracebacks, indented lines) and levels."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Joiner", "detect_level"]

# The upper-case words need a word boundary before them too; that is checked after a match
# (a leading `\b` would keep the regex engine from skipping ahead by first character).
_LEVEL = re.compile(
    r"(?P<error>(?:ERROR|ERR|CRITICAL|FATAL|PANIC)\b|\[(?:error|critical|fatal)\]"
    r"|level=\"?(?:error|err|critical|fatal)\b|\"level\":\s*\"(?:error|critical|fatal)\")"
    r"|(?P<warning>(?:WARNING|WARN)\b|\[(?:warning|warn)\]|level=\"?warn(?:ing)?\b"
    r"|\"level\":\s*\"warn(?:ing)?\")"
    r"|(?P<info>INFO\b|\[info\]|level=\"?info\b|\"level\":\s*\"info\")"
    r"|(?P<debug>(?:DEBUG|TRACE)\b|\[(?:debug|trace)\]|level=\"?(?:debug|trace)\b"
    r"|\"level\":\s*\"(?:debug|trace)\")"
)
# Lines without "[" or "level" can only hold the upper-case words: runs of 3+ capitals, looked up.
_UPPER = re.compile(r"[A-Z]{3,}")
_WORDS = {"ERROR": "error", "ERR": "error", "CRITICAL": "error", "FATAL": "error",
          "PANIC": "error", "WARNING": "warning", "WARN": "warning", "INFO": "info",
          "DEBUG": "debug", "TRACE": "debug"}
_TRACEBACK_START = ("Traceback (most recent call last)", "During handling of the above exception",
                    "The above exception was the direct cause")


def detect_level(text: str) -> str:
    """"error", "warning", "info", "debug" from the first line's earliest marker, else "unknown"
    (a record holding a Python traceback and no marker is an error)."""
    first = text.split("\n", 1)[0][:512]
    found = _first_marker(first)
    if found:
        return found
    if "\nTraceback (most recent call last)" in text or text.startswith("Traceback ("):
        return "error"
    return "unknown"


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _first_marker(first: str) -> str:
    """The level of the earliest marker in `first`, or ""."""
    if "[" not in first and "level" not in first:
        end = 0  # search, not finditer: it stops at the first marker, and skips ahead faster
        while (match := _UPPER.search(first, end)) is not None:
            level = _WORDS.get(match.group())
            start, end = match.span()
            if level and not (start and _word_char(first[start - 1])) \
                    and not (end < len(first) and _word_char(first[end])):
                return level
        return ""
    pos = 0
    while (match := _LEVEL.search(first, pos)) is not None:
        start = match.start()
        if start and first[start].isupper() and _word_char(first[start - 1]):
            pos = start + 1  # an upper-case word inside a longer word: not a marker
            continue
        return match.lastgroup or ""
    return ""


@dataclass
class _Pending:
    lines: list[str]
    end: int
    traceback: str = ""  # "", "frames" (inside a traceback) or "done" (after its last line)


class Joiner:
    """Feeds lines in, returns finished records as (text, end offset of their last line).

    A line continues the record before it when it is indented, starts a traceback section, is
    the exception line closing a traceback, or is blank inside a traceback. Blank lines outside
    tracebacks are skipped (their bytes still count as read).
    """

    def __init__(self) -> None:
        self._pending: _Pending | None = None

    @property
    def has_pending(self) -> bool:
        return self._pending is not None

    @property
    def can_end_pending(self) -> bool:
        """False inside a traceback's frames, where even an unindented line continues it."""
        return self._pending is None or self._pending.traceback != "frames"

    def feed(self, line: str, end: int) -> tuple[str, int] | None:
        p = self._pending
        if p is not None and self._continues(p, line):
            p.lines.append(line)
            p.end = end
            if line.startswith(_TRACEBACK_START):
                p.traceback = "frames"
            elif p.traceback == "frames" and line and not line[0].isspace():
                p.traceback = "done"
            return None
        done = self.flush()
        if not line.strip():
            if done is None:
                return None
            self._pending = None
            return done
        tb = "frames" if line.startswith(_TRACEBACK_START) else ""
        self._pending = _Pending([line], end, tb)
        return done

    @staticmethod
    def _continues(p: _Pending, line: str) -> bool:
        if line.startswith(_TRACEBACK_START):
            return True
        if not line.strip():
            return bool(p.traceback)
        if line[0].isspace():
            return True
        return p.traceback == "frames"

    def flush(self) -> tuple[str, int] | None:
        """Finish the pending record (at end of file, on rotation, or after an idle timeout)."""
        p = self._pending
        self._pending = None
        if p is None:
            return None
        lines = p.lines
        while lines and not lines[-1].strip():
            lines.pop()
        return "\n".join(lines), p.end
