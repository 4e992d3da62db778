"""Service targets resolved through a remote ServerService (the standalone BenchmarkService).

`GrpcResolver` asks the aifb server at `address` about `services/<id>` on the caller's behalf:
GetService (the service must be READY), then GetRecipe and RenderService for the recipe's source
and the batch script (a run's context). In `aifb up` it asks the process's own port
(`aifb.cli.host.bench`), elsewhere a remote server. Each call carries the caller's own bearer
token, so the server's ownership check applies to the real caller; a caller without one (auth
off here) borrows this service's configured token. The server's answers come back as the mesh's
errors, each naming the server: NotFound, FailedPrecondition, PermissionDenied (the server
refused the token), Unavailable and DeadlineExceeded. Given a tracer provider, the calls carry
the caller's trace context, so the server's spans for them join the benchmark's trace.
`NoServerResolver` stands in when no server is configured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider

from aifb.client.service.targets import Target, check_url
from aifb.mesh.auth import Principal
from aifb.mesh.channel import auth_metadata, open_channel, raise_for_rpc_error
from aifb.mesh.errors import (
    AifbError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from aifb.mesh.names import parse_service_id
from aifb.v1 import server_pb2 as S
from aifb.v1 import server_pb2_grpc

__all__ = ["GrpcResolver", "NoServerResolver", "translate_rpc_error"]

DEFAULT_TIMEOUT_SECONDS = 10.0


def translate_rpc_error(exc: grpc.RpcError, address: str, *, borrowed: bool = False
                        ) -> AifbError:
    """The mesh error for a failed call to the server at `address`, its message naming it.

    `borrowed`: the call carried this service's token rather than the caller's."""
    try:
        raise_for_rpc_error(exc)
    except Unavailable as err:
        return Unavailable(f"cannot reach the aifb server at {address}: {err.message}",
                           server=address)
    except DeadlineExceeded as err:
        return DeadlineExceeded(f"the aifb server at {address} did not answer in time: "
                                f"{err.message}", server=address)
    except Unauthenticated as err:
        whose = ("this benchmark service's token (AIFB_TOKEN, AIFB_TOKEN_FILE or <home>/token)"
                 if borrowed else "your token")
        return PermissionDenied(
            f"the aifb server at {address} does not accept {whose}: {err.message} (the "
            "benchmark service and the server must share one token store, e.g. one home)",
            server=address)
    except NotFound as err:
        return NotFound(f"{err.message} (on the aifb server at {address})", server=address)
    except FailedPrecondition as err:
        return FailedPrecondition(f"the aifb server at {address}: {err.message}",
                                  server=address)
    except PermissionDenied as err:
        return PermissionDenied(f"the aifb server at {address}: {err.message}",
                                server=address)
    except AifbError as err:
        return err
    raise AssertionError("unreachable")  # pragma: no cover - raise_for_rpc_error always raises


def _service_id(service: str) -> str:
    try:
        return parse_service_id(service)
    except InvalidArgument as exc:
        raise InvalidArgument(exc.message, field="service") from None


def _ready_urls(svc: S.Service) -> list[str]:
    """A replicated service's READY replicas' endpoint URLs, by index (none for one job)."""
    return [r.endpoint.url or f"http://{r.endpoint.host}:{r.endpoint.port}/"
            for r in svc.replica_status if r.state == S.SERVICE_STATE_READY and r.endpoint.port]


def _state_name(state: int) -> str:
    return S.ServiceState.Name(state).removeprefix("SERVICE_STATE_")


class NoServerResolver:
    """For a benchmark service started without a server: every service target is refused."""

    async def resolve(self, principal: Principal, service: str) -> Target:
        raise FailedPrecondition(f"cannot resolve {service}: no server configured; pass "
                                 "--server HOST:PORT to `aifb bench serve`, or give --url")


class GrpcResolver:
    """Resolution through the ServerService at `address` (host:port), over one channel."""

    def __init__(self, address: str, *, token: str | None = None, ca_file: str = "",
                 cert_file: str = "", key_file: str = "",
                 timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 tracer_provider: TracerProvider | None = None) -> None:
        self.address = address
        self.token = token  # this service's own, for callers that came without one
        self.timeout = timeout
        self._tracer_provider = tracer_provider
        self._tls = (ca_file, cert_file, key_file)
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> Any:  # the generated stubs are untyped
        if self._channel is None:  # opened on the serving loop, at first use
            ca_file, cert_file, key_file = self._tls
            # No token on the channel: each call carries its caller's. No retries either: the
            # caller's client retries UNAVAILABLE itself (the CLI does), and retries at both
            # ends multiply (5 x 5 attempts took 17 s to report a server that is down).
            # With a tracer provider, each call is a client span under the caller's current
            # one (CreateBenchmark's) and carries its W3C context: the server's spans for
            # GetService, GetRecipe and RenderService join the benchmark service's trace.
            tracing: tuple[grpc.aio.ClientInterceptor, ...] = ()
            if self._tracer_provider is not None:
                tracing = tuple(aio_client_interceptors(tracer_provider=self._tracer_provider))
            self._channel = open_channel(self.address, ca_file=ca_file, cert_file=cert_file,
                                         key_file=key_file, retries=False, interceptors=tracing)
        return server_pb2_grpc.ServerServiceStub(self._channel)

    def connect_to(self, address: str, *, ca_file: str = "", cert_file: str = "",
                   key_file: str = "") -> None:
        """Aim at `address` (a server whose port is known only once it listens: the process's
        own, in `aifb up`); before the first call."""
        if self._channel is not None:
            raise RuntimeError("GrpcResolver.connect_to after its first call")
        self.address = address
        self._tls = (ca_file, cert_file, key_file)

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(None)

    async def resolve(self, principal: Principal, service: str) -> Target:
        sid = _service_id(service)
        token = principal.token or self.token
        borrowed = not principal.token
        stub = self._stub()

        async def call(method: Callable[..., Awaitable[Any]], request: Any) -> Any:
            try:
                return await method(request, timeout=self.timeout,
                                    metadata=auth_metadata(token))
            except grpc.RpcError as exc:
                raise translate_rpc_error(exc, self.address, borrowed=borrowed) from None

        svc: S.Service = (await call(stub.GetService,
                                     S.GetServiceRequest(name=f"services/{sid}"))).service
        serving = {S.SERVICE_STATE_READY} | ({S.SERVICE_STATE_DEGRADED} if svc.replicas else set())
        if svc.state not in serving:
            raise FailedPrecondition(f"service {svc.name} is {_state_name(svc.state)}, not READY"
                                     + (f": {svc.state_message}" if svc.state_message else ""))
        ep = svc.endpoint
        url = ep.url or f"http://{ep.host}:{ep.port}/"
        urls = tuple(check_url(u, field_name="service") for u in _ready_urls(svc))
        res = svc.resources
        context: dict[str, Any] = {
            "service": {"name": svc.name, "recipe": svc.recipe,
                        "parameters": dict(svc.parameters), "scheduler": svc.job.scheduler,
                        "job_id": svc.job.job_id, "nodes": svc.job.nodes,
                        "endpoint": url, "trace_id": svc.trace_id,
                        # 0 on the wire is the record's None: no time limit.
                        "resources": {"nodes": res.nodes, "cpus": res.cpus,
                                      "memory_mib": res.memory_mib, "gpus": res.gpus,
                                      "time_limit_minutes": res.time_limit_minutes or None,
                                      "partition": res.partition, "account": res.account}},
        }
        try:
            recipe: S.Recipe = (await call(stub.GetRecipe,
                                           S.GetRecipeRequest(name=svc.recipe))).recipe
            context["recipe"] = {"name": recipe.name, "source_yaml": recipe.source_yaml}
            rendered: S.RenderServiceResponse = await call(
                stub.RenderService, S.RenderServiceRequest(
                    recipe=svc.recipe, parameters=dict(svc.parameters), resources=res))
            context["batch_script"] = rendered.batch_script
        except AifbError as exc:  # the recipe may have changed since: the run still goes
            context["recipe_error"] = str(exc)
        if urls:
            context["service"]["replicas"] = list(urls)

        async def follow() -> AsyncIterator[list[str]]:
            """The READY replicas' URLs on every change, until the service ends."""
            last = list(urls)
            try:
                async for msg in stub.WatchService(S.WatchServiceRequest(name=svc.name),
                                                   metadata=auth_metadata(token)):
                    now = _ready_urls(msg.service)
                    if now != last:
                        last = now
                        yield now
            except grpc.RpcError as exc:
                raise translate_rpc_error(exc, self.address, borrowed=borrowed) from None

        return Target(url=check_url(url, field_name="service"), service=svc.name,
                      trace_id=svc.trace_id, context=context, urls=urls,
                      follow=follow if urls else None)
