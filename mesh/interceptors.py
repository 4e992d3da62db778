"""The server interceptor: bearer-token auth and the mapping of AifbError to rich gRPC statuses."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from aifb.mesh.auth import Authenticator, Principal, current_principal
from aifb.mesh.errors import ERROR_DOMAIN, AifbError, InvalidArgument, Unauthenticated

__all__ = ["PUBLIC_METHOD_PREFIXES", "MeshInterceptor", "status_for_error"]

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


class MeshInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates each call, binds the Principal for the handler, and maps errors."""

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
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        principal = self.authenticator.authenticate(_bearer(context.invocation_metadata()))
        if principal is None:
            raise Unauthenticated(
                "missing or unknown bearer token: send 'authorization: Bearer <token>' "
                "(the server wrote one to ~/.aifb/token at first start)"
            )
        return principal

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException,
                     method: str) -> None:
        if isinstance(exc, AifbError):
            status = status_for_error(exc)
        else:
            log.exception("unexpected error in %s", method, exc_info=exc)
            status = status_for_error(
                AifbError(f"internal error in {method}: {type(exc).__name__}"))
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _wrap_unary(self, behavior: Any, method: str) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                token = current_principal.set(self._authenticate(context))
                try:
                    return await behavior(request, context)
                finally:
                    current_principal.reset(token)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, exc, method)

        return wrapped

    def _wrap_stream(self, behavior: Any, method: str) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                          ) -> AsyncIterator[Any]:
            try:
                token = current_principal.set(self._authenticate(context))
                try:
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        await result
                finally:
                    current_principal.reset(token)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, exc, method)

        return wrapped
