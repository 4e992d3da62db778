"""The highest request rate that meets an SLO, found by a few benchmark trials (like MLPerf's
FindPeak). A pure state machine: no I/O, no clock; the orchestrator runs the trials.

    search = RateSearch(start=100.0, low=1.0, high=100000.0, tolerance=0.05, max_trials=12)
    while (rate := search.next_rate()) is not None:
        met = run_trial(rate)            # the caller's job: one benchmark at `rate`
        search.record(rate, met)
    result = search.result()             # best_rate 825, failed_rate 850, converged, reason

**Bracket.** The first trial runs at `start`. While trials meet the SLO the rate doubles (capped
at `high`); while they fail it halves (floored at `low`). Bracketing ends at the first change of
outcome, when a met rate lies just below a failed one, or at a bound: met at `high` ends the
search with `high` as the best rate (the peak may lie above: raise `high`), failed at `low` ends
it with no best rate.

**Bisect.** Between `lo`, the highest rate met, and `hi`, the lowest rate failed, the next trial
runs at the arithmetic midpoint, until the bracket is within `tolerance` of `lo`
((hi - lo) / lo <= tolerance) or `max_trials` trials ran. The bracket a doubling leaves is at
most a factor 2 wide, where the arithmetic and geometric midpoints differ by less than 3 %; the
arithmetic one gives the round numbers a reader expects (825, 837.5). Rates are rounded to 4
significant digits (the bounds themselves are used as given) and never repeated: when rounding
leaves no untried rate strictly inside the bracket, the search has converged at the resolution
it reports.

**Noise.** Each trial is one observation and the search trusts it: it always tries inside the
current bracket, so a spurious failure below the true peak caps the result there, and a lucky
pass above it lifts the bracket. Whatever the trials say, the result is the highest rate met
*below* the lowest failure: a rate met above a failure (the SLO is not monotone in the rate
there) stays in `trials` but never becomes the best rate. When the answer matters, repeat the
search, or confirm `best_rate` with repeated trials.

**Resume.** `to_dict()` is the parameters and the trials so far; `RateSearch.from_dict` replays
them, so a search persisted after any trial continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aifb.mesh.errors import InvalidArgument

__all__ = ["RateSearch", "SearchResult"]

SIGNIFICANT_DIGITS = 4
MAX_TRIALS_LIMIT = 100


def round_rate(rate: float) -> float:
    """A rate rounded to 4 significant digits: 1234.567 -> 1235.0, 0.0123449 -> 0.01234."""
    return float(f"{rate:.{SIGNIFICANT_DIGITS}g}")


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Where a search ended (or stands, while it runs).

    `best_rate` is the highest rate met below the lowest failure (None: none met); `failed_rate`
    the lowest rate that failed (None: none failed, the peak is at or above `best_rate`).
    `converged` is True when the search ended by its own rule (the bracket within tolerance or
    too narrow to split, or a bound reached), False when it ran out of trials or still runs."""

    best_rate: float | None
    failed_rate: float | None
    converged: bool
    trials: list[tuple[float, bool]] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"best_rate": self.best_rate, "failed_rate": self.failed_rate,
                "converged": self.converged, "reason": self.reason,
                "trials": [[rate, met] for rate, met in self.trials]}


class _Plan(NamedTuple):
    next_rate: float | None  # None: the search is over
    converged: bool
    reason: str


class RateSearch:
    """Bracket, then bisect, the highest rate meeting an SLO (see the module docstring).

    `unit` only labels the reasons ("req/s", "tokens/s")."""

    def __init__(self, start: float, low: float, high: float, tolerance: float = 0.05,
                 max_trials: int = 12, *, unit: str = "req/s") -> None:
        for name, value in (("start", start), ("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(f"the search's {name} must be a number, got {value!r}",
                                      field=f"search.{name}")
            if not math.isfinite(value) or value <= 0:
                raise InvalidArgument(f"the search's {name} rate must be finite and > 0, got "
                                      f"{value}", field=f"search.{name}")
        if low > high:
            raise InvalidArgument(f"the search's low rate {low:g} is above its high rate "
                                  f"{high:g}", field="search.low")
        if not low <= start <= high:
            raise InvalidArgument(f"the search's start rate {start:g} must lie within low..high "
                                  f"({low:g}..{high:g})", field="search.start")
        if (isinstance(tolerance, bool) or not isinstance(tolerance, int | float)
                or not 0.0 < tolerance < 1.0):
            raise InvalidArgument(f"the search's tolerance must be within 0..1 (exclusive; 0.05 "
                                  f"= 5 %), got {tolerance!r}", field="search.tolerance")
        if (isinstance(max_trials, bool) or not isinstance(max_trials, int)
                or not 1 <= max_trials <= MAX_TRIALS_LIMIT):
            raise InvalidArgument(f"the search's max_trials must be an integer within "
                                  f"1..{MAX_TRIALS_LIMIT}, got {max_trials!r}",
                                  field="search.max_trials")
        self.start, self.low, self.high = float(start), float(low), float(high)
        self.tolerance = float(tolerance)
        self.max_trials = max_trials
        self.unit = unit
        self._trials: list[tuple[float, bool]] = []
        self._plan = self._decide()

    @property
    def trials(self) -> tuple[tuple[float, bool], ...]:
        """(rate, met) of every trial so far, in order."""
        return tuple(self._trials)

    @property
    def done(self) -> bool:
        return self._plan.next_rate is None

    def next_rate(self) -> float | None:
        """The rate of the next trial, or None when the search is over. Asking again before
        `record` gives the same rate."""
        return self._plan.next_rate

    def record(self, rate: float, met: bool) -> None:
        """The outcome of the trial at `rate`, which must be the rate `next_rate` gave
        (ValueError otherwise, and once the search is over). A rate that went through a
        float32 field on its way is still the same rate: within 1e-6 relative, the rate asked
        for is recorded."""
        expected = self._plan.next_rate
        if expected is None:
            raise ValueError(f"the search is over ({self._plan.reason}); no trial to record")
        if not math.isclose(rate, expected, rel_tol=1e-6):
            raise ValueError(f"recorded a trial at {rate:g} {self.unit}, but the search asked for "
                             f"{expected:g} {self.unit}")
        self._trials.append((expected, bool(met)))
        self._plan = self._decide()

    def result(self) -> SearchResult:
        """The outcome so far; final once `next_rate()` is None."""
        lo, hi = self._bracket()
        return SearchResult(best_rate=lo, failed_rate=hi, converged=self._plan.converged,
                            trials=list(self._trials), reason=self._plan.reason)

    def to_dict(self) -> dict[str, Any]:
        """The parameters and the trials so far: all a resumed search needs (JSON-ready)."""
        return {"start": self.start, "low": self.low, "high": self.high,
                "tolerance": self.tolerance, "max_trials": self.max_trials, "unit": self.unit,
                "trials": [[rate, met] for rate, met in self._trials]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateSearch:
        """A search rebuilt from `to_dict()` by replaying its trials. Trials that this search
        would not have asked for (edited or mixed-up state) are refused (InvalidArgument)."""
        missing = [k for k in ("start", "low", "high", "tolerance", "max_trials")
                   if k not in data]
        if missing:
            raise InvalidArgument(f"saved search lacks {', '.join(missing)}",
                                  field=f"search.{missing[0]}")
        search = cls(data["start"], data["low"], data["high"], data["tolerance"],
                     data["max_trials"], unit=str(data.get("unit", "req/s")))
        trials = data.get("trials", [])
        if not isinstance(trials, list | tuple):
            raise InvalidArgument("saved search's trials must be a list of [rate, met]",
                                  field="search.trials")
        for i, trial in enumerate(trials):
            if (not isinstance(trial, list | tuple) or len(trial) != 2
                    or not isinstance(trial[1], bool) or isinstance(trial[0], bool)
                    or not isinstance(trial[0], int | float)):
                raise InvalidArgument(f"saved search's trial {i} must be [rate, met], got "
                                      f"{trial!r}", field="search.trials")
            try:
                search.record(float(trial[0]), trial[1])
            except ValueError as exc:
                raise InvalidArgument(f"saved search's trial {i} does not replay: {exc}",
                                      field="search.trials") from exc
        return search

    # The decision is a pure function of the parameters and the trials, so a replayed search
    # decides exactly as the original did.

    def _bracket(self) -> tuple[float | None, float | None]:
        """(highest rate met below the lowest failure, lowest failure); either may be None."""
        failed = [r for r, met in self._trials if not met]
        hi = min(failed) if failed else None
        below = [r for r, met in self._trials if met and (hi is None or r < hi)]
        return (max(below) if below else None), hi

    def _clamp(self, rate: float) -> float:
        return min(max(round_rate(rate), self.low), self.high)

    def _decide(self) -> _Plan:
        n, u = len(self._trials), self.unit
        lo, hi = self._bracket()
        candidate: float | None
        if n == 0:
            candidate = self._clamp(self.start)
        elif hi is None:  # everything met so far: double
            assert lo is not None
            if lo >= self.high:
                return _Plan(None, True, f"met at the highest rate tried ({self.high:g} {u}, the "
                                         f"search's upper bound; {n} trials)")
            candidate = self._clamp(lo * 2)
        elif lo is None:  # nothing met so far: halve
            if hi <= self.low:
                return _Plan(None, True, f"not met even at the lowest rate ({self.low:g} {u}, "
                                         f"the search's lower bound; {n} trials)")
            candidate = self._clamp(hi / 2)
        else:  # bisect
            bracket = f"{lo:g}-{hi:g} {u}"
            if (hi - lo) / lo <= self.tolerance:
                return _Plan(None, True, f"bracket {bracket} is within {self.tolerance * 100:g} % "
                                         f"({n} trials)")
            candidate = round_rate((lo + hi) / 2)
            tried = {r for r, _ in self._trials}
            if not lo < candidate < hi or candidate in tried:
                return _Plan(None, True, f"bracket {bracket} cannot be split at "
                                         f"{SIGNIFICANT_DIGITS} significant digits ({n} trials)")
        if n >= self.max_trials:
            return _Plan(None, False, f"stopped after max_trials={self.max_trials} with "
                                      f"{self._standing(lo, hi)}")
        return _Plan(candidate, False, f"in progress after {n} trials, {self._standing(lo, hi)}")

    def _standing(self, lo: float | None, hi: float | None) -> str:
        u = self.unit
        if lo is not None and hi is not None:
            return f"bracket {lo:g}-{hi:g} {u} ({(hi - lo) / lo * 100:.1f} % wide)"
        if lo is not None:
            return f"no failure yet (met up to {lo:g} {u})"
        if hi is not None:
            return f"no rate met yet (failed down to {hi:g} {u})"
        return "no trials yet"
