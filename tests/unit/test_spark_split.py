"""Splitting a LoadSpec over Spark partitions: the union of the shares is the same load."""

from __future__ import annotations

import itertools

import pytest

from aifb.client.engine.budget import ErrorBudget
from aifb.client.engine.profiles import ramp
from aifb.client.engine.progress import Progress
from aifb.client.engine.schedule import Arrival, arrival_offsets_ns
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.scaleout.hub import merge_samples
from aifb.client.scaleout.split import split_spec
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit


def test_open_loop_rate_splits_evenly_and_staggered_schedules_rebuild_the_whole() -> None:
    spec = LoadSpec(mode=Mode.OPEN, rate=1000.0, duration_s=2.0)
    plans = split_spec(spec, 4)
    assert [p.spec.rate for p in plans] == [250.0] * 4
    assert [p.stagger_ns for p in plans] == [0, 1_000_000, 2_000_000, 3_000_000]
    merged = sorted(itertools.chain.from_iterable(
        (p.stagger_ns + t for t in arrival_offsets_ns(p.spec.level_profile(), p.spec.arrival))
        for p in plans))
    whole = list(arrival_offsets_ns(spec.level_profile(), spec.arrival))
    assert len(merged) == len(whole) == 2000
    assert max(abs(a - b) for a, b in zip(merged, whole, strict=True)) <= 1


def test_random_arrivals_get_distinct_seeds_and_no_stagger() -> None:
    spec = LoadSpec(mode=Mode.OPEN, rate=90.0, arrival=Arrival.POISSON, seed=7)
    plans = split_spec(spec, 3)
    assert len({p.spec.seed for p in plans}) == 3
    assert {p.stagger_ns for p in plans} == {0}
    assert split_spec(LoadSpec(mode=Mode.OPEN, rate=9.0, arrival=Arrival.POISSON), 3)[0] \
        .spec.seed is None


def test_closed_loop_users_split_with_the_remainder_spread_first() -> None:
    plans = split_spec(LoadSpec(mode=Mode.CLOSED, users=11), 4)
    assert [p.spec.users for p in plans] == [3, 3, 3, 2]
    assert {p.stagger_ns for p in plans} == {0}
    assert [p.spec.users for p in split_spec(LoadSpec(users=2), 8)] == [1, 1]  # no idle shares


def test_bounds_split_and_zero_means_unbounded_everywhere() -> None:
    plans = split_spec(LoadSpec(users=4, max_requests=10, max_in_flight=5), 3)
    assert [p.spec.max_requests for p in plans] == [4, 3, 3]
    assert [p.spec.budget.max_errors for p in plans] == [0, 0, 0]
    assert [p.spec.max_in_flight for p in plans] == [2, 2, 1]
    assert [p.spec.max_requests for p in split_spec(LoadSpec(users=4, max_requests=1), 2)] == [
        1, 1]


def test_the_error_budgets_count_is_shared_and_its_ratio_kept_by_every_partition() -> None:
    spec = LoadSpec(users=4, budget=ErrorBudget(max_errors=10, max_ratio=0.02, min_requests=7))
    budgets = [p.spec.budget for p in split_spec(spec, 3)]
    assert [b.max_errors for b in budgets] == [4, 3, 3]
    assert {(b.max_ratio, b.min_requests) for b in budgets} == {(0.02, 7)}


def test_a_rate_profile_is_scaled_so_the_shares_add_up() -> None:
    spec = LoadSpec(mode=Mode.OPEN, profile=ramp(100.0, 300.0, 4.0))
    plans = split_spec(spec, 2)
    for t in (0.0, 1.0, 3.5):
        total = sum(p.spec.level_profile().level_at(t) for p in plans)
        assert total == pytest.approx(spec.level_profile().level_at(t))
    assert plans[1].stagger_ns == round(1e9 / 200.0)  # 1 / mean rate


@pytest.mark.parametrize("n", [0, -1, 1025])
def test_partitions_out_of_range_are_rejected(n: int) -> None:
    with pytest.raises(InvalidArgument, match="partitions") as err:
        split_spec(LoadSpec(), n)
    assert err.value.field == "partitions"


def test_progress_samples_merge_by_sum_and_worst_percentile() -> None:
    a = Progress(second=2, elapsed_s=3.0, phase="measure", requests=100, errors=1, dropped=0,
                 achieved_rate=100.0, target_rate=100.0, p50_s=0.0005, p99_s=0.0009,
                 lag_p99_s=0.00004, in_flight=3, total_requests=300, total_errors=2)
    b = Progress(second=2, elapsed_s=3.001, phase="measure", requests=50, errors=0, dropped=2,
                 achieved_rate=50.0, target_rate=50.0, p50_s=0.0007, p99_s=0.0008,
                 lag_p99_s=0.00006, in_flight=1, total_requests=140, total_errors=0)
    m = merge_samples([a, b])
    assert (m.second, m.elapsed_s, m.requests, m.errors, m.dropped) == (2, 3.001, 150, 1, 2)
    assert (m.achieved_rate, m.target_rate, m.in_flight) == (150.0, 150.0, 4)
    assert (m.p50_s, m.p99_s, m.lag_p99_s) == (0.0007, 0.0009, 0.00006)
    assert (m.total_requests, m.total_errors) == (440, 2)
