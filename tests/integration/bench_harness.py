"""Shared pieces of the BenchmarkService tests: the embedded mesh with the BenchmarkService,
a real HTTP server that answers 500 to everything, and small request helpers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from aifb.cli.host.threaded import ThreadedMesh
from aifb.client.engine.load import run_load
from aifb.client.engine.results import LoadResult, RunState
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.workloads.registry import build_workload
from aifb.mesh.channel import raise_for_rpc_error
from aifb.mesh.errors import AifbError
from aifb.v1 import client_pb2 as C
from aifb.v1 import client_pb2_grpc
from tests.fixtures.server import server_config

TERMINAL = {C.BENCHMARK_STATE_SUCCEEDED, C.BENCHMARK_STATE_FAILED, C.BENCHMARK_STATE_CANCELLED}


@contextmanager
def bench_mesh(home: Path, *, scheduler: str = "local", **kw: Any) -> Iterator[ThreadedMesh]:
    mesh = ThreadedMesh(server_config(home, scheduler=scheduler), **kw).start()
    try:
        yield mesh
    finally:
        mesh.cancel_all()
        mesh.stop()


def seconds(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


def create(stub: client_pb2_grpc.BenchmarkServiceStub, **fields: Any) -> C.Benchmark:
    """CreateBenchmark; a failed call is raised as the AifbError the server raised."""
    try:
        return stub.CreateBenchmark(C.CreateBenchmarkRequest(**fields), timeout=30).benchmark
    except grpc.RpcError as exc:
        raise_for_rpc_error(exc)


def create_error(stub: client_pb2_grpc.BenchmarkServiceStub, **fields: Any) -> AifbError:
    try:
        create(stub, **fields)
    except AifbError as exc:
        return exc
    raise AssertionError(f"CreateBenchmark accepted {fields}")


def follow(stub: client_pb2_grpc.BenchmarkServiceStub, name: str, timeout: float = 90
           ) -> tuple[C.Benchmark, list[C.WatchBenchmarkResponse]]:
    msgs = list(stub.WatchBenchmark(C.WatchBenchmarkRequest(name=name), timeout=timeout))
    return msgs[-1].benchmark, msgs


class _Fails(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the http workload expects

    def do_GET(self) -> None:
        body = b"broken\n"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def failing_http_server() -> Iterator[str]:
    """A real HTTP/1.1 server on loopback whose every answer is 500; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fails)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run_vectordb(url: str, params: dict[str, Any], requests: int = 60) -> LoadResult:
    """A closed-loop vectordb run of `requests` queries (4 users) that must succeed."""
    wl = build_workload("vectordb", url, params)
    spec = LoadSpec(mode=Mode.CLOSED, users=4, duration_s=60.0, max_requests=requests)
    res = asyncio.run(run_load(spec, wl))
    assert res.state is RunState.SUCCEEDED, res.reason
    return res
