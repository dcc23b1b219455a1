"""The client's exceptions: one class per gRPC status, each carrying the server's code and message.

Every error a `Client` raises for a failed call is a `WeightgenError`; catch the subclass for the
status you can handle (``except NotFound``) or the base class for all of them. ``str(error)`` is the
status, the server's message (which names the variable index, name and field) and what to do::

    InvalidArgument: INVALID_ARGUMENT: variables[1] ('w'): shape[0]: dimension -3 is negative
    (the request is malformed: fix the spec the message names)
"""

# The classes are named after the gRPC statuses they stand for, without an Error suffix.
# ruff: noqa: N818
from __future__ import annotations

import grpc


class WeightgenError(Exception):
    """A failed weightgen call: `code` is the gRPC status name (``"NOT_FOUND"``), `message` the
    server's own text; `hint` says what to do about it."""

    code: str = "UNKNOWN"
    hint: str = "an unexpected error; see the message"

    def __init__(self, code: str | None = None, message: str = ""):
        self.code = code or type(self).code
        self.message = message
        super().__init__(self.code, message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message} ({self.hint})" if self.hint else f"{self.code}: {self.message}"


class InvalidArgument(WeightgenError):
    code = "INVALID_ARGUMENT"
    hint = "the request is malformed: fix the spec the message names"


class NotFound(WeightgenError):
    code = "NOT_FOUND"
    hint = "the session is unknown, closed or expired: open a new one"


class ResourceExhausted(WeightgenError):
    code = "RESOURCE_EXHAUSTED"
    hint = "past a server limit: ask for less per request, fewer streams at once, or raise the server's limit"


class Unavailable(WeightgenError):
    code = "UNAVAILABLE"
    hint = "the server is unreachable, warming up or draining: check the address and retry"


class Unauthenticated(WeightgenError):
    code = "UNAUTHENTICATED"
    hint = "the server wants a bearer token: pass token= (CLI: --token-file)"


class PermissionDenied(WeightgenError):
    code = "PERMISSION_DENIED"
    hint = "the credentials are not allowed to do this"


class DeadlineExceeded(WeightgenError):
    code = "DEADLINE_EXCEEDED"
    hint = "the call ran past its timeout: raise timeout= (CLI: --timeout) or fetch less per call"


class Cancelled(WeightgenError):
    code = "CANCELLED"
    hint = "the call was cancelled"


class Internal(WeightgenError):
    code = "INTERNAL"
    hint = "a server-side failure: retry, and report it if it persists"


class Unimplemented(WeightgenError):
    code = "UNIMPLEMENTED"
    hint = "the server does not offer this method: is it a weightgen server of this API version?"


class FailedPrecondition(WeightgenError):
    code = "FAILED_PRECONDITION"
    hint = "the server is not in a state to do this"


class Unknown(WeightgenError):
    code = "UNKNOWN"


class DigestMismatchError(WeightgenError):
    """The bytes received for a variable do not hash to the digest the server sent (or that a
    manifest records): the data was corrupted on the way or on disk."""

    code = "DATA_LOSS"
    hint = "the bytes were corrupted in transit or on disk: fetch again"

    def __init__(
        self, name: str, expected: bytes, actual: bytes, where: str = "the stream", algorithm: str = "sha256"
    ):
        self.name = name
        self.expected = expected
        self.actual = actual
        self.algorithm = algorithm
        super().__init__(
            None, f"variable {name!r}: {algorithm} of the bytes is {actual.hex()}, {where} says {expected.hex()}"
        )


class ProtocolError(WeightgenError):
    """The server broke the wire contract (chunks out of order, missing info, wrong sizes)."""

    code = "PROTOCOL"
    hint = "the server does not follow weightgen.v1: check the server version, and report it"


class ResumeError(WeightgenError):
    """A broken stream that cannot be resumed without changing the values it would deliver."""

    code = "ABORTED"
    hint = "retry the fetch from the start in a fresh session"


_BY_CODE: dict[grpc.StatusCode, type[WeightgenError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNKNOWN: Unknown,
}


def from_rpc_error(error: grpc.RpcError) -> WeightgenError:
    """The WeightgenError for a failed gRPC call (its status and the server's message)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    kind = _BY_CODE.get(code, WeightgenError)
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return kind(name, message)


__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "DigestMismatchError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "ResourceExhausted",
    "ResumeError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "WeightgenError",
    "from_rpc_error",
]
