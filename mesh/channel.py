"""Client side: authenticated channels, retry of UNAVAILABLE, and errors mapped back."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2

from aifb.mesh.auth import read_token_file
from aifb.mesh.errors import (
    ERROR_DOMAIN,
    AifbError,
    DeadlineExceeded,
    Unavailable,
    error_for_reason,
)

__all__ = [
    "auth_metadata",
    "load_token",
    "open_channel",
    "open_sync_channel",
    "raise_for_rpc_error",
]

# Retry UNAVAILABLE (server restarting, connection refused) on every aifb.v1 method.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": f"aifb.v1.{s}"} for s in (
                    "ServerService", "BenchmarkService", "MonitorService", "LoggerService",
                    "CollectorService")],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def load_token(home: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """AIFB_TOKEN, else AIFB_TOKEN_FILE, else <home>/token; None when there is none."""
    env = os.environ if environ is None else environ
    if env.get("AIFB_TOKEN"):
        return env["AIFB_TOKEN"].strip()
    path = Path(env.get("AIFB_TOKEN_FILE", str(home / "token"))).expanduser()
    return read_token_file(path) if path.exists() else None


# What a client accepts in one answer: gRPC's default of 4 MiB is less than an experiment of a
# few thousand trials with LLM figures (GetExperiment, a report); requests stay bounded by the
# server's own limit.
MAX_ANSWER_BYTES = 64 << 20

def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class _MetadataUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(details, self.metadata), request)


class _MetadataUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(details, self.metadata), request)


class _MetadataStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(_with_metadata(details, self.metadata), request_iterator)


def _with_metadata(details: Any, extra: tuple[tuple[str, str], ...]) -> Any:
    metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + extra))
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata,
                                      details.credentials, details.wait_for_ready)


def _channel_credentials(ca_file: str, cert_file: str, key_file: str) -> grpc.ChannelCredentials:
    def read(p: str) -> bytes | None:
        return Path(p).expanduser().read_bytes() if p else None

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


def open_channel(
    address: str,
    *,
    token: str | None = None,
    ca_file: str = "",
    cert_file: str = "",
    key_file: str = "",
    interceptors: tuple[grpc.aio.ClientInterceptor, ...] = (),
    retries: bool = True,
) -> grpc.aio.Channel:
    """An asyncio channel that sends the bearer token on every call and retries UNAVAILABLE
    (`retries=False`: a service calling another on behalf of a client that retries itself, so
    that the attempts do not multiply)."""
    md = auth_metadata(token)
    chain: list[Any] = [*interceptors, _MetadataUnaryUnary(md), _MetadataUnaryStream(md),
                        _MetadataStreamStream(md)]
    options: list[tuple[str, Any]] = (
        [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1)] if retries
        else [("grpc.enable_retries", 0)])
    options.append(("grpc.max_receive_message_length", MAX_ANSWER_BYTES))
    if ca_file:
        creds = _channel_credentials(ca_file, cert_file, key_file)
        return grpc.aio.secure_channel(address, creds, options=options, interceptors=chain)
    return grpc.aio.insecure_channel(address, options=options, interceptors=chain)


class _SyncMetadata(grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
                    grpc.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, details: Any) -> Any:
        class _Details(grpc.ClientCallDetails):
            method = details.method
            timeout = details.timeout
            metadata = tuple(details.metadata or ()) + self.metadata
            credentials = details.credentials
            wait_for_ready = details.wait_for_ready
            compression = getattr(details, "compression", None)

        return _Details()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def open_sync_channel(address: str, *, token: str | None = None, ca_file: str = "",
                      cert_file: str = "", key_file: str = "") -> grpc.Channel:
    """A blocking channel with the same token and retry behaviour (for sync stubs)."""
    options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1),
               ("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]
    if ca_file:
        channel = grpc.secure_channel(address, _channel_credentials(ca_file, cert_file, key_file),
                                      options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(channel, _SyncMetadata(auth_metadata(token)))


def raise_for_rpc_error(exc: grpc.RpcError) -> NoReturn:
    """Re-raise a failed call as the AifbError subclass the server raised (by ErrorInfo.reason)."""
    call: Any = exc  # a grpc.Call / AioRpcError: code(), details(), trailing_metadata()
    code: grpc.StatusCode = call.code()
    message: str = call.details() or code.name
    reason = ""
    metadata: dict[str, str] = {}
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and (
                        info.domain == ERROR_DOMAIN):
                    reason = info.reason
                    metadata = dict(info.metadata)
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        raise Unavailable(f"server unavailable: {message}") from exc
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not reason:
        raise DeadlineExceeded(f"deadline exceeded: {message}") from exc
    cls = error_for_reason(reason, code)
    err: AifbError = AifbError.__new__(cls)
    AifbError.__init__(err, message, **metadata)
    if "field" in metadata:
        err.field = metadata["field"]  # type: ignore[attr-defined]
    raise err from exc
