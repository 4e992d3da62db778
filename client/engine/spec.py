"""The load specification: closed or open loop, its profile, bounds and error budget, validated."""

from __future__ import annotations

import bisect
import enum
import math
from dataclasses import dataclass
from itertools import pairwise

from aifb.client.engine.budget import ErrorBudget
from aifb.client.engine.profiles import Profile, constant
from aifb.client.engine.schedule import Arrival
from aifb.mesh.errors import InvalidArgument

__all__ = ["LoadSpec", "Mode"]

NO_BUDGET = ErrorBudget()


class Mode(enum.StrEnum):
    CLOSED = "closed"  # `users` concurrent users, each sends when its previous request ends
    OPEN = "open"  # requests sent on a schedule, whatever the responses do


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What load to apply. Durations are seconds; `profile` (if set) replaces users/rate/duration.

    The run lasts `duration_s`; statistics cover requests intended to be sent between
    `warmup_s` and `duration_s - cooldown_s`. It ends early, SUCCEEDED, after `max_requests`
    sends; FAILED when errors spend the error `budget` (`aifb.client.engine.budget`). Open loop
    never queues more than
    `max_in_flight` requests: one due beyond that is counted as dropped, never silently skipped.

    `offsets_ns` (open loop) replaces the rate: request n is due that many ns after the start,
    and is request number n (a trace replay's entry n; a dropped one still uses its number).
    `cancel_fraction` of the requests, chosen from `seed` by request number, are cancelled
    `cancel_after_s` after their intended send time if still unanswered (the connection is
    closed, as a client that gives up does); they are counted apart (`cancelled`).
    """

    mode: Mode = Mode.CLOSED
    users: int = 1
    rate: float = 0.0
    profile: Profile | None = None
    arrival: Arrival = Arrival.CONSTANT
    burstiness: float = 1.0
    duration_s: float = 10.0
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    max_requests: int = 0  # 0 = no bound
    budget: ErrorBudget = NO_BUDGET
    max_in_flight: int = 10_000
    drain_s: float = 10.0  # how long in-flight requests may finish after the end
    interval_s: float = 1.0  # progress interval
    seed: int | None = None
    offsets_ns: tuple[int, ...] | None = None  # explicit arrival times (a trace replay)
    cancel_fraction: float = 0.0
    cancel_after_s: float = 0.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", Mode(self.mode))
            object.__setattr__(self, "arrival", Arrival(self.arrival))
        except ValueError as exc:
            raise InvalidArgument(str(exc), field="mode" if "Mode" in str(exc) else "arrival"
                                  ) from None
        self._check_number("duration_s", self.duration_s, low=0.0, strict=True)
        self._check_number("warmup_s", self.warmup_s, low=0.0)
        self._check_number("cooldown_s", self.cooldown_s, low=0.0)
        self._check_number("burstiness", self.burstiness, low=0.0, strict=True)
        self._check_number("drain_s", self.drain_s, low=0.0)
        self._check_number("interval_s", self.interval_s, low=0.01)
        if self.warmup_s + self.cooldown_s >= self.total_s:
            raise InvalidArgument("warm-up plus cool-down must leave a measurement window",
                                  field="warmup_s")
        if self.max_requests < 0:
            raise InvalidArgument("max_requests must be >= 0", field="max_requests")
        if self.max_in_flight < 1:
            raise InvalidArgument("max_in_flight must be >= 1", field="max_in_flight")
        self._check_number("cancel_fraction", self.cancel_fraction, low=0.0)
        if self.cancel_fraction > 1.0:
            raise InvalidArgument("cancel_fraction must be within 0..1", field="cancel_fraction")
        if self.cancel_fraction > 0:
            self._check_number("cancel_after_s", self.cancel_after_s, low=0.0, strict=True)
        if self.offsets_ns is not None:
            self._check_offsets(self.offsets_ns)
        elif self.profile is None:
            if self.mode is Mode.CLOSED and not 1 <= self.users <= 100_000:
                raise InvalidArgument("users must be in 1..100000", field="users")
            if self.mode is Mode.OPEN:
                self._check_number("rate", self.rate, low=0.0, strict=True)
        elif self.profile.peak <= 0:
            raise InvalidArgument("the profile never rises above 0", field="profile")

    def _check_offsets(self, offsets: tuple[int, ...]) -> None:
        if self.mode is not Mode.OPEN or self.profile is not None:
            raise InvalidArgument("explicit arrival times need an open loop and no profile",
                                  field="offsets_ns")
        if not offsets:
            raise InvalidArgument("explicit arrival times: at least one is needed",
                                  field="offsets_ns")
        if offsets[0] < 0 or any(b < a for a, b in pairwise(offsets)):
            raise InvalidArgument("explicit arrival times must be >= 0 and in order",
                                  field="offsets_ns")
        if offsets[-1] >= self.duration_s * 1e9:
            raise InvalidArgument("the last arrival must fall within the run's duration",
                                  field="duration_s")

    @staticmethod
    def _check_number(name: str, value: float, *, low: float, strict: bool = False) -> None:
        if not math.isfinite(value) or value < low or (strict and value == low):
            op = ">" if strict else ">="
            raise InvalidArgument(f"{name} must be a finite number {op} {low}, got {value}",
                                  field=name)

    @property
    def total_s(self) -> float:
        return self.profile.duration_s if self.profile is not None else self.duration_s

    def level_profile(self) -> Profile:
        """Rate (open) or users (closed) over time; with explicit arrival times, their mean
        rate over the run."""
        if self.profile is not None:
            return self.profile
        if self.offsets_ns is not None:
            return constant(len(self.offsets_ns) / self.duration_s, self.duration_s)
        level = self.rate if self.mode is Mode.OPEN else float(self.users)
        return constant(level, self.duration_s)

    def mean_rate(self, t0: float, t1: float) -> float:
        """Open loop: requests due in [t0, t1) seconds from the start, per second."""
        if t1 <= t0:
            return 0.0
        if self.offsets_ns is None:
            return self.level_profile().mean_level(t0, t1)
        offsets = self.offsets_ns
        due = (bisect.bisect_left(offsets, round(t1 * 1e9))
               - bisect.bisect_left(offsets, round(t0 * 1e9)))
        return due / (t1 - t0)
