"""The one exception tree of aifb; each class carries its gRPC status code and a stable reason.

    AifbError                      INTERNAL            (base; never raised bare)
    ├── InvalidArgument            INVALID_ARGUMENT    field + description -> google.rpc.BadRequest
    │   └── RecipeError            INVALID_ARGUMENT    file + key + what was expected
    ├── NotFound                   NOT_FOUND
    ├── AlreadyExists              ALREADY_EXISTS
    ├── FailedPrecondition         FAILED_PRECONDITION
    │   ├── IllegalTransition      FAILED_PRECONDITION a state change the lifecycle forbids
    │   └── SchedulerRejected      FAILED_PRECONDITION the scheduler refused the job
    ├── PermissionDenied           PERMISSION_DENIED   another user's resource
    ├── Unauthenticated            UNAUTHENTICATED     missing or unknown bearer token
    ├── ResourceExhausted          RESOURCE_EXHAUSTED
    ├── Unavailable                UNAVAILABLE         retryable
    │   └── SchedulerUnavailable   UNAVAILABLE         sbatch/squeue/slurmrestd did not answer
    ├── DeadlineExceeded           DEADLINE_EXCEEDED
    └── Internal                   INTERNAL

Domain code raises these and knows nothing of gRPC; `aifb.mesh.interceptors` turns them into
status codes with `google.rpc.ErrorInfo` (domain "aifb", the class's `reason`) and, for
`InvalidArgument`, a `BadRequest` naming the field. `aifb.mesh.channel.raise_for_rpc_error`
maps a failed call back to the same class on the client side. Lower-level errors are translated
where they enter: ``raise SchedulerUnavailable("squeue timed out") from exc``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

__all__ = [
    "AifbError",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "IllegalTransition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RecipeError",
    "ResourceExhausted",
    "SchedulerRejected",
    "SchedulerUnavailable",
    "Unauthenticated",
    "Unavailable",
    "error_for_reason",
]

ERROR_DOMAIN = "aifb"


# An error message echoes what the caller sent; it travels in the status, the log and the span
# of the call: never more than this, however large the request was.
MAX_MESSAGE_CHARS = 2048


def _bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text) - limit} more characters]"


class AifbError(Exception):
    """Base of every error aifb raises on purpose."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, **metadata: Any) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = {k: _bounded(str(v), 256) for k, v in metadata.items()
                                         if v is not None}

    def __str__(self) -> str:
        return self.message


class InvalidArgument(AifbError):
    """A request field is wrong; `field` names it (dotted path, as in google.rpc.BadRequest)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, field: str = "", **metadata: Any) -> None:
        super().__init__(message, field=field or None, **metadata)
        self.field = field


class RecipeError(InvalidArgument):
    """A recipe file or a recipe parameter is wrong: names the file, the key, what was expected."""

    reason = "RECIPE_INVALID"

    def __init__(self, message: str, *, file: str = "", key: str = "", expected: str = "") -> None:
        parts = [p for p in (file, key) if p]
        prefix = ": ".join(parts)
        text = f"{prefix}: {message}" if prefix else message
        if expected:
            text = f"{text} (expected {expected})"
        super().__init__(text, field=key, file=file or None, expected=expected or None)
        self.file = file
        self.key = key
        self.expected = expected


class NotFound(AifbError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(AifbError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(AifbError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class IllegalTransition(FailedPrecondition):
    reason = "ILLEGAL_TRANSITION"


class SchedulerRejected(FailedPrecondition):
    """The scheduler refused the job, for example resources no node has."""

    reason = "SCHEDULER_REJECTED"


class PermissionDenied(AifbError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unauthenticated(AifbError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class ResourceExhausted(AifbError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(AifbError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class SchedulerUnavailable(Unavailable):
    reason = "SCHEDULER_UNAVAILABLE"


class DeadlineExceeded(AifbError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Internal(AifbError):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


def _all_subclasses(cls: type[AifbError]) -> list[type[AifbError]]:
    out: list[type[AifbError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[grpc.StatusCode, type[AifbError]] = {
    InvalidArgument.code: InvalidArgument,
    NotFound.code: NotFound,
    AlreadyExists.code: AlreadyExists,
    FailedPrecondition.code: FailedPrecondition,
    PermissionDenied.code: PermissionDenied,
    Unauthenticated.code: Unauthenticated,
    ResourceExhausted.code: ResourceExhausted,
    Unavailable.code: Unavailable,
    DeadlineExceeded.code: DeadlineExceeded,
}


def error_for_reason(reason: str, code: grpc.StatusCode) -> type[AifbError]:
    """The exception class for an ErrorInfo reason, falling back to the status code."""
    for cls in _all_subclasses(AifbError):
        if cls.reason == reason and cls.code == code:
            return cls
    return _BY_CODE.get(code, Internal)
