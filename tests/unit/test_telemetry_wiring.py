"""The telemetry wiring's pure parts: config sections, the sidecar switch, spans, span trees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from rich.console import Console

from aifb.cli.logs import service_name
from aifb.cli.trace import span_tree
from aifb.collector.config import CollectorConfig
from aifb.collector.ingest import Ingest
from aifb.collector.local_spans import StoreSpanExporter
from aifb.collector.stats import Stats
from aifb.job.sidecars import NoSidecars, own_output_file, start_job_sidecars
from aifb.logger.config import LoggerConfig
from aifb.mesh.config import load_config, section_config
from aifb.mesh.errors import InvalidArgument
from aifb.monitor.config import MonitorConfig
from aifb.server.sidecars import sidecar_environment, sidecars_enabled
from aifb.v1 import collector_pb2

pytestmark = pytest.mark.unit


def _config(tmp_path: Path, **environ: str):  # type: ignore[no-untyped-def]
    return load_config(environ={"AIFB_CONFIG": str(tmp_path / "absent.yaml"), **environ})


def test_packaged_collector_defaults_are_exactly_collector_configs_defaults(
        tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert section_config(CollectorConfig, config, "collector") == CollectorConfig()
    # Every key of CollectorConfig is documented in defaults.yaml (none left implicit).
    assert set(config.collector) == set(CollectorConfig.model_fields)


def test_monitor_and_logger_sections_validate_with_their_agents_models(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert section_config(MonitorConfig, config, "monitor").interval_seconds == 5.0
    assert section_config(LoggerConfig, config, "logger").poll_interval_seconds == 0.25


def test_environment_and_flags_override_the_collector_section(tmp_path: Path) -> None:
    config = _config(tmp_path, AIFB_COLLECTOR__LOKI_URL="http://loki:3100",
                     AIFB_COLLECTOR__QUEUE_MAX_BATCHES="64")
    out = section_config(CollectorConfig, config, "collector",
                         {"loki_url": None, "metrics_listen": ""})
    assert (out.loki_url, out.queue_max_batches, out.metrics_listen) == (
        "http://loki:3100", 64, "")


_MODELS: dict[str, type[CollectorConfig] | type[MonitorConfig] | type[LoggerConfig]] = {
    "collector": CollectorConfig, "monitor": MonitorConfig, "logger": LoggerConfig}


@pytest.mark.parametrize(("environ", "where"), [
    ({"AIFB_COLLECTOR__NO_SUCH_KEY": "1"}, "collector.no_such_key"),
    ({"AIFB_COLLECTOR__FORWARD_WORKERS": "0"}, "collector.forward_workers"),
    ({"AIFB_COLLECTOR__LOKI_FORMAT": "xml"}, "collector.loki_format"),
    ({"AIFB_MONITOR__NO_SUCH_KEY": "1"}, "monitor.no_such_key"),
    ({"AIFB_MONITOR__WINDOW": "0"}, "monitor.window"),
    ({"AIFB_MONITOR__GPU": "perhaps"}, "monitor.gpu"),
    ({"AIFB_LOGGER__NO_SUCH_KEY": "1"}, "logger.no_such_key"),
    ({"AIFB_LOGGER__WINDOW": "0"}, "logger.window"),
    ({"AIFB_LOGGER__ALL_NODES": "perhaps"}, "logger.all_nodes"),
])
def test_a_bad_setting_names_its_key_the_same_way_in_every_component(
        tmp_path: Path, environ: dict[str, str], where: str) -> None:
    section = where.split(".", 1)[0]
    with pytest.raises(InvalidArgument, match=f"config: {where}:") as exc:
        section_config(_MODELS[section], _config(tmp_path, **environ), section)
    assert exc.value.field == where


@pytest.mark.parametrize("model", [CollectorConfig, LoggerConfig])
def test_a_bad_value_set_after_validation_is_refused_too(
        model: type[CollectorConfig] | type[LoggerConfig]) -> None:
    config = model()
    with pytest.raises(ValueError, match=r"window|forward_workers"):
        setattr(config, "window" if model is LoggerConfig else "forward_workers", 0)


def test_bad_sidecars_setting_is_refused_with_its_key(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"config: server\.sidecars"):
        _config(tmp_path, AIFB_SERVER__SIDECARS="sometimes")


@pytest.mark.parametrize(("setting", "scheduler", "on"), [
    ("auto", "slurm", True), ("auto", "slurmrest", True), ("auto", "local", False),
    ("on", "local", True), ("off", "slurm", False),
])
def test_sidecars_auto_means_on_for_slurm_schedulers(setting: str, scheduler: str,
                                                      on: bool) -> None:
    assert sidecars_enabled(setting, scheduler) is on


def test_sidecar_environment_needs_a_collector_to_push_to(tmp_path: Path) -> None:
    config = _config(tmp_path, AIFB_MONITOR__INTERVAL_SECONDS="2")
    assert sidecar_environment(config, "slurm", collector_here=False) == {}
    assert sidecar_environment(config, "local", collector_here=True) == {}
    assert sidecar_environment(config, "slurm", collector_here=True) == {
        "AIFB_SIDECARS": "monitor,logger", "AIFB_SIDECAR_INTERVAL": "2"}
    remote = _config(tmp_path, AIFB_SERVER__SIDECAR_COLLECTOR="login1:50052")
    assert sidecar_environment(remote, "slurm", collector_here=False)["AIFB_COLLECTOR"] == (
        "login1:50052")


def test_a_job_without_the_switch_or_an_address_runs_without_sidecars(
        tmp_path: Path) -> None:
    import asyncio

    off = asyncio.run(start_job_sidecars("services/a", {}, tmp_path, []))
    assert isinstance(off, NoSidecars)
    # Asked for, but nowhere to push: logged, and the job still runs.
    none = asyncio.run(start_job_sidecars("services/a", {"AIFB_SIDECARS": "monitor"},
                                          tmp_path, []))
    assert isinstance(none, NoSidecars)


def test_own_output_file_is_the_regular_file_behind_a_descriptor(tmp_path: Path) -> None:
    import os

    path = tmp_path / "job.out"
    with path.open("w") as fh:
        os.dup2(fh.fileno(), 99)
        try:
            assert own_output_file(99) == str(path)
        finally:
            os.close(99)
    r, w = os.pipe()
    try:
        assert own_output_file(r) == ""  # a pipe is not a file to tail
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("bad", ["", "a/b", "services/", "x y", "services/a/b"])
def test_service_name_refuses_what_is_not_a_service_id(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="not a service id"):
        service_name(bad)


def test_service_name_accepts_both_forms() -> None:
    assert service_name("3f2a9c") == service_name("services/3f2a9c") == "services/3f2a9c"


def test_store_exporter_keeps_the_sdk_spans_with_their_parents() -> None:
    ingest = Ingest(CollectorConfig(), Stats())
    provider = TracerProvider(resource=Resource.create({"service.name": "aifb"}))
    provider.add_span_processor(SimpleSpanProcessor(StoreSpanExporter(ingest)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("outer") as outer, \
            tracer.start_as_current_span("inner") as inner:
        inner.set_attribute("aifb.service", "abc")
    trace_id = format(outer.get_span_context().trace_id, "032x")
    spans = {s.name: s for s in ingest.traces.get(trace_id)}
    assert set(spans) == {"outer", "inner"}
    assert spans["inner"].parent_span_id == spans["outer"].span_id
    assert spans["outer"].parent_span_id == ""
    assert spans["inner"].attributes == {"aifb.service": "abc"}
    assert spans["outer"].service_name == "aifb"
    assert spans["inner"].end_ns >= spans["inner"].start_ns > 0
    assert ingest.stats.spans_received == 2


def _span(span_id: str, parent: str, name: str, start_ms: int) -> collector_pb2.Span:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(start_ms)
    end = timestamp_pb2.Timestamp()
    end.FromMilliseconds(start_ms + 5)
    return collector_pb2.Span(trace_id="a" * 32, span_id=span_id, parent_span_id=parent,
                              name=name, start_time=ts, end_time=end)


def test_span_tree_nests_children_and_marks_spans_whose_parent_is_not_kept() -> None:
    spans = [_span("02", "01", "child-late", 30), _span("01", "", "root", 0),
             _span("03", "01", "child-early", 10), _span("04", "ff", "orphan", 50)]
    console = Console(width=200, record=True)
    console.print(span_tree("a" * 32, spans))
    lines = console.export_text().splitlines()
    assert lines[0] == f"trace {'a' * 32} (4 spans)"
    names = [next(n for n in ("child-early", "child-late", "root", "orphan") if n in line)
             for line in lines[1:]]
    assert names == ["root", "child-early", "child-late", "orphan"]
    indent = {n: len(line) - len(line.lstrip("│├└─ ")) for n, line in zip(names, lines[1:],
                                                                          strict=True)}
    assert indent["child-early"] == indent["child-late"] > indent["root"] == indent["orphan"]
    assert "(parent not kept)" in lines[4] and "(parent not kept)" not in lines[1]


@pytest.mark.parametrize(("settings", "message"), [
    ({"remote_write_url": "foo"}, "collector.remote_write_url: expected an http(s) URL"),
    ({"remote_write_url": "ftp://h/api/v1/write"}, "collector.remote_write_url"),
    ({"loki_url": "http://loki:port"}, "collector.loki_url: bad port"),
    ({"loki_url": "http:///nohost"}, "collector.loki_url: expected"),
])
def test_unusable_forwarding_urls_are_refused_naming_the_setting(
        settings: dict[str, str], message: str) -> None:
    from aifb.collector.targets import check_targets

    with pytest.raises(InvalidArgument, match=re.escape(message)):
        check_targets(CollectorConfig(**settings))


def test_usable_forwarding_urls_pass() -> None:
    from aifb.collector.targets import check_targets

    config = CollectorConfig(remote_write_url="https://prom:9090/api/v1/write",
                             loki_url="http://127.0.0.1:3100")
    assert check_targets(config) is config


def test_collector_log_store_returns_lines_of_equal_time_in_arrival_order() -> None:
    """The logger stamps every line read in one poll with the same time; `aifb logs` must
    still print them in the order the job wrote them."""
    from aifb.collector.model import LogRecord
    from aifb.collector.stores import LogStore

    store = LogStore(100)
    labels = (("service", "services/a"),)
    store.extend([LogRecord(labels, 5, f"line {i}") for i in range(4)])
    store.extend([LogRecord(labels, 9, "later")])
    assert [r.line for r in store.query({}, 0, 0, 10)] == [
        "line 0", "line 1", "line 2", "line 3", "later"]
    assert [r.line for r in store.query({}, 0, 0, 3)] == ["line 2", "line 3", "later"]
