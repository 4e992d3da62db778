"""The BenchmarkService on its own (`aifb bench serve --server ...`), a separate process from
`aifb up`: `aifb bench run --service` through it resolves the service through the server's
ServerService on the caller's behalf and reports the same context as the embedded mesh does;
another user's token, an unknown or stopped service, no server and a server that is down give
one clear line naming the server. `GrpcResolver` itself against an in-process server: the
service's record, recipe and batch script, the caller's token forwarded, this service's own
token borrowed for callers without one, and each failure as the mesh error that names the
server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aifb.client.service.remote_targets import GrpcResolver
from aifb.client.service.targets import Target
from aifb.mesh.auth import Principal, TokenStore
from aifb.mesh.channel import auth_metadata, raise_for_rpc_error
from aifb.mesh.errors import (
    AifbError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from aifb.mesh.tracing import make_tracer_provider
from aifb.server.embedded import ThreadedServer
from aifb.v1 import client_pb2 as C
from aifb.v1 import client_pb2_grpc
from aifb.v1 import server_pb2 as S
from tests.fixtures.server import server_config
from tests.integration.cli_procs import AIFB, Daemon, free_port, until
from tests.integration.flow import ready_service, wait_for_state

pytestmark = pytest.mark.integration


@dataclass
class Cluster:
    """`aifb up` (the server) and `aifb bench serve` as two processes sharing one home."""

    tmp: Path
    env: dict[str, str]
    up: Daemon
    server: str
    bench: Daemon
    bench_address: str

    @property
    def home(self) -> Path:
        return self.tmp / "home"

    def aifb(self, address: str, *args: str, token: str | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if token is not None:
            env["AIFB_TOKEN"] = token
        return subprocess.run([str(AIFB), "--home", str(self.home), "--server", address, *args],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              env=env, cwd=self.tmp)

    def json(self, address: str, *args: str) -> Any:
        proc = self.aifb(address, "--output", "json", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)

    def bench_serve(self, *args: str) -> tuple[Daemon, str]:
        return _start(lambda port: ["--home", str(self.home), "bench", "serve", "--listen",
                                    f"127.0.0.1:{port}", *args],
                      env=self.env, cwd=self.tmp, ready_text="benchmark service is up on")

    def create_nginx(self) -> dict[str, Any]:
        svc: dict[str, Any] = self.json(self.server, "services", "create", "nginx", "--param",
                                        "port=0", "--wait", "--wait-timeout", "90")
        assert svc["state"] == "SERVICE_STATE_READY", svc
        return svc


def _start(argv: Any, *, env: dict[str, str], cwd: Path, ready_text: str) -> tuple[Daemon, str]:
    """Start a daemon on a free port (another test may take the port first: try again)."""
    last: AssertionError | None = None
    for _ in range(3):
        port = free_port()
        try:
            return Daemon.start(argv(port), env=env, cwd=cwd, ready_text=ready_text), (
                f"127.0.0.1:{port}")
        except AssertionError as exc:
            last = exc
    raise AssertionError(f"did not start: {last}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("bench-standalone")
    env = {k: v for k, v in os.environ.items()
           if k not in ("AIFB_TOKEN", "AIFB_TOKEN_FILE", "AIFB_SERVER_ADDRESS", "AIFB_HOME")}
    env["HOME"] = str(tmp)
    home = str(tmp / "home")
    up, server = _start(lambda port: ["--home", home, "up", "--listen", f"127.0.0.1:{port}",
                                      "--scheduler", "local", "--no-telemetry"],
                        env=env, cwd=tmp, ready_text="aifb is up on")
    try:
        bench, address = _start(lambda port: ["--home", home, "bench", "serve", "--listen",
                                              f"127.0.0.1:{port}", "--server", server],
                                env=env, cwd=tmp, ready_text="benchmark service is up on")
        try:
            yield Cluster(tmp, env, up, server, bench, address)
        finally:
            assert bench.stop() == 0, bench.log()
    finally:
        cluster_ = Cluster(tmp, env, up, server, bench, "")
        for svc in cluster_.json(server, "services", "list"):
            if svc["state"] not in ("SERVICE_STATE_STOPPED", "SERVICE_STATE_FAILED"):
                cluster_.aifb(server, "services", "delete", svc["name"], "--wait")
        up.stop()


@pytest.fixture(scope="module")
def nginx_service(cluster: Cluster) -> dict[str, Any]:
    return cluster.create_nginx()


def test_a_run_through_the_standalone_service_reports_the_service_recipe_and_script(
        cluster: Cluster, nginx_service: dict[str, Any]) -> None:
    name = nginx_service["name"]
    out = cluster.json(cluster.bench_address, "bench", "run", "--service",
                       name.removeprefix("services/"), "--workload", "http", "--rate", "50",
                       "--duration", "2s")
    run = out["benchmark"]
    assert run["state"] == "BENCHMARK_STATE_SUCCEEDED", run
    assert run["service"] == name and run["resolved_url"].startswith("http://")
    doc = out["report"]
    counters = doc["figures"]["counters"]
    assert counters["completed"] >= 90 and counters["errors"] == 0
    assert doc["service"]["name"] == name and doc["service"]["recipe"] == "nginx"
    assert doc["service"]["job_id"] == nginx_service["job"]["job_id"]
    assert doc["service"]["parameters"] == nginx_service["parameters"]
    assert doc["recipe"]["name"] == "nginx" and "name: nginx" in doc["recipe"]["source_yaml"]
    assert doc["batch_script"].startswith("#!") and "#SBATCH" in doc["batch_script"]
    assert "recipe_error" not in doc
    # The run lives with the standalone service, not with `aifb up`'s own BenchmarkService.
    rid = run["name"].removeprefix("benchmarks/")
    assert Path(out["directory"]) == cluster.home / "bench-serve" / rid
    assert rid not in {b["name"].removeprefix("benchmarks/")
                       for b in cluster.json(cluster.server, "bench", "list")}


def test_another_users_token_sees_no_such_service_on_the_server(
        cluster: Cluster, nginx_service: dict[str, Any]) -> None:
    # mallory is a user of both (one token store) but does not own the service: the server
    # checks the caller's token, which the benchmark service forwards, not its own.
    token = TokenStore(cluster.home).issue("mallory")
    sid = nginx_service["name"].removeprefix("services/")
    proc = cluster.aifb(cluster.bench_address, "bench", "run", "--service", sid,
                        "--duration", "1s", "--rate", "10", token=token)
    assert proc.returncode == 1
    assert f"service {sid} not found (on the aifb server at {cluster.server})" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unknown_or_stopped_service_is_refused_naming_the_server(cluster: Cluster) -> None:
    proc = cluster.aifb(cluster.bench_address, "bench", "run", "--service", "nosuchservice",
                        "--duration", "1s", "--rate", "10")
    assert proc.returncode == 1
    assert (f"service nosuchservice not found (on the aifb server at {cluster.server})"
            in proc.stderr)
    svc = cluster.create_nginx()
    cluster.json(cluster.server, "services", "delete", svc["name"], "--wait")
    proc = cluster.aifb(cluster.bench_address, "bench", "run", "--service",
                        svc["name"].removeprefix("services/"), "--duration", "1s", "--rate",
                        "10")
    assert proc.returncode == 1
    assert f"service {svc['name']} is STOPPED, not READY" in proc.stderr


def test_without_a_server_service_targets_are_refused_and_sigterm_stops_cleanly(
        cluster: Cluster, nginx_service: dict[str, Any]) -> None:
    bench, address = cluster.bench_serve("--runs-dir", str(cluster.tmp / "runs-noserver"))
    try:
        proc = cluster.aifb(address, "bench", "run", "--service", "abc", "--duration", "1s",
                            "--rate", "10")
        assert proc.returncode == 1
        assert "no server configured; pass --server" in proc.stderr
        # URL targets still run.
        endpoint = nginx_service["endpoint"]
        out = cluster.json(address, "bench", "run", "--url",
                           f"http://{endpoint['host']}:{endpoint['port']}/", "--duration", "1s",
                           "--rate", "10")
        assert out["benchmark"]["state"] == "BENCHMARK_STATE_SUCCEEDED"
    finally:
        assert bench.stop() == 0, bench.log()


def test_live_metrics_go_to_a_standalone_collector(cluster: Cluster,
                                                  nginx_service: dict[str, Any]) -> None:
    metrics_port = free_port()
    collector, collector_address = _start(
        lambda port: ["--home", str(cluster.home), "collector", "serve", "--listen",
                      f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        env=cluster.env, cwd=cluster.tmp, ready_text="collector is up on")
    try:
        bench, address = cluster.bench_serve("--server", cluster.server, "--collector",
                                             collector_address, "--runs-dir",
                                             str(cluster.tmp / "runs-metrics"))
        try:
            out = cluster.json(address, "bench", "run", "--service", nginx_service["name"],
                               "--rate", "20", "--duration", "2s")
            rid = out["benchmark"]["name"].removeprefix("benchmarks/")
            completed = out["report"]["figures"]["counters"]["completed"]

            def exported() -> float | None:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
                    text = resp.read().decode()
                for line in text.splitlines():
                    if line.startswith("aifb_bench_requests_total{") and f'run="{rid}"' in line \
                            and f'service="{nginx_service["name"]}"' in line:
                        return float(line.rsplit(" ", 1)[1])
                return None

            assert until(lambda: exported() == completed, "the run's requests on /metrics",
                         timeout=30)
        finally:
            assert bench.stop() == 0, bench.log()
    finally:
        collector.stop()


def test_a_second_service_on_the_same_runs_dir_is_refused(cluster: Cluster) -> None:
    proc = subprocess.run([str(AIFB), "--home", str(cluster.home), "bench", "serve",
                           "--listen", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=cluster.env, cwd=cluster.tmp)
    assert proc.returncode == 1
    assert "is in use by another benchmark service" in proc.stderr


def test_a_server_that_is_down_gives_unavailable_naming_its_address(cluster: Cluster) -> None:
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    bench, address = cluster.bench_serve("--server", down, "--runs-dir",
                                         str(cluster.tmp / "runs-down"))
    try:
        # The status, on a channel without the CLI's retries.
        channel = grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)])
        stub = client_pb2_grpc.BenchmarkServiceStub(channel)
        token = (cluster.home / "token").read_text().strip()
        try:
            stub.CreateBenchmark(C.CreateBenchmarkRequest(
                workload="http", service="services/abc", request_id="down-1",
                load=C.LoadProfile(concurrency=1)), timeout=30, metadata=auth_metadata(token))
        except grpc.RpcError as exc:
            err = _mesh_error(exc)
        else:
            raise AssertionError("CreateBenchmark succeeded with the server down")
        finally:
            channel.close()
        assert isinstance(err, Unavailable) and err.metadata["server"] == down
        assert f"cannot reach the aifb server at {down}" in err.message
        # And as the CLI says it: one line, no hint that the benchmark service itself is down.
        proc = cluster.aifb(address, "bench", "run", "--service", "abc", "--duration", "1s",
                            "--rate", "10")
        assert proc.returncode == 1
        assert f"cannot reach the aifb server at {down}" in proc.stderr
        assert "is `aifb up` running" not in proc.stderr
    finally:
        assert bench.stop() == 0, bench.log()


def _mesh_error(exc: grpc.RpcError) -> AifbError:
    try:
        raise_for_rpc_error(exc)
    except AifbError as err:
        return err


# ---- GrpcResolver against an in-process server -------------------------------------------

def _ready_nginx(srv: ThreadedServer) -> S.Service:
    return ready_service(srv.stub(), "nginx", port="0")


def _resolve(resolver: GrpcResolver, principal: Principal, service: str) -> Target:
    async def go() -> Target:
        try:
            return await resolver.resolve(principal, service)
        finally:
            await resolver.close()

    return asyncio.run(go())


def _resolve_error(resolver: GrpcResolver, principal: Principal, service: str) -> AifbError:
    try:
        _resolve(resolver, principal, service)
    except AifbError as exc:
        return exc
    raise AssertionError(f"{service} resolved")


def test_grpc_resolver_gives_the_services_record_recipe_and_batch_script(
        local_server: ThreadedServer) -> None:
    svc = _ready_nginx(local_server)
    owner = Principal(user=_owner(local_server), token=local_server.token)
    remote = _resolve(GrpcResolver(local_server.address), owner, svc.name)
    url = svc.endpoint.url or f"http://{svc.endpoint.host}:{svc.endpoint.port}/"
    assert (remote.url, remote.service, remote.trace_id) == (url, svc.name, svc.trace_id)
    service = remote.context["service"]
    assert (service["recipe"], service["parameters"], service["job_id"]) == (
        "nginx", dict(svc.parameters), svc.job.job_id)
    assert remote.context["recipe"]["name"] == "nginx"
    rendered = local_server.stub().RenderService(S.RenderServiceRequest(
        recipe="nginx", parameters=dict(svc.parameters), resources=svc.resources), timeout=30)
    assert remote.context["batch_script"] == rendered.batch_script
    assert remote.context["batch_script"].startswith("#!")
    local = remote
    # A caller without a token (auth off at the benchmark service) borrows the service's own.
    anonymous = Principal(user=owner.user)
    borrowed = _resolve(GrpcResolver(local_server.address, token=local_server.token),
                        anonymous, svc.name)
    assert borrowed == local
    err = _resolve_error(GrpcResolver(local_server.address), anonymous, svc.name)
    assert isinstance(err, PermissionDenied)
    assert f"the aifb server at {local_server.address} does not accept this benchmark " \
           "service's token" in err.message


def _owner(srv: ThreadedServer) -> str:
    user = TokenStore(srv.config.mesh.home_path).user_for(srv.token)
    assert user
    return user


def test_grpc_resolver_maps_each_failure_to_a_mesh_error_naming_the_server(
        local_server: ThreadedServer) -> None:
    address = local_server.address
    owner = Principal(user=_owner(local_server), token=local_server.token)
    err = _resolve_error(GrpcResolver(address), owner, "services/nosuch")
    assert isinstance(err, NotFound) and err.message == (
        f"service nosuch not found (on the aifb server at {address})")
    err = _resolve_error(GrpcResolver(address), owner, "services/bad id")
    assert isinstance(err, InvalidArgument) and err.field == "service"
    other = Principal(user="mallory",
                      token=TokenStore(local_server.config.mesh.home_path).issue("mallory"))
    svc = _ready_nginx(local_server)
    err = _resolve_error(GrpcResolver(address), other, svc.name)
    assert isinstance(err, NotFound) and address in err.message
    local_server.stub().DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
    svc = wait_for_state(local_server.stub(), svc.name, set())  # until terminal
    err = _resolve_error(GrpcResolver(address), owner, svc.name)
    assert isinstance(err, FailedPrecondition)
    assert err.message.startswith(f"service {svc.name} is STOPPED, not READY")
    down = f"127.0.0.1:{free_port()}"
    err = _resolve_error(GrpcResolver(down, timeout=20), owner, svc.name)
    assert isinstance(err, Unavailable) and err.metadata == {"server": down}
    assert err.message.startswith(f"cannot reach the aifb server at {down}: ")


def test_grpc_resolver_calls_join_the_callers_trace_on_the_server(aifb_home: Path) -> None:
    server_spans, bench_spans = InMemorySpanExporter(), InMemorySpanExporter()
    server_provider = make_tracer_provider("aifb-server", exporters=(server_spans,))
    bench_provider = make_tracer_provider("aifb-bench", exporters=(bench_spans,))
    srv = ThreadedServer(server_config(aifb_home), tracer_provider=server_provider).start()
    try:
        svc = _ready_nginx(srv)
        owner = Principal(user=_owner(srv), token=srv.token)
        resolver = GrpcResolver(srv.address, tracer_provider=bench_provider)

        async def go() -> tuple[Target, int]:
            tracer = bench_provider.get_tracer("test")
            try:
                with tracer.start_as_current_span("CreateBenchmark") as span:
                    return (await resolver.resolve(owner, svc.name),
                            span.get_span_context().trace_id)
            finally:
                await resolver.close()

        target, trace_id = asyncio.run(go())
        assert target.service == svc.name
    finally:
        srv.cancel_all()
        srv.stop()
    server_provider.force_flush()
    bench_provider.force_flush()
    methods = ("GetService", "GetRecipe", "RenderService")
    # This side: one client span per call, children of the caller's span.
    clients = {sp.name.rsplit("/", 1)[-1]: sp for sp in bench_spans.get_finished_spans()
               if sp.name.startswith("/aifb.v1.ServerService/")}
    assert set(clients) == set(methods)
    (root,) = [sp for sp in bench_spans.get_finished_spans() if sp.name == "CreateBenchmark"]
    assert all(sp.parent is not None and sp.parent.span_id == root.context.span_id
               for sp in clients.values())
    # The server's span for each call is in the same trace, under that call's client span.
    served = {sp.name.rsplit("/", 1)[-1]: sp for sp in server_spans.get_finished_spans()
              if sp.context.trace_id == trace_id}
    assert set(served) == set(methods), sorted(served)
    for method in methods:
        parent = served[method].parent
        assert parent is not None and parent.span_id == clients[method].context.span_id
