"""Splitting one LoadSpec into per-partition LoadSpecs whose union is the same load.

Open loop: the rate (or the rate profile) is divided evenly, so n partitions at r/n each send r
per second in total. With constant arrivals each partition's schedule is also shifted by i/r
seconds (`stagger_ns`), so the n interleaved schedules are exactly the single-engine schedule
(0, 1/r, 2/r, ...) instead of n requests at the same instant. Poisson and gamma arrivals get a
different seed per partition (the superposition of n independent Poisson processes at r/n is a
Poisson process at r). Closed loop: `users` is split as evenly as possible, the remainder spread
one each over the first partitions; a closed-loop profile is scaled by 1/n (exact when its
levels are multiples of n). Count bounds (`max_requests`, `max_errors`, `max_in_flight`) are
split the same way (the error budget's count, `budget.max_errors`, too), so each partition
enforces its share. Explicit arrival times (a trace replay) are not split: request n must stay
the trace's entry n, so such a spec runs in one partition only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from aifb.client.engine.profiles import Profile, Stage
from aifb.client.engine.schedule import Arrival
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.mesh.errors import InvalidArgument

__all__ = ["PartitionPlan", "split_spec"]

MAX_PARTITIONS = 1024


@dataclass(frozen=True, slots=True)
class PartitionPlan:
    """One partition's share of the load, and its offset from the common start."""

    index: int
    spec: LoadSpec
    stagger_ns: int = 0


def _shares(total: int, n: int) -> list[int]:
    base, rest = divmod(total, n)
    return [base + (1 if i < rest else 0) for i in range(n)]


def _scaled(profile: Profile, factor: float) -> Profile:
    return Profile(tuple(Stage(st.duration_s, st.start * factor, st.end * factor)
                         for st in profile.stages))


def _split_bound(value: int, n: int) -> list[int]:
    """A 0 (no bound) stays 0 everywhere; a bound gives every partition at least 1."""
    if value == 0:
        return [0] * n
    return [max(share, 1) for share in _shares(value, n)]


def split_spec(spec: LoadSpec, partitions: int) -> list[PartitionPlan]:
    """The per-partition plans; fewer than `partitions` when closed loop has fewer users."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidArgument(f"partitions must be in 1..{MAX_PARTITIONS}, got {partitions}",
                              field="partitions")
    n = partitions
    if spec.offsets_ns is not None and n > 1:
        raise InvalidArgument("a trace replay runs in one engine (request n is the trace's "
                              "entry n): use one worker and the in-process engine",
                              field="partitions")
    if spec.mode is Mode.CLOSED and spec.profile is None:
        n = min(n, spec.users)
    requests = _split_bound(spec.max_requests, n)
    errors = _split_bound(spec.budget.max_errors, n)
    in_flight = [max(share, 1) for share in _shares(spec.max_in_flight, n)]
    users = _shares(spec.users, n) if spec.mode is Mode.CLOSED else [spec.users] * n
    profile = _scaled(spec.profile, 1.0 / n) if spec.profile is not None else None
    stagger_s = 0.0
    if spec.mode is Mode.OPEN and spec.arrival is Arrival.CONSTANT and n > 1:
        rate = spec.level_profile().mean_level(0.0, spec.total_s)
        stagger_s = 1.0 / rate if rate > 0 else 0.0
    plans = []
    for i in range(n):
        part = dataclasses.replace(
            spec, users=users[i], rate=spec.rate / n if spec.mode is Mode.OPEN else spec.rate,
            profile=profile, max_requests=requests[i],
            budget=dataclasses.replace(spec.budget, max_errors=errors[i]),
            max_in_flight=in_flight[i],
            seed=None if spec.seed is None else spec.seed * MAX_PARTITIONS + i)
        plans.append(PartitionPlan(i, part, round(i * stagger_s * 1e9)))
    return plans
