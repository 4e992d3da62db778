"""Scrape targets follow the recipe: the server publishes a service's `metrics:` endpoint, and
discovery scrapes only services that declare one, at its port and path on the job's host."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from aifb.mesh.auth import Principal
from aifb.mesh.discovery import ServiceDiscovery, metrics_url_of, target_from_service
from aifb.server.convert import service_to_proto
from aifb.server.deploy import Deployer, ResourceRequest
from aifb.server.embedded import embedded_config
from aifb.server.jobs import JobSpec, JobStatus
from aifb.server.manager import EventKind, ServiceManager
from aifb.server.model import ServiceRecord
from aifb.server.registry import Registry
from aifb.server.states import ServiceState
from aifb.v1 import server_pb2

pytestmark = pytest.mark.unit
S = ServiceState

RECIPE = """\
name: {name}
parameters:
  port: {{type: port, default: 0}}
  admin: {{type: port, default: {admin}}}
command: [prog, "{{{{ port }}}}", "{{{{ admin }}}}"]
readiness:
  http: {{port: "{{{{ port }}}}", path: /health}}
{metrics}"""


def _ready(record: ServiceRecord, **changes: object) -> ServiceRecord:
    base: dict[str, object] = {"state": S.READY, "endpoint_host": "gpu02", "endpoint_port": 8000,
                               "nodes": "gpu02", "job_id": "7"}
    base.update(changes)
    return record.evolve(1.0, **base)


def _record(**changes: object) -> ServiceRecord:
    return _ready(ServiceRecord(id="a1", owner="u", recipe="r", state=S.STARTING), **changes)


def test_a_service_whose_recipe_declares_no_metrics_is_not_scraped() -> None:
    svc = service_to_proto(_record())
    assert not svc.HasField("metrics")
    assert target_from_service(svc).metrics_url == ""


def test_metrics_on_the_endpoint_port_are_scraped_on_the_reported_host_and_port() -> None:
    svc = service_to_proto(_record(metrics_path="/metrics", metrics_on_endpoint_port=True))
    assert (svc.metrics.port, svc.metrics.path) == (8000, "/metrics")
    assert svc.metrics.url == "http://gpu02:8000/metrics"
    assert target_from_service(svc).metrics_url == "http://gpu02:8000/metrics"


def test_metrics_on_a_fixed_other_port_and_path_are_followed() -> None:
    svc = service_to_proto(_record(metrics_path="/admin/prom", metrics_port=9100))
    assert target_from_service(svc).metrics_url == "http://gpu02:9100/admin/prom"


def test_an_https_endpoint_keeps_its_scheme_for_metrics_on_the_same_port() -> None:
    svc = service_to_proto(_record(endpoint_url="https://gpu02:8000/", metrics_path="/metrics",
                                   metrics_on_endpoint_port=True))
    assert svc.metrics.url == "https://gpu02:8000/metrics"


@pytest.mark.parametrize("changes", [
    {"state": S.STARTING},                                      # not ready yet
    {"state": S.STOPPING},                                      # on its way out
    {"metrics_port": 0},                                        # an auto port not known here
    {"labels": {"aifb.metrics": "false"}},                      # the user's opt-out
])
def test_no_scrape_before_ready_on_an_unknown_port_or_when_opted_out(
        changes: dict[str, object]) -> None:
    fields: dict[str, object] = {"metrics_path": "/metrics", "metrics_port": 9100, **changes}
    svc = service_to_proto(_record(**fields))
    assert svc.HasField("metrics") and metrics_url_of(svc) == ""


def test_discovery_uses_the_declared_port_when_the_server_sent_no_url() -> None:
    svc = server_pb2.Service(name="services/x", state=server_pb2.SERVICE_STATE_READY,
                             endpoint={"host": "gpu02", "port": 8000},
                             metrics={"port": 9100, "path": "/m"})
    assert metrics_url_of(svc) == "http://gpu02:9100/m"


class _Scheduler:
    name = "local"

    async def submit(self, spec: JobSpec, script: str) -> str:
        return "7"

    async def query(self, job_ids: object) -> dict[str, JobStatus]:
        return {}

    async def cancel(self, job_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(("name", "admin", "metrics", "url"), [
    ("plain", 9100, "", ""),
    ("declined", 9100, "metrics: false\n", ""),
    ("same", 9100, "metrics: {path: /metrics}\n", "http://gpu02:{port}/metrics"),
    ("fixed", 9100, 'metrics: {port: "{{ admin }}", path: /prom}\n', "http://gpu02:9100/prom"),
    ("auto", 0, 'metrics: {port: "{{ admin }}"}\n', ""),
])
def test_from_recipe_to_scrape_target_through_the_manager(
        tmp_path: Path, name: str, admin: int, metrics: str, url: str) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / f"{name}.yaml").write_text(RECIPE.format(name=name, admin=admin,
                                                        metrics=metrics))
    config = embedded_config(tmp_path, recipe_dirs=[str(recipes)])
    manager = ServiceManager(Registry(tmp_path / "server.db"), _Scheduler(),
                             Deployer.from_config(config, python=sys.executable),
                             home=tmp_path, advertise_address="login1:1")
    user = Principal(user="u")

    async def scenario() -> server_pb2.Service:
        record = await manager.create(user, name, {}, ResourceRequest(), {}, "")
        await manager.report_event(user, record.name, EventKind.STARTING)
        ready = await manager.report_event(user, record.name, EventKind.READY, host="gpu02",
                                           port=41234)
        return service_to_proto(ready)

    svc = asyncio.run(scenario())
    manager.registry.close()
    discovery = ServiceDiscovery(None, node="gpu02")
    svc.job.nodes = "gpu02"
    discovery.apply(svc)
    assert discovery.targets[svc.name].metrics_url == url.format(port=41234)


@pytest.mark.parametrize(("env", "http", "url"), [
    ({"AIFB_METRICS_PATH": "/m", "AIFB_METRICS_PORT": "9100"}, False,
     "http://127.0.0.1:9100/m"),                       # declared port, even for a TCP check
    ({"AIFB_METRICS_PATH": "off"}, True, ""),          # the recipe declares no metrics
    ({}, True, "http://127.0.0.1:8000/metrics"),      # a job from before `metrics:` was sent
    ({}, False, ""),
])
def test_the_in_job_sidecar_scrapes_where_the_job_environment_says(
        tmp_path: Path, env: dict[str, str], http: bool, url: str) -> None:
    from aifb.job.sidecars import JobSidecars

    sidecars = JobSidecars("services/a1", {"AIFB_SIDECARS": "monitor",
                                           "AIFB_SERVER": "127.0.0.1:1",
                                           "AIFB_REPORT_TOKEN": "t", **env}, tmp_path, [])
    sidecars.ready(8000, http=http)
    assert sidecars.monitor is not None
    (target,) = sidecars.monitor.discovery.targets.values()
    assert target.metrics_url == url
