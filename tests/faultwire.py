"""Faults on the wire, for tests and benchmarks: a gRPC client interceptor, installed through the
client's public seam, that shows a test every Materialize chunk before the client sees it.

    faults = Faults(hook)
    with Client(address, interceptors=[faults]) as client:
        client.materialize(...)
        faults.hook = other  # hooks may be swapped at any time; None lets every chunk through

`hook(attempt, chunk)` gets each chunk decoded (`weightgen.v1.wire.decode_chunk`) and returns the
chunk to deliver: the same object (its original bytes go on), a changed one (re-encoded with
`weightgen.v1.wire.encode_chunk`), or None to cut the stream before that chunk. A cut stream fails
as a broken transport does, with UNAVAILABLE (`StreamCut`), and its call is cancelled, so the
client resumes it as it would a crashed server's or a dropped connection's.

`attempt` numbers the calls of one fetch: 0 for its first Materialize call, 1 for the first retry
or resume, and so on. The client sends a fetch's first call without wait_for_ready and every later
one with it (a retry waits for a ready server), which is how the calls are told apart; each thread
counts its own, so the streams of a parallel fetch (streams > 1) count separately and a new fetch
starts again at 0 by itself. `calls` lists the attempt of every Materialize call seen, in order.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from weightgen.client.client import MATERIALIZE
from weightgen.v1 import wire

Hook = Callable[[int, wire.Chunk], wire.Chunk | None]
"""hook(attempt, chunk) -> the chunk to deliver, or None to cut the stream there."""

CUT_DETAILS = "the stream was cut (test fault)"

_ENCODED = {"variable_index", "offset", "data", "info", "last", "digest", "sequence_indexes"}
_unknown = {field.name for field in dataclasses.fields(wire.Chunk)} - _ENCODED
if _unknown:  # a field `encode` would drop: re-encoded chunks would silently lose it
    raise ImportError(f"faultwire cannot re-encode wire.Chunk's new field(s) {sorted(_unknown)}: teach `encode`")


def encode(chunk: wire.Chunk) -> bytes:
    """The serialized TensorChunk of a decoded one (`wire.decode_chunk`'s inverse)."""
    return wire.encode_chunk(
        chunk.variable_index,
        chunk.offset,
        chunk.data,
        info=chunk.info.SerializeToString() if chunk.info is not None else b"",
        last=chunk.last,
        digest=chunk.digest,
        sequence_indexes=chunk.sequence_indexes,
    )


class StreamCut(grpc.RpcError):
    """A stream cut by a hook: UNAVAILABLE, as a broken connection is."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return CUT_DETAILS

    def initial_metadata(self) -> tuple:
        return ()

    def trailing_metadata(self) -> tuple:
        return ()

    def __str__(self) -> str:
        return f"StreamCut(UNAVAILABLE: {CUT_DETAILS})"


class Faults(grpc.UnaryStreamClientInterceptor):
    """The interceptor: `hook` (None: none) sees every Materialize chunk of the client it is given to."""

    def __init__(self, hook: Hook | None = None):
        self.hook = hook
        self.calls: list[int] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    def intercept_unary_stream(self, continuation, client_call_details, request):
        call = continuation(client_call_details, request)
        if client_call_details.method != MATERIALIZE:
            return call
        # A fetch's first call does not wait for a ready server; its retries and resumes do.
        attempt = getattr(self._local, "attempt", -1) + 1 if client_call_details.wait_for_ready else 0
        self._local.attempt = attempt
        with self._lock:
            self.calls.append(attempt)
        return _Tapped(call, self, attempt)


class _Tapped:
    """A Materialize call as the client sees it through `Faults`: its chunks pass the hook; the rest
    (cancel, code, details, metadata, ...) is the call's, except that a cut call reports the cut."""

    def __init__(self, call: Any, faults: Faults, attempt: int):
        self._call = call
        self._chunks: Iterator[bytes] = iter(call)
        self._faults = faults
        self._attempt = attempt
        self._cut: StreamCut | None = None

    def __iter__(self) -> _Tapped:
        return self

    def __next__(self) -> bytes:
        if self._cut is not None:
            raise self._cut
        raw = next(self._chunks)
        hook = self._faults.hook
        if hook is None:
            return raw
        chunk = wire.decode_chunk(raw)
        delivered = hook(self._attempt, chunk)
        if delivered is None:
            self._cut = StreamCut()
            self._call.cancel()
            raise self._cut
        return raw if delivered is chunk else encode(delivered)

    def cancel(self) -> bool:
        return self._call.cancel()

    def code(self) -> grpc.StatusCode:
        return self._cut.code() if self._cut is not None else self._call.code()

    def details(self) -> str:
        return self._cut.details() if self._cut is not None else self._call.details()

    def __getattr__(self, name: str) -> Any:  # is_active, time_remaining, add_callback, trailing_metadata, ...
        return getattr(self._call, name)
