"""The server interceptor: bearer-token auth and the mapping of AifbError to rich gRPC statuses."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from aifb.mesh.auth import Authenticator, Principal, current_principal
from aifb.mesh.errors import ERROR_DOMAIN, AifbError, InvalidArgument, Unauthenticated

__all__ = ["PUBLIC_METHOD_PREFIXES", "InTaskStreams", "MeshInterceptor", "status_for_error"]

log = logging.getLogger(__name__)

Handler = Any  # grpc.RpcMethodHandler; the stubs type its behaviours as sync callables

# Health and reflection answer without a token (they reveal no user data).
PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def status_for_error(exc: AifbError) -> grpc.Status:
    """A grpc.Status carrying google.rpc ErrorInfo (and BadRequest for a named field)."""
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN,
                                       metadata=exc.metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if isinstance(exc, InvalidArgument) and exc.field:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=exc.field,
                                                            description=exc.message)
            ]
        )
        packed_bad = any_pb2.Any()
        packed_bad.Pack(bad)
        details.append(packed_bad)
    status = status_pb2.Status(code=getattr(code_pb2, exc.code.name), message=exc.message,
                               details=details)
    return rpc_status.to_status(status)


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None


class _Undecodable:
    """What a request deserializer gives for bytes that are not the method's message."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Turn a failing deserializer into a marker the handler refuses with INVALID_ARGUMENT
    (grpc would answer UNKNOWN and log a traceback for every garbage body)."""
    if deserialize is None:  # raw-bytes handlers (the collector's push streams) parse their own
        return None

    def lenient(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:
            return _Undecodable(type(exc).__name__)

    return lenient


def _refuse_undecodable(request: Any, method: str) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(f"the request body is not a valid message for {method} "
                              f"({request.error})", field="request")


def _mark_span(principal: Principal) -> None:
    """Say on the call's server span whose call it was: the collector shows a trace only to the
    user named there (GetTrace)."""
    trace.get_current_span().set_attribute("enduser.id", principal.user)


async def _checked_stream(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    async for request in requests:
        _refuse_undecodable(request, method)
        yield request


class MeshInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates each call before its body is read, binds the Principal for the handler,
    refuses undecodable bodies, and maps errors."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        principal = self.authenticator.authenticate(
            _bearer(handler_call_details.invocation_metadata))
        if principal is None:
            # Refused before anything of the body is decoded: no deserializer runs at all.
            return _refusal(handler)
        streaming_in = handler.stream_unary is not None or handler.stream_stream is not None
        check_in = streaming_in and handler.request_deserializer is not None
        kwargs = {"request_deserializer": _lenient(handler.request_deserializer),
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, principal, check_in), **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, principal, check_in), **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, principal, check_in), **kwargs)
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method, principal, check_in), **kwargs)

    @staticmethod
    def _request(request: Any, method: str, streaming_in: bool) -> Any:
        if streaming_in:
            return _checked_stream(request, method)
        _refuse_undecodable(request, method)
        return request

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException,
                     method: str) -> None:
        if isinstance(exc, AifbError):
            status = status_for_error(exc)
        else:
            log.exception("unexpected error in %s", method, exc_info=exc)
            status = status_for_error(
                AifbError(f"internal error in {method}: {type(exc).__name__}"))
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _wrap_unary(self, behavior: Any, method: str, principal: Principal,
                    streaming_in: bool) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                token = current_principal.set(principal)
                _mark_span(principal)
                try:
                    return await behavior(self._request(request, method, streaming_in), context)
                finally:
                    current_principal.reset(token)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, exc, method)

        return wrapped

    def _wrap_stream(self, behavior: Any, method: str, principal: Principal,
                     streaming_in: bool) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                          ) -> AsyncIterator[Any]:
            try:
                token = current_principal.set(principal)
                _mark_span(principal)
                try:
                    result = behavior(self._request(request, method, streaming_in), context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        await result
                finally:
                    # A stream closed from another task (the call cancelled, the server
                    # stopping) ends in that task's context, where the token means nothing.
                    with contextlib.suppress(ValueError):
                        current_principal.reset(token)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, exc, method)

        return wrapped


UNAUTHENTICATED_MESSAGE = ("missing or unknown bearer token: send 'authorization: Bearer <token>' "
                           "(the server wrote one to ~/.aifb/token at first start)")


def _refusal(handler: Handler) -> Handler:
    """A handler of the same shape that answers UNAUTHENTICATED without reading the body."""
    status = status_for_error(Unauthenticated(UNAUTHENTICATED_MESSAGE))

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                            ) -> AsyncIterator[Any]:
        await context.abort(status.code, status.details, status.trailing_metadata)
        yield  # pragma: no cover - abort raises

    serializer = {"response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializer)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **serializer)


class InTaskStreams(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """The outermost interceptor: runs each server-streaming handler as a coroutine that writes
    its responses and closes the handler's generator in the RPC's own task.

    grpc drains an async-generator handler with `async for ... write()`: when a write fails
    because the client went away, the generator is left open and asyncio's finaliser closes it
    later in another task, whose context cannot reset the context variables the interceptors
    set (tracing's context, the Principal): a ValueError and a traceback in the log, and an
    error status sent on a finished call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_writer(handler.unary_stream), **kwargs)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(_writer(handler.stream_stream),
                                                         **kwargs)
        return handler


def _writer(behavior: Any) -> Callable[..., Awaitable[None]]:
    async def write_all(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        result = behavior(request, context)
        if not inspect.isasyncgen(result):  # a handler that writes itself (health's Watch)
            await result
            return
        try:
            async for item in result:
                await context.write(item)
        finally:
            await result.aclose()

    return write_all
