"""The monitor's byte-level batch builder makes the same MetricBatch as building messages."""

from __future__ import annotations

import random

import pytest

from aifb.monitor.model import COUNTER, GAUGE, BatchBuilder, Sample
from aifb.v1 import telemetry_pb2

pytestmark = pytest.mark.unit


def _reference(samples: list[Sample], now: int, resource: dict[str, str]
               ) -> telemetry_pb2.MetricBatch:
    grouped: dict[tuple[str, tuple[tuple[str, str], ...]], list[Sample]] = {}
    for s in samples:
        grouped.setdefault((s.name, s.labels), []).append(s)
    batch = telemetry_pb2.MetricBatch(
        resource=telemetry_pb2.TelemetryResource(attributes=resource))
    for (name, labels), group in grouped.items():
        points = sorted((now if s.timestamp_ms is None else s.timestamp_ms, s.value)
                        for s in group)
        batch.series.add(name=name, labels=dict(labels), type=group[0].type,  # type: ignore[arg-type]
                         help=group[0].help, timestamps_ms=[t for t, _ in points],
                         values=[v for _, v in points])
    return batch


@pytest.mark.parametrize("seed", range(4))
def test_built_batches_equal_message_built_ones(seed: int) -> None:
    rng = random.Random(seed)
    builder = BatchBuilder()
    for _ in range(20):
        now = rng.choice([1_764_000_000_000, 0, 5, 2**40])
        # A series' type and help are fixed by its name (the builder caches them per series).
        names = [f"m{rng.randrange(5)}" for _ in range(rng.randrange(0, 30))]
        samples = [Sample(name,
                          tuple(sorted({"a": str(rng.randrange(3)), "é": "x\"y"}.items())),
                          rng.choice([0.0, -1.5, 1e300, float("inf"), rng.random()]),
                          GAUGE if name < "m3" else COUNTER, "" if name == "m0" else "Help.",
                          rng.choice([None, None, None, now - 5, 7]))
                   for name in names]
        resource = {"node": "n1", "agent": "a"}
        assert builder.build(samples, now, resource) == _reference(samples, now, resource)


def test_one_point_series_take_the_joined_path_and_equal_message_built_ones() -> None:
    """Every sample its own series at the collection time (the usual collection): built by
    one join of cached identities, for timestamps of every varint length, NaN and -0.0 too."""
    builder = BatchBuilder()
    rng = random.Random(7)
    for now in [1_764_000_000_000, 5, 2**40, 1_764_000_000_001, 300]:
        samples = [Sample(f"m{i % 7}", (("cpu", str(i)), ("é", "x\"y")),
                          rng.choice([0.0, -0.0, -1.5, 1e300, float("nan"), rng.random()]),
                          GAUGE if i % 2 else COUNTER, "Help." if i % 3 else "")
                   for i in range(rng.randrange(1, 40))]
        resource = {"node": "n1", "agent": "a"}
        built = builder.build(samples, now, resource)
        # Map fields (labels, resource attributes) serialize in hash order unless deterministic.
        assert (built.SerializeToString(deterministic=True)
                == _reference(samples, now, resource).SerializeToString(deterministic=True))
