"""Bearer-token authentication on every RPC except health checks.

A call without a valid token is refused before its request is read: the refusal is served by a
request-streaming handler that never reads, so an unauthenticated client cannot make the server
receive and parse a message of up to --max-request-bytes (4 such calls at 64 MiB held 1.5 GiB).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path

import grpc

MESSAGE = "missing or invalid bearer token (authorization metadata)"


def load_tokens(path: str) -> list[bytes]:
    tokens = [line.strip().encode() for line in Path(path).read_text().splitlines()]
    tokens = [t for t in tokens if t and not t.startswith(b"#")]
    if not tokens:
        raise SystemExit(f"weightgen: {path} holds no tokens")
    return tokens


class BearerAuth(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: list[bytes], denied: Callable[[str], None] | None = None):
        self._tokens = tokens
        self._denied = denied  # called with the method's full name for every refused call (metrics)

    def _ok(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                raw = value.encode() if isinstance(value, str) else value
                if raw[:7].lower() == b"bearer ":
                    offered = raw[7:].strip()
                    # Compare against every token, always, so timing says nothing about which matched.
                    return any([hmac.compare_digest(offered, t) for t in self._tokens])
        return False

    async def intercept_service(self, continuation, details):
        if details.method.startswith("/grpc.health.v1.Health/") or self._ok(details.invocation_metadata):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None  # an unknown method: gRPC answers UNIMPLEMENTED
        method = details.method

        async def deny(request_iterator, context):
            if self._denied is not None:
                self._denied(method)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, MESSAGE)

        if handler.response_streaming:

            async def deny_stream(request_iterator, context):
                await deny(request_iterator, context)
                yield b""  # pragma: no cover - abort raises

            return grpc.stream_stream_rpc_method_handler(deny_stream, None, None)
        return grpc.stream_unary_rpc_method_handler(deny, None, None)
