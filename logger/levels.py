"""Levels of a whole block of one-line records at once (numpy), with `detect_level`'s answers.

A line's level is its earliest marker. Lines that are ASCII, at most 512 bytes long and hold
neither "[" nor "level" can only carry the upper-case words (ERROR, WARN, ...) as markers: a
maximal run of 3 to 8 capitals with no letter, digit or "_" on either side. Those runs are
found for the whole block with a few array passes and looked up by their bytes (read 8 at a
time from an overlapping view of the block, `words_at`); every other line is given to
`detect_level` itself, so the answers never differ. The block may start inside a buffer (the
tailer's read), so nothing is copied.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from aifb.logger.records import detect_level

__all__ = ["LEVEL_NAMES", "detect_levels", "words_at"]

# Index = level code; 0 is "unknown".
LEVEL_NAMES = ("unknown", "error", "warning", "info", "debug")
_CODE = {name: i for i, name in enumerate(LEVEL_NAMES)}
_WORDS = {b"ERROR": "error", b"ERR": "error", b"CRITICAL": "error", b"FATAL": "error",
          b"PANIC": "error", b"WARNING": "warning", b"WARN": "warning", b"INFO": "info",
          b"DEBUG": "debug", b"TRACE": "debug"}
_KEYS = np.array(sorted(int.from_bytes(w.ljust(8, b"\0"), "little") for w in _WORDS),
                 dtype=np.uint64)
_MASKS = np.array([(1 << 8 * k) - 1 for k in range(9)], dtype=np.uint64)  # the low k bytes
_KEY_CODES = np.array([_CODE[_WORDS[int(k).to_bytes(8, "little").rstrip(b"\0")]]
                       for k in _KEYS], dtype=np.int8)
_WORD = np.zeros(256, dtype=bool)  # ASCII letters, digits and "_"
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _WORD[_c] = True
_LEVEL_KEY = int.from_bytes(b"level", "little")
_FIRST = 512  # detect_level looks at this many characters of the first line


def words_at(buf: bytes, at: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """The 8 bytes of `buf` at each offset in `at` (ascending), as little-endian integers; bytes
    past the end of `buf` read as zero. One gather from an overlapping view of `buf`."""
    n = len(buf)
    if n < 8:
        buf, n = buf + bytes(8 - n), 8
    window: npt.NDArray[np.uint64] = np.ndarray((n - 7,), dtype="<u8", buffer=buf, strides=(1,))
    if not len(at) or int(at[-1]) <= n - 8:
        return window[at]
    inside = np.minimum(at, n - 8)
    return window[inside] >> ((at - inside).astype(np.uint64) << np.uint64(3))


def detect_levels(block: bytes, ends: npt.NDArray[np.int64], start: int = 0
                  ) -> npt.NDArray[np.int8]:
    """Level codes (indexes into LEVEL_NAMES) of the lines of `block` from offset `start` (a
    line's start); `ends` holds the offset of each line's newline, ascending."""
    n = len(ends)
    codes = np.zeros(n, dtype=np.int8)
    if not n:
        return codes
    stop = int(ends[-1]) + 1
    a = np.frombuffer(block, dtype=np.uint8, count=stop)
    seg = a[start:]
    starts = np.empty(n, dtype=np.int64)
    starts[0] = start
    starts[1:] = ends[:-1] + 1
    # Maximal runs of capitals: the flips of "is a capital" pair up as (start, end).
    upper = np.less(np.subtract(seg, 65, dtype=np.uint8), 26)
    flips = np.flatnonzero(upper[1:] != upper[:-1])
    flips += start + 1
    if upper[0]:
        flips = np.concatenate(([start], flips))
    run_start, run_end = flips[0::2], flips[1::2]  # a run never reaches the final newline
    length = run_end - run_start
    keep = (length >= 3) & (length <= 8)
    run_start, run_end, length = run_start[keep], run_end[keep], length[keep]
    keep = ~_WORD[a[run_end]] & ((run_start == 0) | ~_WORD[a[run_start - 1]])
    run_start, length = run_start[keep], length[keep]
    if len(run_start):
        key = words_at(block, run_start) & _MASKS[length]
        slot = np.minimum(np.searchsorted(_KEYS, key), len(_KEYS) - 1)
        found = _KEYS[slot] == key
        line = np.searchsorted(ends, run_start[found])
        first, where = np.unique(line, return_index=True)
        codes[first] = _KEY_CODES[slot[found][where]]
    general = set()
    if not block.isascii():
        general.update(np.unique(np.searchsorted(ends, np.flatnonzero(seg >= 128) + start))
                       .tolist())
    if block.find(b"[", start, stop) >= 0:
        general.update(np.unique(np.searchsorted(ends, np.flatnonzero(seg == 91) + start))
                       .tolist())
    # "level" where its "v" is (a rarer byte than the "l" and "e" a search skips on).
    at = np.flatnonzero(seg[2:] == 118) + start
    if len(at):
        at = at[(words_at(block, at) & _MASKS[5]) == _LEVEL_KEY]
        general.update(np.unique(np.searchsorted(ends, at)).tolist())
    general.update(np.flatnonzero(ends - starts > _FIRST).tolist())
    for i in general:
        text = block[starts[i]:ends[i]].decode("utf-8", errors="replace")
        codes[i] = _CODE[detect_level(text)]
    return codes
