"""The error budget: one rule for the live check (the engine, each interval) and the final one (a
finished run's merged result), and its bounds checked where it is made."""

from __future__ import annotations

import pytest

from aifb.client.engine.budget import ErrorBudget
from aifb.client.engine.results import LoadResult, RunState
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit


def test_no_budget_never_fails_a_run() -> None:
    assert not ErrorBudget().limited
    assert ErrorBudget().exceeded(10**6, 10**6, {"connect": 10**6}, final=True) is None


def test_the_count_is_spent_past_max_errors_and_names_the_commonest_kinds() -> None:
    budget = ErrorBudget(max_errors=10)
    assert budget.exceeded(10, 11, {"status_503": 10}) is None
    reason = budget.exceeded(11, 12, {"status_503": 9, "timeout": 1, "connect": 1, "closed": 0})
    assert reason == ("error budget exceeded: 11 errors > max_errors 10 "
                      "(status_503: 9, timeout: 1, connect: 1)")


def test_the_ratio_is_judged_live_only_after_min_requests_but_at_the_end_always() -> None:
    budget = ErrorBudget(max_ratio=0.05, min_requests=100)
    assert budget.exceeded(50, 99, {"timeout": 50}) is None  # too early to say
    assert budget.exceeded(5, 100, {"timeout": 5}) is None  # exactly 5 %: within
    assert budget.exceeded(6, 100, {"timeout": 6}) == (
        "error budget exceeded: error ratio 0.0600 > 0.05 after 100 requests (timeout: 6)")
    assert budget.exceeded(1, 10, {"timeout": 1}, final=True) is not None
    assert budget.exceeded(0, 0, {}, final=True) is None  # nothing completed: nothing to judge


def test_judge_fails_a_succeeded_run_over_its_ratio_and_leaves_other_states_alone() -> None:
    budget = ErrorBudget(max_ratio=0.1, max_errors=1)  # the count is a live rule only
    ok = LoadResult(state=RunState.SUCCEEDED)
    ok.counters.update(completed=100, errors=10)
    budget.judge(ok)
    assert ok.state is RunState.SUCCEEDED and ok.reason == ""
    spent = LoadResult(state=RunState.SUCCEEDED, errors_by_kind={"status_500": 11})
    spent.counters.update(completed=100, errors=11)
    budget.judge(spent)
    assert spent.state is RunState.FAILED
    assert spent.reason.startswith("error budget exceeded: error ratio 0.1100 > 0.1 after 100")
    cancelled = LoadResult(state=RunState.CANCELLED, reason="cancelled by alice")
    cancelled.counters.update(completed=10, errors=10)
    budget.judge(cancelled)
    assert (cancelled.state, cancelled.reason) == (RunState.CANCELLED, "cancelled by alice")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_ratio": 1.5}, "budget.max_ratio"), ({"max_ratio": float("nan")}, "budget.max_ratio"),
    ({"max_ratio": -0.1}, "budget.max_ratio"), ({"max_errors": -1}, "budget.max_errors"),
    ({"min_requests": -1}, "budget.min_requests")])
def test_a_bad_budget_is_refused_naming_its_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        ErrorBudget(**kwargs)  # type: ignore[arg-type]
    assert exc.value.field == field
