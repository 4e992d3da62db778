"""The monitor's own exposition parser reads what prometheus_client's parser reads."""

from __future__ import annotations

import math

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from aifb.monitor.model import Sample
from aifb.monitor.scrape import _sample_type, parse_exposition

pytestmark = pytest.mark.unit


def _reference(text: str, extra: dict[str, str]) -> list[Sample]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created") or math.isnan(s.value):
                continue
            labels = dict(s.labels)
            for key, value in extra.items():
                if key in labels:
                    labels[f"exported_{key}"] = labels.pop(key)
                labels[key] = value
            ts = None if s.timestamp is None else int(float(s.timestamp) * 1000)
            out.append(Sample(s.name, tuple(sorted(labels.items())), float(s.value),
                              _sample_type(family.type, s.name), family.documentation, ts))
    return out


def test_parser_matches_prometheus_client_on_every_metric_kind() -> None:
    r = CollectorRegistry()
    c = Counter("req", "Requests\nmulti \\ line.", ["route", "job_id"], registry=r)
    g = Gauge("depth", "Queue depth.", registry=r)
    h = Histogram("lat_seconds", "Latency.", ["route"], registry=r)
    sm = Summary("sz_bytes", "Sizes.", registry=r)
    Info("build", "Build info.", registry=r).info({"version": "1.2"})
    Enum("st", "State.", states=["a", "b"], registry=r)
    for i in range(5):
        c.labels(route='a"b\\c\nd', job_id="x").inc()
        h.labels(route="r").observe(i / 3)
        sm.observe(i)
    g.set(float("nan"))
    text = generate_latest(r).decode() + (
        '# TYPE x gauge\nx{a="1"} 2 1700000000000\nuntyped_thing 3\nx2{a="1",} -Inf\n'
        '# TYPE sum2 summary\nsum2{quantile="0.5"} 1\nsum2_count 2\n')
    extra = {"job_id": "9", "service": "s"}
    ours = parse_exposition(text, extra)
    assert ours == _reference(text, extra)
    assert len(ours) > 20
    assert any(("exported_job_id", "x") in s.labels for s in ours)


def test_a_malformed_line_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="bad exposition line"):
        parse_exposition("ok 1\nthis is not a sample\n", {})
    with pytest.raises(ValueError, match="bad labels"):
        parse_exposition('x{a=unquoted} 1\n', {})
