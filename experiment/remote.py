"""The ServerService and BenchmarkService, as the experiment service calls them: over gRPC.

One channel to the mesh address (in `aifb up` the process's own port, elsewhere `--server`),
with both stubs. Every call carries the bearer token it is given (the experiment owner's), so
the server's and the benchmark service's ownership rules apply to the owner, exactly as if
they had typed the commands; a call without one borrows this service's configured token (auth
off). Failures come back as the mesh's errors (`aifb.mesh.errors`), naming the address.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider

from aifb.mesh.channel import auth_metadata, open_channel, raise_for_rpc_error
from aifb.mesh.errors import AifbError, Unavailable
from aifb.v1 import client_pb2_grpc, server_pb2_grpc

__all__ = ["Remote"]

CALL_TIMEOUT_SECONDS = 30.0


class Remote:
    def __init__(self, address: str = "", *, token: str | None = None, ca_file: str = "",
                 cert_file: str = "", key_file: str = "",
                 tracer_provider: TracerProvider | None = None) -> None:
        self.address = address
        self.token = token
        self._tls = (ca_file, cert_file, key_file)
        self._tracer_provider = tracer_provider
        self._channel: grpc.aio.Channel | None = None

    def connect_to(self, address: str, *, ca_file: str = "", cert_file: str = "",
                   key_file: str = "") -> None:
        """Aim at `address` (the process's own port, known once it listens); before any call."""
        if self._channel is not None:
            raise RuntimeError("Remote.connect_to after its first call")
        self.address = address
        self._tls = (ca_file, cert_file, key_file)

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            if not self.address:
                raise Unavailable("the experiment service has no server address to call")
            tracing: tuple[grpc.aio.ClientInterceptor, ...] = ()
            if self._tracer_provider is not None:
                tracing = tuple(aio_client_interceptors(tracer_provider=self._tracer_provider))
            ca_file, cert_file, key_file = self._tls
            self._channel = open_channel(self.address, ca_file=ca_file, cert_file=cert_file,
                                         key_file=key_file, interceptors=tracing)
        return self._channel

    def channel(self) -> grpc.aio.Channel:
        return self._open()

    @property
    def server(self) -> Any:  # the generated stubs are untyped
        return server_pb2_grpc.ServerServiceStub(self._open())

    @property
    def bench(self) -> Any:
        return client_pb2_grpc.BenchmarkServiceStub(self._open())

    def _metadata(self, token: str) -> tuple[tuple[str, str], ...]:
        return auth_metadata(token or self.token)

    def _error(self, exc: grpc.RpcError) -> AifbError:
        try:
            raise_for_rpc_error(exc)
        except AifbError as err:
            if isinstance(err, Unavailable):
                return Unavailable(f"cannot reach the aifb services at {self.address}: "
                                   f"{err.message}")
            return err
        raise AssertionError("unreachable")  # pragma: no cover

    async def call(self, method: Callable[..., Awaitable[Any]], request: Any, token: str, *,
                   timeout: float = CALL_TIMEOUT_SECONDS) -> Any:
        try:
            return await method(request, timeout=timeout, metadata=self._metadata(token))
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    async def stream(self, method: Callable[..., Any], request: Any, token: str
                     ) -> AsyncIterator[Any]:
        call = method(request, metadata=self._metadata(token))
        try:
            async for message in call:
                yield message
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(None)
