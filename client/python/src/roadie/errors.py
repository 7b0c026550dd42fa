"""Errors: one exception class per gRPC status a caller may want to catch,
each carrying the status code, the server's message and, for a rejected
field, the field and what was wrong with it (google.rpc.BadRequest)."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

# The ErrorInfo a compacted Watch revision carries (proto/src/lib.rs).
_ERROR_DOMAIN = "roadie.v1"
_REASON_COMPACTED = "REVISION_COMPACTED"
_OLDEST_REVISION = "oldest_revision"
_DETAILS_KEY = "grpc-status-details-bin"


class RoadieError(Exception):
    """A call Roadie answered with an error (or that could not reach it).

    ``code`` is the gRPC status code, ``message`` the server's words,
    ``field`` and ``description`` the rejected field and why (for
    INVALID_ARGUMENT with a BadRequest detail), else ``None``.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field: str | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.description = description


class InvalidArgument(RoadieError):
    """INVALID_ARGUMENT: the request broke a rule; ``field`` says which."""


class NotFound(RoadieError):
    """NOT_FOUND: for example a job or snapshot that does not exist."""


class AlreadyExists(RoadieError):
    """ALREADY_EXISTS."""


class PermissionDenied(RoadieError):
    """PERMISSION_DENIED: the token lacks the role the call needs."""


class Unauthenticated(RoadieError):
    """UNAUTHENTICATED: no token, or one the server does not know."""


class ResourceExhausted(RoadieError):
    """RESOURCE_EXHAUSTED: a store that is full, or a limit reached."""


class FailedPrecondition(RoadieError):
    """FAILED_PRECONDITION."""


class Aborted(RoadieError):
    """ABORTED: for example a snapshot rewritten while it was read."""


class OutOfRange(RoadieError):
    """OUT_OF_RANGE."""


class Unavailable(RoadieError):
    """UNAVAILABLE: the server or its store cannot be reached; retry."""


class DeadlineExceeded(RoadieError):
    """DEADLINE_EXCEEDED: no answer within the call's deadline."""


class Compacted(OutOfRange):
    """A Watch asked for changes after a revision the change log no longer
    holds. ``oldest_revision`` is the oldest it does: resynchronise (list the
    entries), then watch from the revision the copy reflects."""

    def __init__(self, code: grpc.StatusCode, message: str, oldest_revision: int) -> None:
        super().__init__(code, message)
        self.oldest_revision = oldest_revision


_BY_CODE: dict[grpc.StatusCode, type[RoadieError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _details(trailing: Any) -> list[Any]:
    """The google.protobuf.Any details of a status, from its trailers."""
    for key, value in trailing or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            return list(status.details)
    return []


def from_rpc_error(error: grpc.RpcError) -> RoadieError:
    """The RoadieError for a failed call (sync or asyncio)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    details = _details(error.trailing_metadata())
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            oldest = info.metadata.get(_OLDEST_REVISION, "")
            if info.reason == _REASON_COMPACTED and info.domain == _ERROR_DOMAIN and oldest.isdigit():
                return Compacted(code, message, int(oldest))
    field = description = None
    for detail in details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                field = bad.field_violations[0].field
                description = bad.field_violations[0].description
                break
    return _BY_CODE.get(code, RoadieError)(code, message, field, description)
