"""What a workload implements so that Spark runs part of its setup once, not once per partition.

Some workloads prepare shared state on the target: `vectordb` recreates a collection and inserts
the vectors its queries then search. Run by every partition, that work would be repeated N times
into the same collection (each partition dropping what the others inserted), and its figures
summed N times. A `SharedSetup` workload splits it off:

1. the driver builds the workload and awaits `setup_shared()` before the Spark stage starts:
   the shared work runs once, and it returns a picklable state (for `vectordb`: the queries,
   their exact neighbours, the collection's size);
2. each partition builds its own workload, calls `adopt_shared(state)`, then the engine runs as
   usual: `prepare()` now only attaches to what the driver set up, `close()` leaves it alone;
3. after the stage the driver awaits `teardown_shared()` (drop the collection unless kept) and
   merges: `merge_extra` combines the partitions' `extra_metrics()` (a ratio is not a sum), and
   `shared_metrics()` (the insert phase's figures) is added once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["SharedSetup"]


@runtime_checkable
class SharedSetup(Protocol):
    async def setup_shared(self) -> object:
        """Driver: do the once-per-run work; return the state the partitions adopt."""

    def adopt_shared(self, state: object) -> None:
        """Partition: take the driver's state before `prepare()`."""

    async def teardown_shared(self) -> None:
        """Driver, after every partition ended (whatever their state): undo the setup."""

    def shared_metrics(self) -> dict[str, float]:
        """Driver: the setup's own figures, reported once in the merged result."""

    def merge_extra(self, extras: list[dict[str, float]]) -> dict[str, float]:
        """Driver: the partitions' `extra_metrics()` combined into the run's."""
