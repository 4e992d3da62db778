"""The error budget: how many errors a run may have before it FAILS. One rule, checked in one place.

    budget = ErrorBudget(max_ratio=0.05)             # --error-budget 5%
    reason = budget.exceeded(errors, completed, by_kind)   # live, each engine interval
    budget.judge(result)                             # once more, over a finished (merged) run

A budget is a count (`max_errors`, 0 = none), a ratio of completed requests (`max_ratio`,
1.0 = none), or both. While a run goes, the engine asks `exceeded` every interval and stops the
run FAILED with the reason it returns; the ratio is judged only once `min_requests` requests
completed, so the first few answers do not decide a run. A run split over worker processes or
Spark partitions gives each partition its share of the count (`aifb.client.scaleout.split`), and
the ratio is judged once more over the merged result by `judge`, with no minimum: the run is
over, every request counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from aifb.client.engine.results import LoadResult, RunState
from aifb.mesh.errors import InvalidArgument

__all__ = ["ErrorBudget"]


@dataclass(frozen=True, slots=True)
class ErrorBudget:
    max_errors: int = 0  # 0 = no count budget
    max_ratio: float = 1.0  # 1.0 = no ratio budget
    min_requests: int = 100  # completed requests before the ratio is judged live

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_ratio) or not 0.0 <= self.max_ratio <= 1.0:
            raise InvalidArgument(f"the error budget's ratio must be within 0..1, got "
                                  f"{self.max_ratio}", field="budget.max_ratio")
        for name in ("max_errors", "min_requests"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must be >= 0", field=f"budget.{name}")

    @property
    def limited(self) -> bool:
        return self.max_errors > 0 or self.max_ratio < 1.0

    def count_spent(self, errors: int) -> bool:
        """The count alone: what the engine asks after each failed request (the ratio waits
        for the interval's `exceeded`)."""
        return 0 < self.max_errors < errors

    def exceeded(self, errors: int, completed: int, by_kind: Mapping[str, int], *,
                 final: bool = False) -> str | None:
        """Why the budget is spent at these counts, or None. `final` judges the ratio at any
        number of completed requests (the run is over)."""
        if self.count_spent(errors):
            return (f"error budget exceeded: {errors} errors > max_errors {self.max_errors} "
                    f"({_top(by_kind)})")
        if (self.max_ratio < 1.0 and completed and (final or completed >= self.min_requests)
                and errors / completed > self.max_ratio):
            return (f"error budget exceeded: error ratio {errors / completed:.4f} > "
                    f"{self.max_ratio:g} after {completed} requests ({_top(by_kind)})")
        return None

    def judge(self, result: LoadResult) -> None:
        """A run that SUCCEEDED but spent the budget over its measured requests becomes FAILED.

        Only the ratio is judged here: the count was enforced live, per partition."""
        if result.state is not RunState.SUCCEEDED:
            return
        reason = ErrorBudget(max_ratio=self.max_ratio).exceeded(
            result.counters["errors"], result.counters["completed"], result.errors_by_kind,
            final=True)
        if reason is not None:
            result.state, result.reason = RunState.FAILED, reason


def _top(by_kind: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in sorted(by_kind.items(), key=lambda kv: -kv[1])[:3])
