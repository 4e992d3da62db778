"""Load profiles: a sequence of stages whose level (rate, or users) is constant or ramps linearly.

A profile is what changes over a run: requests per second in open loop, concurrent users in closed
loop. `constant`, `ramp` and `steps` build the usual shapes; `Profile.level_at(t)` and
`Profile.cumulative(t)` (the integral of the level, i.e. the expected number of arrivals) are what
the schedule and the user manager read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from aifb.mesh.errors import InvalidArgument

__all__ = ["Profile", "Stage", "constant", "ramp", "steps"]


@dataclass(frozen=True, slots=True)
class Stage:
    """`duration_s` seconds going linearly from `start` to `end` (equal for a step)."""

    duration_s: float
    start: float
    end: float

    def level_at(self, tau: float) -> float:
        if self.duration_s <= 0:
            return self.end
        return self.start + (self.end - self.start) * (tau / self.duration_s)

    def cumulative(self, tau: float) -> float:
        """Integral of the level from the stage start to tau."""
        slope = (self.end - self.start) / self.duration_s if self.duration_s > 0 else 0.0
        return self.start * tau + 0.5 * slope * tau * tau

    def invert(self, units: float) -> float:
        """The tau at which cumulative(tau) == units (0 <= units <= cumulative(duration))."""
        slope = (self.end - self.start) / self.duration_s if self.duration_s > 0 else 0.0
        if slope == 0.0:
            return units / self.start if self.start > 0 else math.inf
        disc = self.start * self.start + 2.0 * slope * units
        root = math.sqrt(max(disc, 0.0))
        denom = self.start + root
        return 2.0 * units / denom if denom > 0 else math.inf


@dataclass(frozen=True, slots=True)
class Profile:
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        if not self.stages:
            raise InvalidArgument("a profile needs at least one stage", field="profile")
        for i, st in enumerate(self.stages):
            if not (math.isfinite(st.duration_s) and st.duration_s > 0):
                raise InvalidArgument("stage duration must be > 0 s",
                                      field=f"profile.stages[{i}].duration")
            if not (math.isfinite(st.start) and math.isfinite(st.end)) or min(
                    st.start, st.end) < 0:
                raise InvalidArgument("stage levels must be finite and >= 0",
                                      field=f"profile.stages[{i}]")

    @property
    def duration_s(self) -> float:
        return sum(st.duration_s for st in self.stages)

    @property
    def peak(self) -> float:
        return max(max(st.start, st.end) for st in self.stages)

    def level_at(self, t: float) -> float:
        for st in self.stages:
            if t < st.duration_s:
                return st.level_at(max(t, 0.0))
            t -= st.duration_s
        return self.stages[-1].end

    def cumulative(self, t: float) -> float:
        total = 0.0
        for st in self.stages:
            if t <= st.duration_s:
                return total + st.cumulative(max(t, 0.0))
            total += st.cumulative(st.duration_s)
            t -= st.duration_s
        return total

    def mean_level(self, t0: float, t1: float) -> float:
        return (self.cumulative(t1) - self.cumulative(t0)) / (t1 - t0) if t1 > t0 else 0.0


def constant(level: float, duration_s: float) -> Profile:
    return Profile((Stage(duration_s, level, level),))


def ramp(start: float, end: float, duration_s: float, hold_s: float = 0.0) -> Profile:
    """Linear ramp from start to end over duration_s, then optionally hold end for hold_s."""
    stages = [Stage(duration_s, start, end)]
    if hold_s > 0:
        stages.append(Stage(hold_s, end, end))
    return Profile(tuple(stages))


def steps(levels: Sequence[float], step_s: float) -> Profile:
    """One constant stage of step_s seconds per level."""
    return Profile(tuple(Stage(step_s, lv, lv) for lv in levels))
