"""Open-loop arrival schedules: intended send times for constant, Poisson and gamma arrivals.

Arrivals are drawn in "operational time" (unit mean spacing: fixed for `constant`, exponential
for `poisson`, gamma with shape k and mean 1 for `gamma`) and mapped to wall time through the
inverse of the profile's cumulative rate. One code path therefore gives a constant rate, a
non-homogeneous Poisson process on a ramp, or bursty gamma arrivals on steps, and the expected
number of arrivals in [0, t] is exactly `profile.cumulative(t)`. Times are integer nanoseconds
from the run start; the generator is lazy, so a long run costs no memory.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterator

from aifb.client.engine.profiles import Profile
from aifb.mesh.errors import InvalidArgument

__all__ = ["Arrival", "arrival_offsets_ns"]


class Arrival(enum.StrEnum):
    CONSTANT = "constant"
    POISSON = "poisson"
    GAMMA = "gamma"


def _gaps(arrival: Arrival, burstiness: float, rng: random.Random) -> Iterator[float]:
    if arrival is Arrival.CONSTANT:
        while True:
            yield 1.0
    elif arrival is Arrival.POISSON:
        expo = rng.expovariate
        while True:
            yield expo(1.0)
    else:
        # shape k, scale 1/k: mean 1, coefficient of variation 1/sqrt(k); k < 1 is burstier
        # than Poisson, k = 1 is Poisson, k > 1 is smoother.
        gamma = rng.gammavariate
        shape, scale = burstiness, 1.0 / burstiness
        while True:
            yield gamma(shape, scale)


def arrival_offsets_ns(profile: Profile, arrival: Arrival | str = Arrival.CONSTANT, *,
                       burstiness: float = 1.0, seed: int | None = None) -> Iterator[int]:
    """Intended send times (ns from the run start) over the whole profile, in order.

    Constant arrivals start at 0 and are 1/r apart (0, 1/r, 2/r, ...), so n seconds at rate r
    give exactly n*r arrivals; random ones start after a first random gap.
    """
    try:
        kind = Arrival(arrival)
    except ValueError:
        raise InvalidArgument(f"unknown arrival process {arrival!r}; valid: "
                              f"{', '.join(a.value for a in Arrival)}", field="arrival") from None
    if not (math.isfinite(burstiness) and burstiness > 0):
        raise InvalidArgument("burstiness must be > 0 (1 = Poisson)", field="burstiness")
    rng = random.Random(seed)
    bounds: list[tuple[float, float, float]] = []  # (units at stage start, t at start, units)
    units = t0 = 0.0
    for st in profile.stages:
        span = st.cumulative(st.duration_s)
        bounds.append((units, t0, span))
        units += span
        t0 += st.duration_s
    total_units = units
    u = 0.0
    gaps = _gaps(kind, burstiness, rng)
    if kind is not Arrival.CONSTANT:
        u = next(gaps)
    idx = 0
    while u < total_units:
        while idx < len(bounds) and u >= bounds[idx][0] + bounds[idx][2]:
            idx += 1
        if idx >= len(bounds):
            return
        u_start, t_start, _ = bounds[idx]
        tau = profile.stages[idx].invert(u - u_start)
        if math.isfinite(tau):
            yield round((t_start + tau) * 1e9)
        u += next(gaps)
