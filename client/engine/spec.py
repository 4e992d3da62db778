"""The load specification: closed or open loop, its profile, bounds and error budget, validated."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

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
        if self.profile is None:
            if self.mode is Mode.CLOSED and not 1 <= self.users <= 100_000:
                raise InvalidArgument("users must be in 1..100000", field="users")
            if self.mode is Mode.OPEN:
                self._check_number("rate", self.rate, low=0.0, strict=True)
        elif self.profile.peak <= 0:
            raise InvalidArgument("the profile never rises above 0", field="profile")

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
        """Rate (open) or users (closed) over time."""
        if self.profile is not None:
            return self.profile
        level = self.rate if self.mode is Mode.OPEN else float(self.users)
        return constant(level, self.duration_s)
