"""How a refused request is reported: one exception carrying its gRPC status, a bounded message and,
when a configured limit refused it, that limit's name (for `weightgen_limit_rejections_total`).

Every stage of a request (admission, validation, planning, keying) raises `RequestError`; the
servicer turns it into the call's status in one place.
"""

from __future__ import annotations

import grpc

MAX_MESSAGE_CHARS = 1024
"""A status message never exceeds this: client strings inside it are already cut (`engine.spec.echo`),
and this is the last guard, so a status stays far below gRPC's 8 KiB metadata limit."""


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(message) <= limit:
        return message
    return f"{message[: limit - 40]}... ({len(message)} characters in all)"


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, limit: str = ""):
        self.code = code
        self.message = bounded(message)
        self.limit = limit  # the configured limit that refused it, "" for a malformed request
        super().__init__(self.message)


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def exhausted(limit: str, message: str) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, limit)


def unavailable(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.UNAVAILABLE, message)
