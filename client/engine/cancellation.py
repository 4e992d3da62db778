"""Which requests a run cancels on purpose: a seeded choice by request number, and the deadline.

A client that gives up on a slow answer (a user closing the tab, a router's timeout) is load a
server must handle: it sees the connection close mid-reply and should stop generating. A run
with `cancel_fraction` f cancels that share of its requests `cancel_after_s` after sending them,
if they are still unanswered then.

The choice is a pure function of the seed and the request number (a SplitMix64 hash of both,
compared with f * 2^64), not a draw from a shared generator: the same seed cancels the same
requests whatever order a closed loop's users or an open loop's timer reach them in, and a
request's fate costs a few integer operations. Without a seed the key is random for each run.
"""

from __future__ import annotations

import secrets

__all__ = ["Cancellation"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(x: int) -> int:
    """SplitMix64's finaliser: every input bit flips about half of the output bits."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class Cancellation:
    """`chosen(seq)`: is request `seq` one to cancel? (`fraction` 0 = none, 1 = all.)"""

    __slots__ = ("_key", "_threshold", "after_s", "fraction")

    def __init__(self, fraction: float, after_s: float, seed: int | None) -> None:
        self.fraction = fraction
        self.after_s = after_s
        self._key = _mix(seed & _MASK) if seed is not None else secrets.randbits(64)
        self._threshold = round(fraction * (1 << 64))

    @property
    def active(self) -> bool:
        return self.fraction > 0

    def chosen(self, seq: int) -> bool:
        return _mix((self._key + (seq + 1) * _GOLDEN) & _MASK) < self._threshold
